"""ResNet-18 applied to every frame: [batch, T, H, W, 3] -> [batch, T, 512].

Module and attribute names follow torchvision's resnet18 (conv1, bn1, layers[i][j].conv1, ...), so
its state dict converts by rule (sltjax/convert/backbones.py), as does Hugging Face's ResNetModel.
BatchNorm statistics come from real frames only: padded frames are masked out.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sltjax import sharding
from sltjax.models.layers.conv import BatchNorm, computed_once, conv, max_pool


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  width: int = 64  # channels of the stem and first stage (torchvision: 64)
  depths: tuple[int, ...] = (2, 2, 2, 2)  # basic blocks per stage (ResNet-18)
  frozen_bn: bool = False  # always use the running statistics
  bn_momentum: float = 0.9  # Flax convention (PyTorch's 0.1)
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  @property
  def features(self) -> int:
    return self.width * 2 ** (len(self.depths) - 1)


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers plus a (projected when the shape changes) residual."""

  def __init__(self, in_channels: int, channels: int, stride: int, cfg: ResNetConfig, *,
               rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    bn = lambda: BatchNorm(channels, momentum=cfg.bn_momentum, frozen=cfg.frozen_bn, **kw)
    self.conv1 = conv(in_channels, channels, (3, 3), stride=(stride,) * 2, padding=(1, 1), **kw)
    self.bn1 = bn()
    self.conv2 = conv(channels, channels, (3, 3), stride=(1, 1), padding=(1, 1), **kw)
    self.bn2 = bn()
    projects = stride != 1 or in_channels != channels
    self.downsample_conv = (conv(in_channels, channels, (1, 1), stride=(stride,) * 2,
                                 padding=(0, 0), **kw) if projects else None)
    self.downsample_bn = bn() if projects else None

  def __call__(self, x, mask, train: bool):  # x: [frames, H, W, C]; mask: [frames, 1, 1, 1]
    h = computed_once(jax.nn.relu(self.bn1(self.conv1(x), mask, train)))
    h = self.bn2(self.conv2(h), mask, train)
    if self.downsample_conv is not None:
      x = self.downsample_bn(self.downsample_conv(x), mask, train)
    return computed_once(jax.nn.relu(h + x))


class ResNet(nnx.Module):
  """ResNet with basic blocks, without the classifier; one feature vector per frame."""

  def __init__(self, cfg: ResNetConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.conv1 = conv(3, cfg.width, (7, 7), stride=(2, 2), padding=(3, 3), **kw)
    self.bn1 = BatchNorm(cfg.width, momentum=cfg.bn_momentum, frozen=cfg.frozen_bn, **kw)
    stages, in_channels = [], cfg.width
    for i, depth in enumerate(cfg.depths):
      channels = cfg.width * 2 ** i
      stages.append(nnx.List([
          BasicBlock(in_channels if j == 0 else channels, channels, 2 if i and j == 0 else 1,
                     cfg, rngs=rngs) for j in range(depth)]))
      in_channels = channels
    self.layers = nnx.List(stages)

  def images(self, x, mask=None, train: bool = False):
    """x: [images, H, W, 3] (normalised) -> [images, features]; mask [images] (1 = real)."""
    mask = None if mask is None else mask[:, None, None, None]
    x = jax.nn.relu(self.bn1(self.conv1(sharding.constrain_frames(x)), mask, train))
    x = max_pool(x, (3, 3), (2, 2), (1, 1))
    for stage in self.layers:
      for block in stage:
        x = block(sharding.constrain_frames(x), mask, train)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, frames, frame_mask, train: bool = False):
    """frames [batch, T, H, W, 3] -> ([batch, T, features], frame_mask [batch, T])."""
    batch, length = frames.shape[:2]
    flat = self.images(frames.reshape(batch * length, *frames.shape[2:]),
                       frame_mask.reshape(-1), train)
    return flat.reshape(batch, length, -1), frame_mask
