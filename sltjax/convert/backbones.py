"""PyTorch visual backbones -> sltjax's NNX backbones.

- ResNet: torchvision `resnet18().state_dict()` or Hugging Face `ResNetModel` /
  `ResNetForImageClassification` (detected from the names; the classifier is ignored).
- S3D: torchvision `s3d().state_dict()`, or the naming of MMTLB's release (SLRT's S3Dsup:
  `base.N.conv_s`, `bn_s`, `conv_t`, `bn_t`, `branchK.M.conv`, ...; its Kinetics-400 and
  Kinetics-400 -> WLASL checkpoints and the Sign2Gloss state dicts it writes, under any of the
  prefixes `module.`, `backbone.`, `recognition_network.visual_backbone.`); the format is
  detected from the names. Layers after Mixed_4f and the classifier are ignored.

sltjax's modules carry torchvision's names, so each mapping is a rule over the parameter path.
"""
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.convert.state_dict import TORCH_LEAF_NAMES
from sltjax.convert.state_dict import fill_state


def _ignored_batch_counter(name: str) -> bool:
  return name.endswith('num_batches_tracked')


# ------------------------------------------------------------------------------------ ResNet
def resnet_torchvision_name(path: tuple) -> str:
  """('layers', 1, 0, 'downsample_conv', 'kernel') -> 'layer2.0.downsample.0.weight'."""
  parts = list(path)
  if parts[0] == 'layers':
    parts[:3] = [f'layer{int(parts[1]) + 1}', str(parts[2])]
  module = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
  return '.'.join([*(module.get(str(p), str(p)) for p in parts[:-1]), TORCH_LEAF_NAMES[parts[-1]]])


_HF_RESNET_RULES = (  # torchvision name -> Hugging Face ResNetModel name
    (r'^conv1\.', 'embedder.embedder.convolution.'),
    (r'^bn1\.', 'embedder.embedder.normalization.'),
    (r'^layer(\d)\.(\d+)\.conv1\.', lambda m: f'encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.0.convolution.'),
    (r'^layer(\d)\.(\d+)\.bn1\.', lambda m: f'encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.0.normalization.'),
    (r'^layer(\d)\.(\d+)\.conv2\.', lambda m: f'encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.1.convolution.'),
    (r'^layer(\d)\.(\d+)\.bn2\.', lambda m: f'encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.1.normalization.'),
    (r'^layer(\d)\.(\d+)\.downsample\.0\.', lambda m: f'encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.'),
    (r'^layer(\d)\.(\d+)\.downsample\.1\.', lambda m: f'encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.'),
)


def resnet_hf_name(path: tuple) -> str:
  """The Hugging Face ResNetModel name of a parameter path."""
  name = resnet_torchvision_name(path)
  for pattern, replacement in _HF_RESNET_RULES:
    name, count = re.subn(pattern, replacement, name)
    if count:
      return name
  raise ValueError(f'No Hugging Face name for {name}.')


def resnet_state(state_dict: dict[str, np.ndarray], abstract_state: nnx.State,
                 dtype=jnp.float32) -> nnx.State:
  """ResNet variables from a torchvision or Hugging Face state dict (format detected)."""
  state_dict = {k.removeprefix('resnet.'): v for k, v in state_dict.items()}
  if 'embedder.embedder.convolution.weight' in state_dict:
    return fill_state(abstract_state, state_dict, resnet_hf_name, dtype,
                      what='sltjax ResNet (Hugging Face ResNetModel names)',
                      ignored=lambda n: _ignored_batch_counter(n) or n.startswith('classifier.'))
  return fill_state(abstract_state, state_dict, resnet_torchvision_name, dtype,
                    what='sltjax ResNet (torchvision names)',
                    ignored=lambda n: _ignored_batch_counter(n) or n.startswith('fc.'))


# ------------------------------------------------------------------------------------ S3D
_S3D_MODULES = {'conv': '0', 'bn': '1', 'spatial': '0', 'temporal': '1',
                'branch1_reduce': 'branch1.0', 'branch1': 'branch1.1',
                'branch2_reduce': 'branch2.0', 'branch2': 'branch2.1', 'branch3': 'branch3.1'}


def s3d_torchvision_name(path: tuple) -> str:
  """('features', 5, 'branch1', 'temporal', 'bn', 'mean') -> 'features.5.branch1.1.1.1.running_mean'."""
  return '.'.join([*(_S3D_MODULES.get(str(p), str(p)) for p in path[:-1]), TORCH_LEAF_NAMES[path[-1]]])


def _beyond_mixed_4f(name: str) -> bool:
  match = re.match(r'features\.(\d+)\.', name)
  return name.startswith('classifier.') or bool(match and int(match[1]) > 12)


# SLRT's S3Dsup names its layers base.N like torchvision's features.N (same indices), with its
# own module names inside: SepConv3d's conv_s/bn_s/conv_t/bn_t, BasicConv3d's conv/bn, and each
# Mixed branch an nn.Sequential (branch3.0 is the max pool).
_S3D_RELEASE_MODULES = {'branch0': 'branch0.0', 'branch1_reduce': 'branch1.0', 'branch1': 'branch1.1',
                        'branch2_reduce': 'branch2.0', 'branch2': 'branch2.1',
                        'branch3': 'branch3.1'}
_S3D_RELEASE_PREFIXES = ('module.', 'recognition_network.visual_backbone.', 'backbone.')


def s3d_release_name(path: tuple) -> str:
  """('features', 5, 'branch1', 'temporal', 'bn', 'mean') -> 'base.5.branch1.1.bn_t.running_mean'
  (SLRT's S3Dsup naming)."""
  parts = ['base', str(path[1])]
  modules = [str(p) for p in path[2:-1]]
  if modules and modules[0] in _S3D_RELEASE_MODULES:
    parts.append(_S3D_RELEASE_MODULES[modules.pop(0)])
  if modules[0] in ('spatial', 'temporal'):  # SepConv: its ConvBN's conv/bn get a suffix
    modules = [f'{modules[1]}_{modules[0][0]}']
  return '.'.join([*parts, *modules, TORCH_LEAF_NAMES[path[-1]]])


def _s3d_release_beyond_mixed_4f(name: str) -> bool:
  match = re.match(r'base\.(\d+)\.', name)
  return not name.startswith('base.') or bool(match and int(match[1]) > 12)


def s3d_state(state_dict: dict[str, np.ndarray], abstract_state: nnx.State,
              dtype=jnp.float32) -> nnx.State:
  """S3D (through Mixed_4f) variables from a torchvision- or SLRT-format state dict."""
  release = {}
  for name, value in state_dict.items():
    for prefix in _S3D_RELEASE_PREFIXES:
      name = name.removeprefix(prefix)
    release[name] = value
  if 'base.0.conv_s.weight' in release:
    return fill_state(abstract_state, release, s3d_release_name, dtype,
                      what='sltjax S3D through Mixed_4f (SLRT release names)',
                      ignored=lambda n: (_ignored_batch_counter(n)
                                         or _s3d_release_beyond_mixed_4f(n)))
  return fill_state(abstract_state, state_dict, s3d_torchvision_name, dtype,
                    what='sltjax S3D through Mixed_4f (torchvision names)',
                    ignored=lambda n: _ignored_batch_counter(n) or _beyond_mixed_4f(n))
