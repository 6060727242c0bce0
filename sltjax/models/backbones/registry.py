"""Visual backbones by name, for any system: how to build one, its output width, and how to read
its released PyTorch weights (sltjax/convert/backbones.py).

  s3d       torchvision's S3D through Mixed_4f: frames [B, T, H, W, 3] -> [B, T/4, 832 * width]
  resnet18  ResNet-18 on every frame: frames [B, T, H, W, 3] -> [B, T, 512 * width]
  dinov2    DINOv2 on every frame, its CLS feature: [B, T, H, W, 3] -> [B, T, hidden_size]
            (the architecture: options.architecture, DINOv2Config's fields; default ViT-S/14)
  features  no network: the inputs are features extracted before, [B, T', feature_dim]

A new backbone is one module under sltjax/models/backbones/ and one `register_backbone` call.
"""
import dataclasses
import os
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from sltjax.convert.backbones import resnet_state, s3d_state
from sltjax.convert.dinov2 import dinov2_state
from sltjax.convert.hf_checkpoint import read_state_dict
from sltjax.convert.state_dict import read_torch_weights
from sltjax.models.backbones.dinov2 import DINOv2, DINOv2Config
from sltjax.models.backbones.resnet import ResNet, ResNetConfig
from sltjax.models.backbones.s3d import S3D, S3DConfig


@dataclasses.dataclass(frozen=True)
class BackboneOptions:
  width: float = 1.0  # channel multiplier of the released network
  frozen_bn: bool = False  # BatchNorms always use their running statistics
  bn_momentum: float = 0.0  # running-statistics momentum (Flax's convention); 0: the released one
  frozen_layers: int = 0  # S3D: its first layers run in inference mode (MMTLB's frozen block)
  feature_dim: int = 0  # 'features': the width of the extracted features
  # Fields of a network's own config given as (name, value) pairs (DINOv2's sizes, say).
  architecture: tuple[tuple[str, object], ...] = ()
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def batch_norm(self) -> dict:
    """The BatchNorm fields every convolutional backbone config takes."""
    return dict(frozen_bn=self.frozen_bn, dtype=self.dtype, param_dtype=self.param_dtype,
                **({'bn_momentum': self.bn_momentum} if self.bn_momentum else {}))


@dataclasses.dataclass(frozen=True)
class Backbone:
  build: Callable[[BackboneOptions, nnx.Rngs], nnx.Module | None]
  output_dim: Callable[[BackboneOptions], int]
  # (torch state dict {name: array}, abstract nnx.State, param dtype) -> filled nnx.State
  convert: Callable[..., nnx.State] | None = None


_BACKBONES: dict[str, Backbone] = {}


def register_backbone(name: str, backbone: Backbone) -> None:
  if name in _BACKBONES:
    raise ValueError(f'Backbone {name!r} is already registered.')
  _BACKBONES[name] = backbone


def names() -> tuple[str, ...]:
  return tuple(_BACKBONES)


def get(name: str) -> Backbone:
  if name not in _BACKBONES:
    raise ValueError(f'model.backbone={name!r}; expected one of {names()}.')
  return _BACKBONES[name]


def build(name: str, options: BackboneOptions, rngs: nnx.Rngs) -> nnx.Module | None:
  """The backbone module (None for 'features')."""
  return get(name).build(options, rngs)


def output_dim(name: str, options: BackboneOptions) -> int:
  return get(name).output_dim(options)


def read_weights(name: str, options: BackboneOptions, path: str) -> nnx.State:
  """The backbone's variables from a PyTorch checkpoint file or a Hugging Face model directory
  (torchvision, Meta or Hugging Face names, as the backbone's converter reads them)."""
  backbone = get(name)
  if backbone.convert is None:
    raise ValueError(f'Backbone {name!r} has no weights to load: model.backbone_weights needs a '
                     f'network ({", ".join(n for n in names() if get(n).convert)}).')
  abstract = nnx.state(nnx.eval_shape(lambda: backbone.build(options, nnx.Rngs(0))))
  tensors = read_state_dict(path) if os.path.isdir(path) else read_torch_weights(path)
  return backbone.convert(tensors, abstract, jnp.dtype(options.param_dtype))


def _s3d_config(options: BackboneOptions) -> S3DConfig:
  return S3DConfig(width=options.width, frozen_layers=options.frozen_layers,
                   **options.batch_norm())


def _resnet18_config(options: BackboneOptions) -> ResNetConfig:
  return ResNetConfig(width=round(64 * options.width), depths=(2, 2, 2, 2),
                      **options.batch_norm())


register_backbone('s3d', Backbone(
    build=lambda options, rngs: S3D(_s3d_config(options), rngs=rngs),
    output_dim=lambda options: _s3d_config(options).features, convert=s3d_state))
register_backbone('resnet18', Backbone(
    build=lambda options, rngs: ResNet(_resnet18_config(options), rngs=rngs),
    output_dim=lambda options: _resnet18_config(options).features, convert=resnet_state))
def _dinov2_config(options: BackboneOptions) -> DINOv2Config:
  return DINOv2Config(**dict(options.architecture), dtype=options.dtype,
                      param_dtype=options.param_dtype)


register_backbone('dinov2', Backbone(
    build=lambda options, rngs: DINOv2(_dinov2_config(options), rngs=rngs),
    output_dim=lambda options: _dinov2_config(options).hidden_size, convert=dinov2_state))
register_backbone('features', Backbone(
    build=lambda options, rngs: None, output_dim=lambda options: options.feature_dim))
