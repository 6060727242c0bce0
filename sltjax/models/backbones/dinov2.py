"""DINOv2 (Oquab et al., 2023), the vision transformer Sign2GPT encodes frames with.

  images [B, H, W, 3] (normalised) -> patch embedding (conv, patch 14) + CLS token + position
  embeddings (interpolated to H/14 x W/14 as Hugging Face does, bicubic as torch computes it)
  -> pre-LN blocks with layer scale -> final LayerNorm: [B, 1 + patches, D]
  (= Hugging Face Dinov2Model's last_hidden_state)

As a backbone on frames [B, T, H, W, 3] it gives every frame's CLS feature [B, T, D]. Module
names follow Hugging Face's Dinov2Model, so its state dict and Meta's original one (fused qkv)
convert by rule (sltjax/convert/dinov2.py).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax import sharding
from sltjax.models.layers import lora
from sltjax.models.layers.attention import MultiHeadAttention
from sltjax.models.layers.dense import dense, layer_norm

INTERPOLATIONS = ('hf', 'meta')  # position embeddings resized to a size / by a scale factor


@dataclasses.dataclass(frozen=True)
class DINOv2Config:
  """Defaults: ViT-S/14 (dinov2_vits14, facebook/dinov2-small)."""
  hidden_size: int = 384
  num_layers: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  patch_size: int = 14
  image_size: int = 518  # the grid the position embeddings were trained for
  layer_norm_eps: float = 1e-6
  # 'hf': bicubic to exactly (H/14, W/14), as transformers does; 'meta': Meta's release, by the
  # scale factor (H/14 + 0.1) / grid (square inputs).
  interpolation: str = 'hf'
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def __post_init__(self):
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f'interpolation={self.interpolation!r}; expected one of {INTERPOLATIONS}.')

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def mlp_dim(self) -> int:
    return int(self.hidden_size * self.mlp_ratio)


def _cubic(x, a: float = -0.75):
  """torch's cubic convolution kernel (A = -0.75) at distances x in [0, 2)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
  """[out_size, in_size] weights of torch's bicubic interpolation (align_corners=False, no
  antialias) along one axis; source coordinate of output i: scale * (i + 0.5) - 0.5, the four
  neighbours clamped to the edge."""
  source = scale * (np.arange(out_size) + 0.5) - 0.5
  floor = np.floor(source)
  t = source - floor
  matrix = np.zeros((out_size, in_size), np.float64)
  for offset, weight in ((-1, _cubic(t + 1)), (0, _cubic(t)), (1, _cubic(1 - t)),
                         (2, _cubic(2 - t))):
    index = np.clip(floor.astype(int) + offset, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), index), weight)
  return matrix


class Dinov2Layer(nnx.Module):
  """norm1 -> attention -> layer scale -> residual; norm2 -> MLP (GELU) -> layer scale -> residual."""

  def __init__(self, cfg: DINOv2Config, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    d = cfg.hidden_size
    self.norm1 = layer_norm(d, epsilon=cfg.layer_norm_eps, **kw)
    self.attention = MultiHeadAttention(d, cfg.num_heads, 0.0, **kw)
    self.layer_scale1 = nnx.Param(jnp.ones((d,), cfg.param_dtype))
    self.norm2 = layer_norm(d, epsilon=cfg.layer_norm_eps, **kw)
    self.fc1 = dense(d, cfg.mlp_dim, ('embed', 'mlp'), **kw)
    self.fc2 = dense(cfg.mlp_dim, d, ('mlp', 'embed'), **kw)
    self.layer_scale2 = nnx.Param(jnp.ones((d,), cfg.param_dtype))

  def __call__(self, x, rngs=None):  # [B, tokens, D]; rngs: LoRA dropout, when adapted
    h = self.norm1(x)
    h = self.attention(h, *self.attention.project_kv(h, rngs), True, rngs=rngs)
    x = x + h * self.layer_scale1[...]
    h = jax.nn.gelu(lora.call(self.fc1, self.norm2(x), rngs), approximate=False)
    return x + lora.call(self.fc2, h, rngs) * self.layer_scale2[...]


class DINOv2(nnx.Module):

  def __init__(self, cfg: DINOv2Config, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    d, p = cfg.hidden_size, cfg.patch_size
    init = nnx.initializers.truncated_normal(0.02)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, d), cfg.param_dtype))
    self.position_embeddings = nnx.Param(init(rngs.params(), (1, cfg.grid ** 2 + 1, d),
                                              cfg.param_dtype))
    self.patch_embeddings = nnx.Conv(
        3, d, (p, p), strides=(p, p), padding='VALID', **kw,
        kernel_init=nnx.with_partitioning(init, (None, None, 'conv_in', 'embed')),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ('embed',)))
    self.layers = nnx.List([Dinov2Layer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.layernorm = layer_norm(d, epsilon=cfg.layer_norm_eps, **kw)

  def positions(self, rows: int, columns: int):
    """[1, 1 + rows * columns, D] position embeddings for a rows x columns patch grid."""
    table = self.position_embeddings[...]
    grid = self.config.grid
    if rows == columns == grid:
      return table
    if self.config.interpolation == 'meta':  # torch's scale_factor path: 1 / factor per step
      scales = [grid / (n + 0.1) for n in (rows, columns)]
    else:
      scales = [grid / n for n in (rows, columns)]
    along_rows = jnp.asarray(bicubic_matrix(grid, rows, scales[0]), jnp.float32)
    along_columns = jnp.asarray(bicubic_matrix(grid, columns, scales[1]), jnp.float32)
    patches = table[0, 1:].astype(jnp.float32).reshape(grid, grid, -1)
    patches = jnp.einsum('rg,ghd,ch->rcd', along_rows, patches, along_columns,
                         precision='highest')
    patches = patches.reshape(1, rows * columns, -1).astype(table.dtype)
    return jnp.concatenate([table[:, :1], patches], axis=1)

  def images(self, images, rngs=None):
    """images [B, H, W, 3] -> last_hidden_state [B, 1 + patches, D] (`rngs`: LoRA dropout)."""
    images = sharding.constrain_frames(images)
    x = self.patch_embeddings(images.astype(self.config.dtype))  # [B, H/p, W/p, D]
    batch, rows, columns, d = x.shape
    x = x.reshape(batch, rows * columns, d)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (batch, 1, d))
    x = jnp.concatenate([cls, x], axis=1) + self.positions(rows, columns).astype(x.dtype)
    for layer in self.layers:
      x = layer(sharding.constrain_frames(x), rngs)
    return self.layernorm(x)

  def __call__(self, frames, frame_mask, train: bool = False):  # pylint: disable=unused-argument
    """frames [B, T, H, W, 3] -> (CLS features [B, T, D], frame_mask)."""
    batch, length = frames.shape[:2]
    out = self.images(frames.reshape(batch * length, *frames.shape[2:]))
    return out[:, 0].reshape(batch, length, -1), frame_mask
