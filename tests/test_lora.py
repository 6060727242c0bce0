"""LoRA on any model: zero-initialised adapters change nothing, the update is (alpha / rank) A B
and merges into the kernel, frozen base weights get no gradient and no optimizer state."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sltjax import sharding
from sltjax.models.layers.lora import LoRAConfig, LoRALinear, add_lora, merge_lora
from sltjax.models.mbart import MBart, MBartConfig
from sltjax.optim import frozen_mask, make_optimizer

CFG = MBartConfig(vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                  decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.0)
ATTENTION = r'(self_attn|encoder_attn)/(q_proj|k_proj|v_proj|out_proj)$'
IDS = jnp.array([[5, 6, 7, 2, 1], [8, 9, 2, 1, 1]])
MASK = (IDS != 1).astype(jnp.int32)


# Compiled once per model structure (run op by op, every op compiles alone).
_forward = nnx.jit(lambda model: model(IDS, MASK, IDS[:, :4]))


def logits(model):
  return np.asarray(_forward(model))


def test_zero_adapters_leave_the_model_unchanged_and_keep_parameter_paths():
  model = MBart(CFG, rngs=nnx.Rngs(0))
  before = logits(model)
  paths_before = {p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  wrapped = add_lora(model, LoRAConfig(ATTENTION, rank=4, alpha=8), nnx.Rngs(1))
  assert len(wrapped) == 2 * 4 + 2 * 8  # encoder: self; decoder: self + cross, 4 projections
  assert 'decoder_layers/1/encoder_attn/out_proj' in wrapped
  np.testing.assert_array_equal(logits(model), before)
  paths_after = {p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert paths_before < paths_after  # base weights keep their paths; adapters are added
  assert {p[-1] for p in paths_after - paths_before} == {'lora_a', 'lora_b'}
  with pytest.raises(ValueError, match='match no Linear layer'):
    add_lora(model, LoRAConfig('q_projection'), nnx.Rngs(2))


def test_update_is_scaled_low_rank_and_merges_into_the_kernel():
  model = MBart(CFG, rngs=nnx.Rngs(0))
  add_lora(model, LoRAConfig(ATTENTION + '|fc1', rank=2, alpha=6), nnx.Rngs(1))
  layer = model.encoder_layers[0].fc1
  assert isinstance(layer, LoRALinear) and layer.lora_scale == 3.0
  rng = np.random.default_rng(0)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, LoRALinear):
      node.lora_b[...] = jnp.asarray(rng.normal(size=node.lora_b.shape), jnp.float32)
  x = jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)
  expected = (x @ layer.kernel[...] + layer.bias[...]
              + 3.0 * x @ layer.lora_a[...] @ layer.lora_b[...])
  np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
  adapted = logits(model)
  merged = merge_lora(model)
  assert len(merged) == 2 * 4 + 2 * 8 + 4  # and fc1 of the 2 + 2 layers
  assert not any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(model))
  np.testing.assert_allclose(logits(model), adapted, rtol=1e-4, atol=1e-5)


def test_fused_members_share_one_a_as_a_lora_on_their_fused_projection():
  """fused=('q_proj', 'k_proj', 'v_proj') is a LoRA on a fused qkv: one A per attention
  module, B split among the three (DINOv2's release, Sign2GPT's adapters)."""
  model = MBart(CFG, rngs=nnx.Rngs(0))
  add_lora(model, LoRAConfig(ATTENTION, rank=2, alpha=2, fused=('q_proj', 'k_proj', 'v_proj')),
           nnx.Rngs(1))
  attention = model.encoder_layers[0].self_attn
  assert attention.q_proj.lora_a is attention.k_proj.lora_a is attention.v_proj.lora_a
  assert attention.out_proj.lora_a is not attention.q_proj.lora_a
  decoder = model.decoder_layers[0]
  assert decoder.self_attn.q_proj.lora_a is not decoder.encoder_attn.q_proj.lora_a
  adapters = sum(v.size for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                 if str(p[-1]).startswith('lora_'))
  per_attention = 16 * 2 + 2 * 3 * 16 + (16 * 2 + 2 * 16)  # qkv: A once, B [2, 48]; out_proj
  assert adapters == 6 * per_attention  # 2 encoder + 2 x 2 decoder attention modules
  rng = np.random.default_rng(0)
  members = (attention.q_proj, attention.k_proj, attention.v_proj)
  for layer in members:
    layer.lora_b[...] = jnp.asarray(rng.normal(size=layer.lora_b.shape), jnp.float32)
  x = jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)
  fused_b = jnp.concatenate([layer.lora_b[...] for layer in members], axis=1)  # [2, 48]
  update = x @ attention.q_proj.lora_a[...] @ fused_b
  for index, layer in enumerate(members):
    np.testing.assert_allclose(layer(x) - (x @ layer.kernel[...] + layer.bias[...]),
                               update[:, 16 * index:16 * (index + 1)], rtol=1e-5, atol=1e-6)
  # The shared A's gradient gathers all three members' (as the fused layer's does).
  def member_sum(a):
    return sum(jnp.sum((x @ a @ layer.lora_b[...]) ** 2) for layer in members)
  grads = nnx.grad(lambda m: sum(jnp.sum((m(x) - (x @ m.kernel[...] + m.bias[...])) ** 2)
                                 for m in (m.q_proj, m.k_proj, m.v_proj)))(attention)
  shared = [v for p, v in nnx.to_flat_state(grads) if p[-1] == 'lora_a' and p[0] != 'out_proj']
  assert len(shared) == 1  # one variable, at one of the members' paths
  np.testing.assert_allclose(shared[0].get_value(),
                             jax.grad(member_sum)(attention.q_proj.lora_a[...]), rtol=1e-4)


def test_frozen_base_weights_get_no_gradient_and_no_optimizer_state():
  def make():
    model = MBart(CFG, rngs=nnx.Rngs(0))
    add_lora(model, LoRAConfig(ATTENTION, rank=4, alpha=4), nnx.Rngs(1))
    return model

  model = make()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  config = ml_collections.ConfigDict({
      'total_steps': 10, 'schedule': {'kind': 'constant', 'warmup_steps': 0},
      'optimizer': {'name': 'adam', 'learning_rate': 1e-2, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,
                    'weight_decay': 0.0, 'momentum': 0.0, 'grad_clip_norm': 1.0,
                    'param_groups': {}, 'frozen': r'^(?!.*/lora_[ab]$)'}})
  frozen = frozen_mask(config, params)
  trainable = [p for p, f in jax.tree_util.tree_flatten_with_path(frozen)[0] if not f]
  assert len(trainable) == 2 * (2 * 4 + 2 * 8)  # lora_a and lora_b of every adapter
  tx, _ = make_optimizer(config, params)
  opt_state = jax.jit(tx.init)(params)
  state_leaves = [x for x in jax.tree.leaves(opt_state) if hasattr(x, 'shape') and x.ndim]
  # Adam's two moments for each adapter matrix, nothing for the frozen base.
  assert sum(x.size for x in state_leaves) == 2 * sum(
      x.size for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(frozen)) if not f)

  def loss(params):
    params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
    out = nnx.merge(graphdef, params, rest)(IDS, MASK, IDS[:, :4])
    return jnp.mean(jax.nn.log_softmax(out)[..., 3])

  grads = jax.jit(jax.grad(loss))(params)
  for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(frozen)):
    if f:
      assert not np.any(np.asarray(g))
  updates, _ = jax.jit(tx.update)(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
  old, updated, is_frozen = flat(params), flat(new), flat(frozen)
  for path, value in old.items():
    changed = not np.array_equal(value, updated[path])
    if is_frozen[path]:
      assert not changed, path
    elif 'lora_b' in str(path):  # A's gradient is 0 while B is: B moves first
      assert changed, path


def test_adapters_are_sharded_along_the_kernel_axes():
  model = nnx.eval_shape(lambda: add_lora_to(MBart(CFG, rngs=nnx.Rngs(0))))
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  specs = {p: s.spec for p, s in nnx.to_flat_state(
      sharding.named_shardings(nnx.state(model, nnx.Param), mesh))}
  layer = model.encoder_layers[0].self_attn.q_proj
  assert layer.lora_a.get_metadata()['out_sharding'] == ('embed', None)
  assert layer.lora_b.get_metadata()['out_sharding'] == (None, 'heads')
  assert ('encoder_layers', 0, 'self_attn', 'q_proj', 'lora_a') in specs


def add_lora_to(model):
  add_lora(model, LoRAConfig(ATTENTION), nnx.Rngs(1))
  return model
