"""XGLM (Lin et al., 2022), the multilingual decoder-only LM Sign2GPT translates with, in Flax NNX.

Mirrors Hugging Face's XGLMForCausalLM so that its checkpoints convert parameter for parameter
(sltjax/convert/xglm.py): token embeddings scaled by sqrt(d), fixed sinusoidal positions with an
offset of 2 (sin and cos halves, the padding row zeroed), pre-LN decoder layers (mBART's, without
cross-attention), a final LayerNorm, logits from the tied embedding. Runs on full sequences
(teacher forcing, HF's forward: positions 0..L-1) or one step at a time from a KV cache
(decoding: positions from the attention mask, so left-padded prompts work).
"""
import dataclasses
import functools
import math
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.models.layers.attention import KVCache
from sltjax.models.layers.dense import embedding, layer_norm
from sltjax.models.mbart import DecoderLayer, MBartConfig, call_layer, config_from_dict

POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class XGLMConfig:
  """Defaults: xglm-564M's (vocab_size aside)."""
  vocab_size: int
  d_model: int = 1024
  num_layers: int = 24
  attention_heads: int = 16
  ffn_dim: int = 4096
  max_position_embeddings: int = 2048
  scale_embedding: bool = True
  dropout: float = 0.1
  attention_dropout: float = 0.1
  activation_dropout: float = 0.0
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'XGLMConfig':
    return config_from_dict(cls, values)

  def layer_config(self) -> MBartConfig:
    """The decoder layers' shape, as the mBART config DecoderLayer takes."""
    return MBartConfig(vocab_size=self.vocab_size, d_model=self.d_model,
                       decoder_attention_heads=self.attention_heads, decoder_ffn_dim=self.ffn_dim,
                       dropout=self.dropout, attention_dropout=self.attention_dropout,
                       activation_dropout=self.activation_dropout, dtype=self.dtype,
                       param_dtype=self.param_dtype, remat=self.remat)


@functools.lru_cache(maxsize=8)
def sinusoidal_table(num_positions: int, dim: int, padding_idx: int | None) -> np.ndarray:
  """[num_positions, dim] HF XGLM's (tensor2tensor) table: sin of the first half of the
  features, cos of the second, frequencies 10000^(-i / (half - 1)); row padding_idx zero."""
  half = dim // 2
  frequency = np.exp(np.arange(half, dtype=np.float32) * -(math.log(10000) / (half - 1)))
  angles = np.arange(num_positions, dtype=np.float32)[:, None] * frequency[None]
  table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  if dim % 2:
    table = np.concatenate([table, np.zeros((num_positions, 1), np.float32)], axis=1)
  if padding_idx is not None:
    table[padding_idx] = 0
  return table.astype(np.float32)


class XGLM(nnx.Module):
  """Logits are float32 [batch, length, vocab]."""

  def __init__(self, cfg: XGLMConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.embed_tokens = embedding(cfg.vocab_size, cfg.d_model, ('vocab', 'embed'), **kw)
    layer = cfg.layer_config()
    self.layers = nnx.List([DecoderLayer(layer, cross_attention=False, rngs=rngs)
                            for _ in range(cfg.num_layers)])
    self.layer_norm = layer_norm(cfg.d_model, **kw)
    self.dropout = nnx.Dropout(cfg.dropout)
    self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0

  def embed(self, input_ids, position_ids, rngs=None):
    """Scaled token embeddings plus positions: [batch, length, d_model]."""
    cfg = self.config
    table = jnp.asarray(sinusoidal_table(cfg.max_position_embeddings + POSITION_OFFSET,
                                         cfg.d_model, cfg.pad_token_id))
    x = self.embed_tokens(input_ids) * self.embed_scale
    x = x + table[position_ids + POSITION_OFFSET].astype(x.dtype)
    return self.dropout(x, deterministic=rngs is None, rngs=rngs)

  def logits(self, x):
    x = self.layer_norm(x)
    return self.embed_tokens.attend(x).astype(jnp.float32)

  def visual_kv(self, tokens, mask, rngs=None):
    """Per layer, (keys, values, mask) of visual tokens [batch, V, d_model] (mask [batch, V]) for
    the layer's visual adaptor (None for a layer without one); computed once per sentence."""
    return [None if layer.visual_adaptor is None else
            (*layer.visual_adaptor.keys_values(layer.self_attn,
                                               layer.self_attn_layer_norm(tokens), rngs), mask)
            for layer in self.layers]

  def __call__(self, input_ids, attention_mask=None, position_ids=None, *, visual=None,
               rngs=None):
    """Teacher-forced logits [batch, length, vocab], as HF's forward: causal attention over the
    valid (attention_mask 1) tokens, positions 0..length-1 unless position_ids are given.
    visual: (tokens [batch, V, d_model], mask [batch, V]) that adapted layers attend to."""
    length = input_ids.shape[1]
    if position_ids is None:
      position_ids = jnp.arange(length)[None]
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
    mask = causal if attention_mask is None else causal & (
        attention_mask[:, None, None, :] > 0)
    x = self.embed(input_ids, position_ids, rngs)
    per_layer = [None] * len(self.layers) if visual is None else self.visual_kv(*visual, rngs)
    for layer, layer_visual in zip(self.layers, per_layer):
      x, _ = call_layer(self.config.remat, layer, x, mask, None, None, rngs, None, None, None,
                        layer_visual)
    return self.logits(x)

  def init_cache(self, batch_size: int, max_length: int):
    """Zeroed self-attention cache: a KVCache of max_length positions per layer."""
    cfg = self.config
    heads = cfg.attention_heads
    return [KVCache.zeros(batch_size, max_length, heads, cfg.d_model // heads, cfg.dtype)
            for _ in self.layers]

  def decode(self, input_ids, position_ids, key_mask, cache, cache_index, cache_slots=None,
             visual_kv=None):
    """Logits [batch, length, vocab] of tokens written into `cache` at cache_index..; each
    attends to the cached positions that key_mask [batch, max_length] marks and that are not
    after it. cache_slots: as MBart.decode's (a beam search's). visual_kv: `visual_kv`'s, per
    sentence (consecutive rows of the batch may be beams of one sentence)."""
    length, max_length = input_ids.shape[1], cache[0].length
    query_positions = cache_index + jnp.arange(length)
    causal = jnp.arange(max_length)[None, :] <= query_positions[:, None]  # [length, max_length]
    mask = causal[None, None] & (key_mask[:, None, None, :] > 0)  # [batch, 1, length, max]
    x = self.embed(input_ids, position_ids)
    new_cache = []
    per_layer = visual_kv or [None] * len(self.layers)
    for layer, layer_cache, layer_visual in zip(self.layers, cache, per_layer):
      x, layer_cache = layer(x, mask, None, None, None, cache=layer_cache,
                             cache_index=cache_index, cache_slots=cache_slots,
                             visual=layer_visual)
      new_cache.append(layer_cache)
    return self.logits(x), new_cache
