"""Backbones against PyTorch: ResNet-18 vs Hugging Face ResNetModel (and torchvision names), S3D
vs golden outputs of torchvision's own S3D (tests/s3d_golden.py: torchvision cannot be installed
next to the CPU torch wheel here), masked and frozen BatchNorm, max pooling's gradient."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn
from transformers import ResNetConfig as HFResNetConfig, ResNetModel

from sltjax.convert.backbones import resnet_state, s3d_state
from sltjax.models.backbones.resnet import ResNet, ResNetConfig
from sltjax.models.backbones.s3d import S3D, S3DConfig
from sltjax.models import backbones
from sltjax.models.layers.conv import BatchNorm, computed_once, max_pool
from tests.s3d_golden import load_golden, seeded_clip, seeded_weights


def _randomise_batch_norms(module: nn.Module) -> None:
  """Non-trivial BN statistics and affine parameters, so conversions that drop them fail."""
  for m in module.modules():
    if isinstance(m, nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
      m.running_mean.normal_(0, 0.2)
      m.running_var.uniform_(0.5, 2.0)
      m.weight.data.uniform_(0.5, 1.5)
      m.bias.data.normal_(0, 0.2)


@pytest.fixture(scope='module')
def hf_resnet18():
  torch.manual_seed(0)
  model = ResNetModel(HFResNetConfig(num_channels=3, embedding_size=64,
                                     hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                     layer_type='basic', hidden_act='relu',
                                     downsample_in_first_stage=False))
  _randomise_batch_norms(model)
  return model.eval()


def _numpy(state_dict):
  return {k: v.detach().numpy() for k, v in state_dict.items()}


def _torchvision_names(hf_state: dict) -> dict:
  """The same tensors under torchvision's resnet18 names (plus its classifier)."""
  out = {}
  for name, value in hf_state.items():
    name = name.replace('embedder.embedder.convolution', 'conv1')
    name = name.replace('embedder.embedder.normalization', 'bn1')
    match = re.match(r'encoder\.stages\.(\d)\.layers\.(\d)\.(.*)', name)
    if match:
      rest = (match[3].replace('layer.0.convolution', 'conv1').replace('layer.0.normalization', 'bn1')
              .replace('layer.1.convolution', 'conv2').replace('layer.1.normalization', 'bn2')
              .replace('shortcut.convolution', 'downsample.0')
              .replace('shortcut.normalization', 'downsample.1'))
      name = f'layer{int(match[1]) + 1}.{match[2]}.{rest}'
    out[name] = value
  out['fc.weight'], out['fc.bias'] = np.zeros((1000, 512), np.float32), np.zeros(1000, np.float32)
  return out


def test_resnet18_matches_hugging_face_resnet_model(hf_resnet18):
  images = torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = hf_resnet18(images).pooler_output.flatten(1).numpy()  # [3, 512]
  model = ResNet(ResNetConfig(), rngs=nnx.Rngs(0))
  nnx.update(model, resnet_state(_numpy(hf_resnet18.state_dict()), nnx.state(model)))
  got = np.asarray(nnx.jit(lambda model, x: model.images(x))(
      model, jnp.asarray(images.permute(0, 2, 3, 1).numpy())))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero features


def test_torchvision_and_hugging_face_names_give_the_same_model(hf_resnet18):
  hf_state = _numpy(hf_resnet18.state_dict())
  abstract = nnx.state(nnx.eval_shape(lambda: ResNet(ResNetConfig(), rngs=nnx.Rngs(0))))
  from_hf = nnx.to_flat_state(resnet_state(hf_state, abstract))
  from_torchvision = dict(nnx.to_flat_state(resnet_state(_torchvision_names(hf_state), abstract)))
  assert len(from_hf) == 20 + 20 * 4  # ResNet-18: 20 convolutions, 20 BNs (4 tensors each)
  for path, variable in from_hf:
    np.testing.assert_array_equal(variable[...], from_torchvision[path][...])


