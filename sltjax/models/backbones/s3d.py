"""S3D through Mixed_4f (MMTLB's visual encoder): [batch, T, H, W, 3] -> [batch, T/4, 832].

The layers mirror torchvision's `s3d().features[:13]` index for index (pooling layers included),
so a torchvision-format state dict (the released Kinetics-400 / WLASL checkpoints) converts by rule
(sltjax/convert/backbones.py). Every BatchNorm takes its statistics from valid frames only; the
valid length after a temporal stride is floor(length * T_out / T_in).
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sltjax.models.layers.conv import BatchNorm, computed_once, conv, max_pool

# torchvision's Mixed blocks: (in, branch0, branch1 reduce, branch1, branch2 reduce, branch2,
# branch3 after pooling).
MIXED_3B = (192, 64, 96, 128, 16, 32, 32)
MIXED_3C = (256, 128, 128, 192, 32, 96, 64)
MIXED_4B = (480, 192, 96, 208, 16, 48, 64)
MIXED_4C = (512, 160, 112, 224, 24, 64, 64)
MIXED_4D = (512, 128, 128, 256, 24, 64, 64)
MIXED_4E = (512, 112, 144, 288, 32, 64, 64)
MIXED_4F = (528, 256, 160, 320, 32, 128, 128)


@dataclasses.dataclass(frozen=True)
class S3DConfig:
  width: float = 1.0  # channel multiplier (1.0 = the released S3D; smaller for tiny test runs)
  frozen_bn: bool = False
  # features[:frozen_layers] always run in inference mode (BatchNorms use their running
  # statistics and keep them), as MMTLB's release keeps its frozen block 0 (freeze_block=1).
  frozen_layers: int = 0
  bn_momentum: float = 0.999  # Flax convention: PyTorch momentum 0.001, as torchvision's S3D
  bn_epsilon: float = 1e-3
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def channels(self, n: int) -> int:
    return max(1, round(n * self.width))

  @property
  def features(self) -> int:
    return _out(MIXED_4F, self.channels)


class ConvBN(nnx.Module):
  """Conv3d (no bias) -> BatchNorm -> ReLU (torchvision's Conv3dNormActivation)."""

  def __init__(self, in_channels, out_channels, kernel, stride, padding, cfg: S3DConfig, *,
               rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.conv = conv(in_channels, out_channels, kernel, stride=stride, padding=padding, **kw)
    self.bn = BatchNorm(out_channels, momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon,
                        frozen=cfg.frozen_bn, **kw)

  def __call__(self, x, mask, train):
    """x: [batch, T, H, W, C]; mask: [batch, T, 1, 1, 1] -> (y, mask at y's temporal length)."""
    y = self.conv(x)
    if y.shape[1] != mask.shape[1]:
      mask = _resample_mask(mask, y.shape[1])
    return computed_once(jax.nn.relu(self.bn(y, mask, train))), mask


class SepConv(nnx.Module):
  """A k x k x k convolution factorised into 1 x k x k (spatial) then k x 1 x 1 (temporal)."""

  def __init__(self, in_channels, out_channels, kernel: int, stride: int, padding: int,
               cfg: S3DConfig, *, rngs: nnx.Rngs):
    self.spatial = ConvBN(in_channels, out_channels, (1, kernel, kernel), (1, stride, stride),
                          (0, padding, padding), cfg, rngs=rngs)
    self.temporal = ConvBN(out_channels, out_channels, (kernel, 1, 1), (stride, 1, 1),
                           (padding, 0, 0), cfg, rngs=rngs)

  def __call__(self, x, mask, train):
    return self.temporal(*self.spatial(x, mask, train), train)


class Mixed(nnx.Module):
  """S3D's inception block: four branches concatenated along channels."""

  def __init__(self, spec: tuple[int, ...], cfg: S3DConfig, *, rngs: nnx.Rngs):
    c = [spec[0]] + [cfg.channels(n) for n in spec[1:]]
    in_channels, out0, mid1, out1, mid2, out2, out3 = c
    one = dict(kernel=(1, 1, 1), stride=(1, 1, 1), padding=(0, 0, 0), cfg=cfg, rngs=rngs)
    self.branch0 = ConvBN(in_channels, out0, **one)
    self.branch1_reduce = ConvBN(in_channels, mid1, **one)
    self.branch1 = SepConv(mid1, out1, 3, 1, 1, cfg, rngs=rngs)
    self.branch2_reduce = ConvBN(in_channels, mid2, **one)
    self.branch2 = SepConv(mid2, out2, 3, 1, 1, cfg, rngs=rngs)
    self.branch3 = ConvBN(in_channels, out3, **one)  # after a 3x3x3 max pool, stride 1

  def __call__(self, x, mask, train):
    branches = [self.branch0(x, mask, train),
                self.branch1(*self.branch1_reduce(x, mask, train), train),
                self.branch2(*self.branch2_reduce(x, mask, train), train),
                self.branch3(max_pool(x, (3, 3, 3), (1, 1, 1), (1, 1, 1)), mask, train)]
    return jnp.concatenate([y for y, _ in branches], axis=-1), mask


class MaxPool(nnx.Module):
  """A parameter-free max pool that keeps torchvision's layer indices."""

  def __init__(self, window, stride, padding):
    self.window, self.stride, self.padding = window, stride, padding

  def __call__(self, x, mask, train):  # pylint: disable=unused-argument
    x = max_pool(x, self.window, self.stride, self.padding)
    return x, _resample_mask(mask, x.shape[1])


def _resample_mask(mask, length: int):
  """mask [batch, T, 1, 1, 1] -> [batch, length, 1, 1, 1] with floor(valid * length / T) valid."""
  valid = jnp.sum(mask[:, :, 0, 0, 0], axis=1)  # [batch]
  new_valid = valid * length // mask.shape[1]
  return (jnp.arange(length)[None] < new_valid[:, None]).astype(mask.dtype)[:, :, None, None, None]


class S3D(nnx.Module):
  """torchvision's S3D features[0:13] (through Mixed_4f), then a spatial mean."""

  def __init__(self, cfg: S3DConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    ch = cfg.channels
    mixed = lambda spec, in_channels: Mixed((in_channels,) + spec[1:], cfg, rngs=rngs)
    self.features = nnx.List([
        SepConv(3, ch(64), 7, 2, 3, cfg, rngs=rngs),  # 0
        MaxPool((1, 3, 3), (1, 2, 2), (0, 1, 1)),  # 1
        ConvBN(ch(64), ch(64), (1, 1, 1), (1, 1, 1), (0, 0, 0), cfg, rngs=rngs),  # 2
        SepConv(ch(64), ch(192), 3, 1, 1, cfg, rngs=rngs),  # 3
        MaxPool((1, 3, 3), (1, 2, 2), (0, 1, 1)),  # 4
        mixed(MIXED_3B, ch(192)),  # 5
        mixed(MIXED_3C, _out(MIXED_3B, ch)),  # 6
        MaxPool((3, 3, 3), (2, 2, 2), (1, 1, 1)),  # 7
        mixed(MIXED_4B, _out(MIXED_3C, ch)),  # 8
        mixed(MIXED_4C, _out(MIXED_4B, ch)),  # 9
        mixed(MIXED_4D, _out(MIXED_4C, ch)),  # 10
        mixed(MIXED_4E, _out(MIXED_4D, ch)),  # 11
        mixed(MIXED_4F, _out(MIXED_4E, ch)),  # 12
    ])

  def __call__(self, frames, frame_mask, train: bool = False):
    """frames [batch, T, H, W, 3] (normalised; T a multiple of 4) ->
    ([batch, T/4, 832 * width], mask [batch, T/4])."""
    x, mask = frames, frame_mask[:, :, None, None, None]
    for index, layer in enumerate(self.features):
      x, mask = layer(x, mask, train and index >= self.config.frozen_layers)
    return jnp.mean(x, axis=(2, 3)), mask[:, :, 0, 0, 0]


def _out(spec: tuple[int, ...], ch) -> int:
  """Output channels of a Mixed block."""
  return ch(spec[1]) + ch(spec[3]) + ch(spec[5]) + ch(spec[6])
