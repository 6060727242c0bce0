"""Hugging Face mBART (MBartForConditionalGeneration) -> sltjax's NNX `MBart` (and, from their
own modules, `load_dinov2` and `load_xglm`).

  model = load_mbart('/path/to/mbart-large-cc25', dtype='bfloat16')
  logits = model(input_ids, attention_mask, decoder_input_ids)  # [batch, tgt_len, vocab]

sltjax's parameter paths are HF's with the encoder/decoder prefix folded into the module name, so
the mapping is a rule, not a table: ('encoder_layers', 3, 'fc1', 'kernel') <->
'model.encoder.layers.3.fc1.weight' (transposed: torch Linear stores [out, in]). Every source
tensor is used exactly once; HF's tied copies of the embedding (encoder/decoder embed_tokens,
lm_head) are accepted only when they equal `model.shared.weight`.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.convert.dinov2 import load_dinov2
from sltjax.convert.hf_checkpoint import read_config, read_generation_config, read_state_dict
from sltjax.convert.state_dict import (TORCH_LEAF_NAMES, fill_state, from_torch_layout,
                                       to_state_dict, torch_layout)
from sltjax.convert.xglm import load_xglm
from sltjax.models.mbart import MBart, MBartConfig

__all__ = ['drop_tied_copies', 'hf_layout', 'load_dinov2', 'load_mbart', 'load_xglm',
           'mbart_config_from_hf', 'mbart_state_from_hf',
           'hf_name', 'to_hf_state_dict']

TIED_EMBEDDING_COPIES = ('model.encoder.embed_tokens.weight', 'model.decoder.embed_tokens.weight',
                         'lm_head.weight')


def mbart_config_from_hf(hf_config: dict, **overrides) -> MBartConfig:
  """sltjax's MBartConfig for an HF mBART config.json; `overrides` set dropout, dtype, remat, ..."""
  model_type = hf_config.get('model_type')
  if model_type != 'mbart':
    raise ValueError(f'config.json has model_type={model_type!r}; load_mbart reads "mbart" models.')
  if hf_config.get('activation_function', 'gelu') != 'gelu':
    raise ValueError(f'activation_function={hf_config["activation_function"]!r} is not supported '
                     '(mBART uses exact "gelu").')
  if not hf_config.get('tie_word_embeddings', True):
    raise ValueError('tie_word_embeddings=False is not supported: sltjax ties lm_head to the '
                     'shared embedding, as every released mBART does.')
  storage_keys = {'dtype', 'param_dtype', 'remat'}  # HF's "dtype" is its storage type, not ours
  values = {k: v for k, v in hf_config.items() if k not in storage_keys}
  return dataclasses.replace(MBartConfig.from_dict(values), **overrides)


def hf_name(path: tuple) -> str:
  """HF tensor name of an sltjax MBart parameter path."""
  if path == ('final_logits_bias',):
    return 'final_logits_bias'
  head, *middle, leaf = (str(p) for p in path)
  if head.startswith(('encoder_', 'decoder_')):
    side, module = head.split('_', 1)
    head = f'{side}.{module}'
  return '.'.join(['model', head, *middle, TORCH_LEAF_NAMES[leaf]])


def hf_layout(path: tuple, tensor: np.ndarray) -> np.ndarray:
  """An HF mBART tensor in sltjax's layout for parameter `path`."""
  if path[0] == 'final_logits_bias':
    return tensor.reshape(-1)  # HF stores [1, vocab]
  return torch_layout(path, tensor)


def drop_tied_copies(state_dict: dict[str, np.ndarray], prefix: str = ''
                     ) -> tuple[dict[str, np.ndarray], list[str]]:
  """(state_dict without HF's tied copies of `prefix`model.shared.weight, a problem for each
  copy that differs from it: untied embeddings are not supported)."""
  unused = dict(state_dict)
  shared = unused.get(f'{prefix}model.shared.weight')
  problems = []
  for name in (prefix + n for n in TIED_EMBEDDING_COPIES):
    if name in unused:
      copy = unused.pop(name)
      if shared is not None and (copy.shape != shared.shape or not np.array_equal(copy, shared)):
        problems.append(f'{name} differs from {prefix}model.shared.weight (untied embeddings '
                        'are not supported)')
  return unused, problems


def mbart_state_from_hf(state_dict: dict[str, np.ndarray], abstract_state: nnx.State,
                        dtype) -> nnx.State:
  """`abstract_state` (nnx.split of an abstract MBart) filled from HF tensors, cast to `dtype`.

  Raises ValueError naming every missing, unexpected or mis-shaped tensor.
  """
  unused, problems = drop_tied_copies(state_dict)
  return fill_state(abstract_state, unused, hf_name, dtype, layout=hf_layout,
                    problems=problems, what='the mBART architecture of its config.json')


def load_mbart(path: str, dtype: str = 'float32', param_dtype: str | None = None,
               **overrides) -> MBart:
  """The HF mBART model in directory `path` as an sltjax MBart (dropout as in its config.json).

  dtype: compute dtype; param_dtype: storage dtype of the weights (defaults to `dtype`).
  `overrides`: further MBartConfig fields (dropout, remat, ...).
  """
  param_dtype = param_dtype or dtype
  hf_config = {**read_config(path), **read_generation_config(path)}
  cfg = mbart_config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, **overrides)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: MBart(cfg, rngs=nnx.Rngs(0))))
  state = mbart_state_from_hf(read_state_dict(path), abstract_state, jnp.dtype(param_dtype))
  return nnx.merge(graphdef, state)


def to_hf_state_dict(model: MBart) -> dict[str, np.ndarray]:
  """The inverse mapping, float32 numpy by HF name (for exporting and for round-trip checks)."""
  def layout(path, value):
    return value[None] if path[0] == 'final_logits_bias' else from_torch_layout(path, value)
  return to_state_dict(nnx.state(model), hf_name, layout)
