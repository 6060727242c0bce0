"""Hugging Face XGLM (XGLMForCausalLM) -> sltjax's NNX `XGLM` (sltjax/models/xglm.py).

  model = load_xglm('/path/to/xglm-564M')
  logits = model(input_ids, attention_mask)  # [batch, length, vocab], as HF's forward
  save_xglm(model, '/path/to/out', tokenizer_dir)  # an XGLMForCausalLM directory

Parameter paths are HF's without the `model.` prefix: ('layers', 3, 'fc1', 'kernel') <->
'model.layers.3.fc1.weight'. The tied `lm_head.weight` is accepted only when it equals the
embedding.
"""
import dataclasses
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.convert.hf_checkpoint import read_config, read_state_dict, write_model_directory
from sltjax.convert.state_dict import TORCH_LEAF_NAMES, fill_state, to_state_dict
from sltjax.models.xglm import XGLM, XGLMConfig



def xglm_config_from_hf(hf_config: dict, **overrides) -> XGLMConfig:
  if hf_config.get('model_type') != 'xglm':
    raise ValueError(f'config.json has model_type={hf_config.get("model_type")!r}; load_xglm '
                     'reads "xglm" models.')
  if hf_config.get('activation_function', 'gelu') != 'gelu':
    raise ValueError(f'activation_function={hf_config["activation_function"]!r} is not supported '
                     '(XGLM uses exact "gelu").')
  if hf_config.get('add_cross_attention') or not hf_config.get('tie_word_embeddings', True):
    raise ValueError('Only the released XGLM shape is supported: no cross-attention, lm_head '
                     'tied to the embedding.')
  values = {k: v for k, v in hf_config.items() if k not in ('dtype', 'param_dtype', 'remat')}
  return dataclasses.replace(XGLMConfig.from_dict(values), **overrides)


def hf_name(path: tuple) -> str:
  """HF tensor name of an sltjax XGLM parameter path."""
  *modules, leaf = (str(p) for p in path)
  return '.'.join(['model', *modules, TORCH_LEAF_NAMES[leaf]])


def xglm_state_from_hf(state_dict: dict[str, np.ndarray], abstract_state: nnx.State,
                       dtype) -> nnx.State:
  unused = dict(state_dict)
  problems = []
  head = unused.pop('lm_head.weight', None)
  embedding = unused.get('model.embed_tokens.weight')
  if head is not None and embedding is not None and not np.array_equal(head, embedding):
    problems.append('lm_head.weight differs from model.embed_tokens.weight (untied heads are '
                    'not supported)')
  return fill_state(abstract_state, unused, hf_name, dtype, problems=problems,
                    what='the XGLM architecture of its config.json')


def load_xglm(path: str, dtype: str = 'float32', param_dtype: str | None = None,
              **overrides) -> XGLM:
  """The HF XGLM in directory `path` as an sltjax XGLM (dropout as in its config.json)."""
  param_dtype = param_dtype or dtype
  cfg = xglm_config_from_hf(read_config(path), dtype=dtype, param_dtype=param_dtype, **overrides)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: XGLM(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, xglm_state_from_hf(read_state_dict(path), abstract_state,
                                                jnp.dtype(param_dtype)))


def save_xglm(model: XGLM, directory: str, tokenizer_dir: str = '') -> None:
  """Writes `model` (without adapters) as a Hugging Face XGLMForCausalLM directory, with the
  tokenizer files of `tokenizer_dir` (sentencepiece.bpe.model, tokenizer.json, ...) if given."""
  cfg = model.config
  config = {'model_type': 'xglm', 'architectures': ['XGLMForCausalLM'],
            'vocab_size': cfg.vocab_size, 'd_model': cfg.d_model, 'num_layers': cfg.num_layers,
            'attention_heads': cfg.attention_heads, 'ffn_dim': cfg.ffn_dim,
            'max_position_embeddings': cfg.max_position_embeddings,
            'scale_embedding': cfg.scale_embedding, 'activation_function': 'gelu',
            'dropout': cfg.dropout, 'attention_dropout': cfg.attention_dropout,
            'activation_dropout': cfg.activation_dropout, 'layerdrop': 0.0,
            'pad_token_id': cfg.pad_token_id, 'bos_token_id': cfg.bos_token_id,
            'eos_token_id': cfg.eos_token_id, 'decoder_start_token_id': cfg.eos_token_id,
            'tie_word_embeddings': True}
  tokenizer_files = {name: os.path.join(tokenizer_dir, name)
                     for name in sorted(os.listdir(tokenizer_dir))} if tokenizer_dir else {}
  write_model_directory(directory, config, to_state_dict(nnx.state(model), hf_name),
                        tokenizer_files)