def test_conversion_lists_every_missing_and_unexpected_tensor(hf_resnet18):
  state = _torchvision_names(_numpy(hf_resnet18.state_dict()))
  del state['layer3.1.bn2.running_var']
  state['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  state['layer1.0.conv1.weight'] = np.zeros((64, 64, 5, 5), np.float32)
  abstract = nnx.state(nnx.eval_shape(lambda: ResNet(ResNetConfig(), rngs=nnx.Rngs(0))))
  with pytest.raises(ValueError) as error:
    resnet_state(state, abstract)
  message = str(error.value)
  assert 'missing layer3.1.bn2.running_var' in message
  assert 'unexpected layer5.0.conv1.weight' in message
  assert 'layer1.0.conv1.weight has shape (5, 5, 64, 64)' in message


# ----------------------------------------------------------------------------------------- S3D
def test_s3d_matches_torchvision_golden_outputs_key_for_key():
  golden = load_golden()  # torchvision's own s3d(), run where torchvision installs
  state = seeded_weights(golden['shapes'])
  model = S3D(S3DConfig(), rngs=nnx.Rngs(0))
  converted = s3d_state(state, nnx.state(model))
  # Every tensor of features[0:13] is used (61 conv + BN layers, 5 tensors each); later blocks
  # and the classifier are ignored.
  used = [k for k in golden['shapes'] if re.match(r'features\.([0-9]|1[0-2])\.', k)
          and not k.endswith('num_batches_tracked')]
  assert len(nnx.to_flat_state(converted)) == len(used) == 61 * 5
  nnx.update(model, converted)
  clip = seeded_clip()  # [2, 3, 16, 64, 64]
  forward = nnx.jit(lambda model, frames, frame_mask: model(frames, frame_mask))
  features, mask = forward(model, jnp.asarray(clip.transpose(0, 2, 3, 4, 1)),
                           jnp.array([[1] * 16, [1] * 10 + [0] * 6]))
  assert features.shape == (2, 4, 832)
  scale = np.abs(golden['features']).max()
  np.testing.assert_allclose(np.asarray(features), golden['features'], atol=2e-6 * scale, rtol=0)
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 0, 0]])  # floor(10 * 4 / 16) = 2


