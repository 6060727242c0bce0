"""Sign2GPT's sign encoder against a PyTorch statement of the release's (xformers local-mask
attention with rotary q/k, post-LN MetaFormer blocks with layer scale, avg-pool downsampler)."""
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.nn import functional as F

from sltjax.models.layers.positions import apply_rotary
from sltjax.models.systems.sign2gpt import SignEncoder, SignEncoderConfig, pool_in_time

CFG = SignEncoderConfig(dim=32, heads=4, window=7, layer_scale_init=0.5)
# The encoder's forward pass compiled once per shape (run op by op, every op compiles alone).
encode = nnx.jit(lambda model, x, mask, rngs=None: model(x, mask, rngs))


def torch_encoder(model: SignEncoder, x: np.ndarray, mask: np.ndarray) -> tuple:
  """The release's forward pass (eval mode) with `model`'s weights, in plain torch."""
  cfg = model.config
  t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  x, mask = t(x), torch.from_numpy(mask.astype(bool))
  length, d = x.shape[1], x.shape[2]
  pos = torch.arange(length, dtype=torch.float64)[:, None].repeat(1, d)
  dim = torch.arange(d, dtype=torch.float64)[None].repeat(length, 1)
  pos = pos * torch.exp(-math.log(10000) * (2 * (dim // 2) / d))
  pos[:, 0::2], pos[:, 1::2] = torch.sin(pos[:, 0::2]), torch.cos(pos[:, 1::2])
  x = x + pos[None]

  def linear(layer, h):
    return h @ t(layer.kernel[...]) + t(layer.bias[...])

  def rotary(h):  # [B, heads, S, hd], xformers' RotaryEmbedding
    hd = h.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.einsum('i,j->ij', torch.arange(h.shape[2], dtype=torch.float64), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    h1, h2 = h.chunk(2, dim=-1)
    return h * emb.cos() + torch.cat((-h2, h1), dim=-1) * emb.sin()

  def attention(block, h, mask):
    b, s, _ = h.shape
    split = lambda y: y.view(b, s, cfg.heads, d // cfg.heads).transpose(1, 2)
    q, k, v = (split(linear(getattr(block.attention, f'{n}_proj'), h)) for n in 'qkv')
    q, k = rotary(q), rotary(k)
    i = torch.arange(s)
    local = (i[:, None] - i[None, :]).abs() < cfg.window // 2 + 1  # local_1d_pattern
    allowed = (local[None] & mask[:, None, :]) | torch.eye(s, dtype=torch.bool)[None]
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(d // cfg.heads)
    logits = logits.masked_fill(~allowed[:, None], torch.finfo(torch.float64).min)
    out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return linear(block.attention.out_proj, out)

  for index, stage in enumerate(model.stages):
    if index:  # Downsampler, on each clip as alone (see sign2gpt.py): pads zeroed, and the
      # positions of a clip of n frames alone, ceil(n / 2)
      x = F.avg_pool1d((x * mask[..., None]).permute(0, 2, 1), 3, stride=2,
                       padding=1).permute(0, 2, 1)
      lengths = mask.sum(1)
      mask = torch.arange(x.shape[1])[None] < (lengths[:, None] + 1) // 2
    for block in stage:
      ln1 = lambda h: F.layer_norm(h, (d,), t(block.norm1.scale[...]), t(block.norm1.bias[...]))
      ln2 = lambda h: F.layer_norm(h, (d,), t(block.norm2.scale[...]), t(block.norm2.bias[...]))
      x = ln1(x + t(block.layer_scale1[...]) * attention(block, x, mask))
      mlp = linear(block.fc2, F.gelu(linear(block.fc1, x)))
      x = ln2(x + t(block.layer_scale2[...]) * mlp)
  return x.numpy(), mask.numpy()


def test_matches_the_release_formulation_in_eval_mode():
  model = SignEncoder(CFG, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 13, 32)).astype(np.float32)
  mask = np.zeros((3, 13), np.int32)
  for row, n in enumerate((13, 9, 2)):
    mask[row, :n] = 1
  ours, ours_mask = encode(model, jnp.asarray(x), jnp.asarray(mask))
  expected, expected_mask = torch_encoder(model, x, mask)
  assert ours.shape == (3, 7, 32)
  np.testing.assert_array_equal(np.asarray(ours_mask).astype(bool), expected_mask)
  np.testing.assert_array_equal(expected_mask.sum(1), [7, 5, 1])  # ceil(n / 2) windows
  valid = expected_mask
  np.testing.assert_allclose(np.asarray(ours)[valid], expected[valid], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('frames', [9, 8])
def test_a_clip_gives_the_same_output_alone_and_padded(frames):
  model = SignEncoder(CFG, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  clip = rng.normal(size=(1, frames, 32)).astype(np.float32)
  alone, alone_mask = encode(model, jnp.asarray(clip), jnp.ones((1, frames), jnp.int32))
  padded = np.concatenate(
      [clip, rng.normal(size=(1, 16 - frames, 32)).astype(np.float32) * 50], axis=1)
  mask = np.zeros((1, 16), np.int32)
  mask[0, :frames] = 1
  out, out_mask = encode(model, jnp.asarray(padded), jnp.asarray(mask))
  positions = (frames + 1) // 2
  assert int(out_mask.sum()) == int(alone_mask.sum()) == alone.shape[1] == positions
  np.testing.assert_allclose(np.asarray(out)[0, :positions], np.asarray(alone)[0], rtol=1e-5,
                             atol=1e-5)


def test_pooling_counts_windows_as_the_release_does():
  x = jnp.arange(1, 6, dtype=jnp.float32)[None, :, None]  # frames 1..5
  pooled, mask = pool_in_time(x, jnp.array([[1, 1, 1, 1, 0]]))
  # windows (pad, 1, 2), (2, 3, 4), (4, pad-frame, pad): zero padding counted in the average;
  # the last is not a window of the 4 frames alone (its centre is padding)
  np.testing.assert_allclose(np.asarray(pooled)[0, :, 0], [1.0, 3.0, 4 / 3])
  np.testing.assert_array_equal(mask, [[1, 1, 0]])
  _, mask = pool_in_time(x, jnp.array([[1, 1, 1, 1, 1]]))
  np.testing.assert_array_equal(mask, [[1, 1, 1]])  # (4, 5, pad): 5 frames alone have 3
  _, mask = pool_in_time(x, jnp.array([[0, 0, 0, 0, 0]]))
  np.testing.assert_array_equal(mask, [[1, 0, 0]])  # position 0 always valid


def test_training_mode_drops_paths_and_rotary_is_relative():
  cfg = SignEncoderConfig(dim=32, heads=4, drop_path=0.5, dropout=0.0)
  assert cfg.drop_path_rates() == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])
  model = SignEncoder(cfg, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 6, 32)), jnp.float32)
  mask = jnp.ones((8, 6), jnp.int32)
  train = encode(model, x, mask, nnx.Rngs(dropout=0))[0]
  assert not np.allclose(train, encode(model, x, mask)[0])
  # q.k after rotation depends on positions only through their difference.
  rng = np.random.default_rng(3)
  q = jnp.asarray(np.repeat(rng.normal(size=(1, 1, 1, 8)), 10, axis=1), jnp.float32)
  k = jnp.asarray(np.repeat(rng.normal(size=(1, 1, 1, 8)), 10, axis=1), jnp.float32)
  dots = jnp.einsum('bqhd,bkhd->qk', apply_rotary(q), apply_rotary(k))
  np.testing.assert_allclose(dots[2, 5], dots[6, 9], rtol=1e-5)
  with pytest.raises(ValueError, match='must be odd'):
    SignEncoderConfig(window=6)


def test_prototype_head_and_loss_match_a_numpy_statement():
  from sltjax.models.systems.sign2gpt import PrototypeHead, pseudo_gloss_loss  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  vectors = rng.normal(size=(6, 10)).astype(np.float32)
  head = PrototypeHead(8, vectors, rngs=nnx.Rngs(0))
  head.class_temperature[...] = jnp.asarray(0.005)  # clamped up to 0.01
  head.time_temperature[...] = jnp.asarray(0.3)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
  out = head(jnp.asarray(x), jnp.asarray(mask))

  y = x @ np.asarray(head.projection.kernel[...]) + np.asarray(head.projection.bias[...])
  y = y / np.linalg.norm(y, axis=-1, keepdims=True)
  protos = np.concatenate([vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                           np.zeros((1, 10))])
  s = y @ protos.T  # [B, T, V + 1]
  softmax = lambda a, axis: np.exp(a - a.max(axis, keepdims=True)) / np.exp(
      a - a.max(axis, keepdims=True)).sum(axis, keepdims=True)
  over_glosses = softmax(s / 0.01, -1)
  over_time = softmax(np.where(mask[..., None] > 0, s / 0.3, -np.inf), 1)
  expected = (over_glosses * over_time).sum(1)[:, :6]
  np.testing.assert_allclose(out['scores'], expected, rtol=1e-4, atol=1e-6)
  assert out['weights'].shape == (2, 5, 6)
  assert not np.any(np.asarray(out['weights'])[1, 2:])  # padded steps get no weight
  targets = np.zeros((2, 6), np.float32)
  targets[0, [1, 4]] = targets[1, 2] = 1
  p = np.clip(expected, 1e-8, 1 - 1e-8)
  np.testing.assert_allclose(
      pseudo_gloss_loss(out['scores'], jnp.asarray(targets)),
      np.mean(-(targets * np.log(p) + (1 - targets) * np.log(1 - p))), rtol=1e-4)
