"""The state-dict layouts of the systems' released PyTorch code, mapped to sltjax's parameters in
one place.

MMTLB (https://github.com/FangyunWei/SLRT, TwoStreamNetwork's SingleStream-SLT): the
`SignLanguageModel` state dict its training writes (`torch.save({'model_state': ...})`):

  recognition_network.visual_backbone.backbone.base.N.*   -> backbone   (S3D, SLRT naming)
  recognition_network.visual_head.{fc1, bn1.norm, feedforward.layer_norm,
      feedforward.pwff_layer.0 / .3, layer_norm, gloss_output_layer}.*
                                                          -> head.{projection, projection_bn,
                                                             norm, conv1 / conv2, final_norm,
                                                             classifier}
  vl_mapper.mapping.0 / .2 (PHOENIX's MLP) or .mapping (CSL-Daily's gloss-probability Linear)
                                                          -> mapper.fc1 / fc2, mapper.linear
  translation_network.model.*  (Hugging Face MBartForConditionalGeneration)
                                                          -> translation (sltjax.convert.hf)

Not variables in sltjax: the head's fixed sinusoidal table (visual_head.pe.pe) and BatchNorm's
batch counters.
"""
from collections.abc import Callable

import numpy as np
from flax import nnx

from sltjax.convert.backbones import s3d_release_name
from sltjax.convert.hf import drop_tied_copies, hf_layout, hf_name
from sltjax.convert.state_dict import TORCH_LEAF_NAMES, fill_state, torch_layout

MMTLB_TRANSLATION = 'translation_network.model.'
_MMTLB_HEAD = {'projection': 'fc1', 'projection_bn': 'bn1.norm', 'norm': 'feedforward.layer_norm',
               'conv1': 'feedforward.pwff_layer.0', 'conv2': 'feedforward.pwff_layer.3',
               'final_norm': 'layer_norm', 'classifier': 'gloss_output_layer'}
_MMTLB_MAPPER = {'fc1': 'mapping.0', 'fc2': 'mapping.2', 'linear': 'mapping'}


def mmtlb_release_name(path: tuple) -> str:
  """The SignLanguageModel tensor name of an sltjax MMTLB parameter path, e.g.
  ('head', 'conv1', 'kernel') -> 'recognition_network.visual_head.feedforward.pwff_layer.0.weight'.
  """
  top, *rest = path
  if top == 'backbone':
    return 'recognition_network.visual_backbone.backbone.' + s3d_release_name(tuple(rest))
  if top == 'head':
    return f'recognition_network.visual_head.{_MMTLB_HEAD[rest[0]]}.{TORCH_LEAF_NAMES[rest[-1]]}'
  if top == 'mapper':
    return f'vl_mapper.{_MMTLB_MAPPER[rest[0]]}.{TORCH_LEAF_NAMES[rest[-1]]}'
  if top == 'translation':
    return MMTLB_TRANSLATION + hf_name(tuple(rest))
  raise ValueError(f'MMTLB has no released counterpart of {"/".join(map(str, path))}.')


def _mmtlb_layout(path: tuple, tensor: np.ndarray) -> np.ndarray:
  return hf_layout(path[1:], tensor) if path[0] == 'translation' else torch_layout(path, tensor)


def mmtlb_state(state_dict: dict[str, np.ndarray], abstract_state: nnx.State, dtype, *,
                ignored: Callable[[str], bool] = lambda name: False) -> nnx.State:
  """`abstract_state` (of an sltjax MMTLB) filled from the release's SignLanguageModel state dict
  (a DataParallel 'module.' prefix removed), cast to dtype. `ignored` names further release
  tensors the caller accounts for. Raises ValueError listing every missing, unused or mis-shaped
  tensor at once."""
  state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
  state_dict, problems = drop_tied_copies(state_dict, prefix=MMTLB_TRANSLATION)
  return fill_state(abstract_state, state_dict, mmtlb_release_name, dtype, layout=_mmtlb_layout,
                    problems=problems, what="MMTLB's release (SignLanguageModel's state dict)",
                    ignored=lambda n: (n.endswith(('num_batches_tracked', '.pe.pe'))
                                       or ignored(n)))