def test_s3d_checkpoint_of_the_wrong_architecture_is_refused():
  model = S3D(S3DConfig(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'missing features\.0\.0\.0\.weight .*\n.*'):
    s3d_state({'features.0.weight': np.zeros(3, np.float32)}, nnx.state(model))


# ---------------------------------------------------------------------------------- BatchNorm
def _train_twice_with_different_padding(model_fn):
  """Runs fresh models in training mode on two batches that differ only in padded frames."""
  rng = np.random.default_rng(0)
  clip = rng.normal(size=(2, 8, 32, 32, 3)).astype(np.float32)
  other_padding = clip.copy()
  other_padding[1, 4:] = rng.normal(size=(4, 32, 32, 3)) * 10
  mask = jnp.array([[1] * 8, [1] * 4 + [0] * 4])
  forward = nnx.jit(lambda model, frames: model(frames, mask, train=True))  # updates BatchStats
  runs = []
  for frames in (clip, other_padding):
    model = model_fn()
    features, out_mask = forward(model, jnp.asarray(frames))
    runs.append((model, np.asarray(features)[np.asarray(out_mask, bool)]))
  return runs


def test_padded_frames_do_not_touch_resnet_features_or_statistics():
  (a, features_a), (b, features_b) = _train_twice_with_different_padding(
      lambda: ResNet(ResNetConfig(width=8), rngs=nnx.Rngs(0)))
  np.testing.assert_allclose(features_a, features_b, atol=1e-5)
  stats_b = dict(nnx.to_flat_state(nnx.state(b, nnx.BatchStat)))
  for path, variable in nnx.to_flat_state(nnx.state(a, nnx.BatchStat)):
    np.testing.assert_allclose(variable[...], stats_b[path][...], atol=1e-6)


def test_padded_frames_do_not_touch_s3d_first_statistics():
  # Later S3D layers see padding through their temporal kernels (as any temporal convolution
  # does); the statistics of the first, per-frame layer must ignore it exactly.
  (a, _), (b, _) = _train_twice_with_different_padding(
      lambda: S3D(S3DConfig(width=0.125), rngs=nnx.Rngs(0)))
  first_a, first_b = a.features[0].spatial.bn, b.features[0].spatial.bn
  np.testing.assert_allclose(first_a.mean[...], first_b.mean[...], atol=1e-6)
  np.testing.assert_allclose(first_a.var[...], first_b.var[...], atol=1e-6)
  assert np.abs(np.asarray(first_a.mean[...])).max() > 0


@pytest.mark.parametrize('x_shape, mask_shape', [
    ((6, 5, 4, 3), (6, 1, 1, 1)),        # ResNet: one mask entry per frame
    ((2, 3, 5, 4, 3), (2, 3, 1, 1, 1)),  # S3D: one per (clip, frame)
    ((2, 7, 3), (2, 7, 1)),              # a temporal layer: one per position
    ((2, 7, 3), None)])
def test_batch_norm_takes_statistics_from_the_masked_positions_only(x_shape, mask_shape):
  rng = np.random.default_rng(0)
  x = rng.normal(1.0, 2.0, x_shape).astype(np.float32)
  mask = None if mask_shape is None else (rng.random(mask_shape) < 0.6)
  if mask is not None:
    mask.flat[0] = True
  norm = BatchNorm(3, momentum=0.75, epsilon=1e-3, dtype=jnp.float32, param_dtype=jnp.float32,
                   rngs=nnx.Rngs(0))
  norm.scale[...] = jnp.array([0.5, 1.5, 2.0])
  norm.bias[...] = jnp.array([0.1, -0.2, 0.3])
  y = norm(jnp.asarray(x), None if mask is None else jnp.asarray(mask), train=True)

  valid = np.broadcast_to(np.ones(x.shape[:-1] + (1,), bool) if mask is None else mask,
                          x.shape[:-1] + (1,))[..., 0]
  rows = x[valid]  # [valid positions, 3]
  mean, var = rows.mean(0), rows.var(0)
  expected = (x - mean) / np.sqrt(var + 1e-3) * [0.5, 1.5, 2.0] + [0.1, -0.2, 0.3]
  np.testing.assert_allclose(np.asarray(y)[valid], expected[valid], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(norm.mean[...], 0.25 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.var[...], 0.75 + 0.25 * var, rtol=1e-5)

  # Gradients as Flax's own masked BatchNorm (mask broadcast to every position).
  weights = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  full_mask = None if mask is None else jnp.asarray(valid[..., None])
  ours = jax.grad(lambda x: jnp.sum(BatchNorm(3, dtype=jnp.float32, param_dtype=jnp.float32,
                                              rngs=nnx.Rngs(0))(x, mask, True) * weights))
  flax = jax.grad(lambda x: jnp.sum(nnx.BatchNorm(3, use_fast_variance=False, rngs=nnx.Rngs(0))(
      x, use_running_average=False, mask=full_mask) * weights))
  np.testing.assert_allclose(ours(jnp.asarray(x)), flax(jnp.asarray(x)), rtol=1e-4, atol=1e-5)


def test_frozen_batch_norm_keeps_running_statistics():
  model = ResNet(ResNetConfig(width=8, frozen_bn=True), rngs=nnx.Rngs(0))
  before = nnx.to_flat_state(nnx.clone(nnx.state(model, nnx.BatchStat)))
  model(jnp.ones((1, 4, 32, 32, 3)), jnp.ones((1, 4)), train=True)
  after = dict(nnx.to_flat_state(nnx.state(model, nnx.BatchStat)))
  for path, variable in before:
    np.testing.assert_array_equal(variable[...], after[path][...])
  trainable = ResNet(ResNetConfig(width=8), rngs=nnx.Rngs(0))
  trainable(jnp.ones((1, 4, 32, 32, 3)), jnp.ones((1, 4)), train=True)
  moved = nnx.state(trainable, nnx.BatchStat)['bn1']['mean'][...]
  assert np.abs(np.asarray(moved)).max() > 0


def test_backbones_are_chosen_by_name_and_read_their_weights_through_the_registry(
    hf_resnet18, tmp_path):
  """A system names its backbone; the registry builds it and converts its PyTorch weights.
  A backbone registered from outside sltjax is usable by MMTLB without editing it."""
  from sltjax.models.backbones import registry  # pylint: disable=import-outside-toplevel
  from sltjax.models.systems.mmtlb import MMTLB, MMTLBConfig  # pylint: disable=import-outside-toplevel
  options = registry.BackboneOptions(width=1.0)
  assert registry.output_dim('resnet18', options) == 512
  assert registry.output_dim('s3d', registry.BackboneOptions(width=0.5)) == 416
  torch.save(hf_resnet18.state_dict(), tmp_path / 'resnet18.pt')
  state = registry.read_weights('resnet18', options, str(tmp_path / 'resnet18.pt'))
  model = ResNet(ResNetConfig(), rngs=nnx.Rngs(1))
  nnx.update(model, state)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = hf_resnet18(torch.from_numpy(images.transpose(0, 3, 1, 2))).pooler_output
  np.testing.assert_allclose(model.images(jnp.asarray(images)), want.reshape(2, 512), atol=1e-4)

  class MeanColour(nnx.Module):  # frames [B, T, H, W, 3] -> [B, T, 3]
    def __call__(self, frames, mask, train=False):
      return jnp.mean(frames, axis=(2, 3)), mask

  registry.register_backbone('test_mean_colour', registry.Backbone(
      build=lambda options, rngs: MeanColour(), output_dim=lambda options: 3))
  mmtlb = MMTLB(MMTLBConfig(num_glosses=5, backbone='test_mean_colour', head_dim=8,
                            head_ffn_dim=16), rngs=nnx.Rngs(0))
  out = mmtlb.visual(jnp.ones((2, 4, 8, 8, 3)), jnp.ones((2, 4)))
  assert out['gloss_logits'].shape == (2, 4, 5)
  with pytest.raises(ValueError, match="model.backbone='vit'; expected one of"):
    MMTLBConfig(num_glosses=5, backbone='vit')
  with pytest.raises(ValueError, match="Backbone 'features' has no weights to load"):
    registry.read_weights('features', options, str(tmp_path / 'resnet18.pt'))


@pytest.mark.parametrize('shape, window, stride, padding', [
    ((3, 15, 15, 4), (3, 3), (2, 2), (1, 1)),  # ResNet's pooling, odd size
    ((2, 12, 9, 3), (3, 2), (2, 3), (1, 0)),
    ((2, 6, 7, 7, 2), (1, 3, 3), (1, 2, 2), (0, 1, 1)),  # S3D's spatial pooling
    ((2, 5, 6, 6, 2), (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # S3D's dense pooling (XLA's gradient)
])
def test_max_pool_gradient_equals_xla_with_ties_going_to_the_first_maximum(
    shape, window, stride, padding):
  rng = np.random.default_rng(sum(shape))
  # ReLU'd and rounded, so most windows hold several equal maxima (zeros and repeats)
  x = jnp.asarray(np.round(np.maximum(rng.standard_normal(shape), 0) * 2) / 2, jnp.float32)
  pooled_shape = jax.eval_shape(lambda x: max_pool(x, window, stride, padding), x).shape
  grad_out = jnp.asarray(rng.standard_normal(pooled_shape), jnp.float32)
  reference = lambda x: nnx.max_pool(x, window, stride, tuple((p, p) for p in padding))
  ours = jax.jit(jax.vjp(lambda x: max_pool(x, window, stride, padding), x)[1])(grad_out)[0]
  expected = jax.vjp(reference, x)[1](grad_out)[0]
  np.testing.assert_array_equal(max_pool(x, window, stride, padding), reference(x))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
  assert float(jnp.sum(x == 0)) > x.size / 3  # the ties are there
  # strided windows go through the tap-by-tap gradient; densely overlapping ones keep XLA's
  taps = 'custom_vjp_call' in str(jax.make_jaxpr(lambda x: max_pool(x, window, stride, padding))(x))
  assert taps == (stride != (1,) * len(stride))


def test_computed_once_changes_neither_values_nor_gradients():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 4, 5)) * 1e3, jnp.float32).at[0, 0, 0].set(-0.0)
  grad_out = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  y, vjp = jax.vjp(jax.jit(computed_once), x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(jax.jit(vjp)(grad_out)[0], grad_out)


def _transposes_recomputing_a_relu(model, frames):
  """(transposes in the compiled gradient of a backbone, those that recompute a ReLU inside)."""
  graphdef, state = nnx.split(model)
  mask = jnp.ones(frames.shape[:2], jnp.int32)
  loss = lambda state: jnp.sum(nnx.merge(graphdef, state)(frames, mask, train=True)[0] ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(state).compile().as_text()
  called = re.findall(r'%transpose\S*fusion\S* = .* calls=(%[\w.\-]+)', hlo)
  bodies = dict(re.findall(r'^(%[\w.\-]+) .*?\{\n(.*?)\n\}', hlo, re.M | re.S))
  return len(called), sum(' maximum(' in bodies[name] for name in called)


@pytest.mark.parametrize('name, make, frames_shape', [
    ('resnet', lambda: ResNet(ResNetConfig(width=4), rngs=nnx.Rngs(0)), (1, 2, 16, 16, 3)),
    ('s3d', lambda: S3D(S3DConfig(width=0.125), rngs=nnx.Rngs(0)), (1, 8, 32, 32, 3))])
def test_backward_transposes_stored_activations_instead_of_recomputing_them(
    monkeypatch, name, make, frames_shape):
  # XLA:CPU's kernel-gradient convolutions transpose their inputs; without computed_once the
  # BatchNorm (+ residual) + ReLU chain that made a layer's output is fused into those transposes
  # and recomputed there from strided reads (benchmarks/train_step_c2rl.py: 0.55 s a step).
  frames = jnp.asarray(np.random.default_rng(0).standard_normal(frames_shape), jnp.float32)
  transposes, recomputing = _transposes_recomputing_a_relu(make(), frames)
  assert transposes > 10 and recomputing == 0
  monkeypatch.setattr(getattr(backbones, name), 'computed_once', lambda x: x)
  assert _transposes_recomputing_a_relu(make(), frames)[1] > 5  # what computed_once prevents
