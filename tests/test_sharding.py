"""Mesh construction and logical-axis shardings (on however many devices this process has)."""
import math

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sltjax import sharding
from sltjax.models.mbart import MBart, MBartConfig


def test_mesh_fills_the_free_axis():
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  assert dict(mesh.shape) == {'data': jax.device_count(), 'fsdp': 1, 'tensor': 1}


@pytest.mark.parametrize('mesh_config,message', [
    ({'data': -1, 'model': 1}, "unknown axes \\['model'\\]"),
    ({'data': -1, 'fsdp': -1}, 'at most one axis may be -1'),
    ({'data': 3 * jax.device_count()}, 'devices but'),
])
def test_mesh_errors(mesh_config, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(mesh_config)


def test_logical_axes_map_to_mesh_axes_and_replicate_uneven_dims():
  cfg = MBartConfig(vocab_size=27, d_model=16, encoder_layers=1, decoder_layers=1,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                    decoder_ffn_dim=32, max_position_embeddings=8)
  abstract = nnx.eval_shape(lambda: MBart(cfg, rngs=nnx.Rngs(0)))
  _, params, _ = nnx.split(abstract, nnx.Param, ...)
  specs = {k: v.spec for k, v in
           nnx.to_flat_state(sharding.named_shardings(params, sharding.make_mesh({'data': -1})))}
  assert specs[('encoder_layers', 0, 'fc1', 'kernel')] == P('fsdp', 'tensor')
  assert specs[('encoder_layers', 0, 'self_attn', 'out_proj', 'kernel')] == P('tensor', 'fsdp')
  assert specs[('encoder_layer_norm', 'scale')] == P(None)


def test_dimensions_the_mesh_does_not_divide_are_replicated():
  mesh = AbstractMesh((2, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  fit = lambda spec, shape: sharding._evenly_divisible(NamedSharding(mesh, spec), shape).spec
  assert fit(P('tensor', 'fsdp'), (27, 32)) == P(None, 'fsdp')  # odd vocabulary
  assert fit(P('tensor', 'fsdp'), (28, 32)) == P('tensor', 'fsdp')
  assert fit(P(('data', 'fsdp')), (6,)) == P(None)  # 6 rows over 4 batch shards


def test_frames_are_split_over_every_axis_only_inside_a_traced_step():
  frames = np.zeros((8, 6, 4), np.float32)  # [batch * frames, patches, dim]
  every_axis = P(('data', 'fsdp', 'tensor'), None, None)
  constraints = lambda f, x: [e.params['sharding'].spec for e in jax.make_jaxpr(f)(x).jaxpr.eqns
                              if e.primitive.name == 'sharding_constraint']
  assert constraints(sharding.constrain_frames, frames) == []  # a bare model call
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
  with sharding.tracing_mesh(mesh):
    assert constraints(sharding.constrain_frames, frames) == [every_axis]
  mesh = AbstractMesh((2, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  with jax.sharding.use_abstract_mesh(mesh):
    assert constraints(sharding.constrain_frames, frames) == [every_axis]
    # 6 frames do not split 8 ways: left whole rather than padded.
    assert constraints(sharding.constrain_frames, frames[:6]) == [P(None, None, None)]
    assert constraints(lambda x: sharding.constrain(x, None, 'tensor'), frames) == [
        P(None, 'tensor', None)]


def test_mbart_large_shards_over_fsdp_and_tensor():
  """mBART-large-cc25 with a trimmed vocabulary on an abstract 8-device (2 data x 2 fsdp x 2
  tensor) mesh: every matrix is split four ways, so a device holds about a quarter."""
  mesh = AbstractMesh((2, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  abstract = nnx.eval_shape(lambda: MBart(MBartConfig(vocab_size=2454), rngs=nnx.Rngs(0)))
  _, params, _ = nnx.split(abstract, nnx.Param, ...)
  shardings = dict(nnx.to_flat_state(sharding.named_shardings(params, mesh)))
  total = per_device = 0
  for path, variable in nnx.to_flat_state(params):
    shard = shardings[path].shard_shape(variable.shape)
    if variable.ndim == 2 and path[0] not in ('encoder_embed_positions', 'decoder_embed_positions'):
      assert math.prod(shard) * 4 == math.prod(variable.shape), path
    total += math.prod(variable.shape)
    per_device += math.prod(shard)
  assert 350e6 < total < 370e6  # 12+12 layers, d 1024
  assert per_device / total < 0.26
