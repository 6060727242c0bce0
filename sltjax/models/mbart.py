"""The mBART-shaped encoder-decoder (pre-LN transformer) in Flax NNX.

Mirrors Hugging Face's MBartForConditionalGeneration so that mBART-large-cc25 converts into it
parameter for parameter, and the same class, smaller, trains from scratch:
learned positions with an offset of 2, `layernorm_embedding`, optional sqrt(d) embedding scaling,
pre-LN layers with a final LayerNorm, exact GELU, tied input/output embeddings plus a
non-trainable `final_logits_bias`. The decoder runs on full sequences (teacher forcing) or one step
at a time from a functional KV cache (beam search).
"""
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sltjax.losses import mean_cross_entropy
from sltjax.models.layers.attention import KVCache, MultiHeadAttention
from sltjax.models.layers.dense import Buffer, dense, embedding, layer_norm

POSITION_OFFSET = 2  # mBART's learned positions start at index 2 (fairseq legacy).
# What the backward pass keeps of a layer's activations: 'full' recomputes everything, 'dots'
# keeps the matmul outputs and recomputes the cheap elementwise work.
REMAT_POLICIES = {'full': None, 'dots': jax.checkpoint_policies.dots_saveable}


def call_layer(remat: str, layer, *args):
  """layer(*args), rematerialised in the backward pass as `remat` says."""
  if remat == 'none':
    return layer(*args)
  if remat not in REMAT_POLICIES:
    raise ValueError(f'remat={remat!r}; expected "none", "full" or "dots".')
  return nnx.remat(lambda module, *a: module(*a), policy=REMAT_POLICIES[remat])(layer, *args)


def config_from_dict(cls, values: dict[str, Any]):
  """A config dataclass `cls` from a dict (config.model or an HF config.json), ignoring the keys
  it does not have."""
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in values.items() if k in names})


@dataclasses.dataclass(frozen=True)
class MBartConfig:
  """Architecture hyperparameters; the defaults are mBART-large-cc25's (vocab_size aside)."""
  vocab_size: int
  d_model: int = 1024
  encoder_layers: int = 12
  decoder_layers: int = 12
  encoder_attention_heads: int = 16
  decoder_attention_heads: int = 16
  encoder_ffn_dim: int = 4096
  decoder_ffn_dim: int = 4096
  max_position_embeddings: int = 1024
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  scale_embedding: bool = True
  pad_token_id: int = 1
  # Generation defaults, as HF's config/generation_config give them (decoding.generate uses them).
  bos_token_id: int = 0
  eos_token_id: int = 2
  decoder_start_token_id: int | None = None  # None: start from bos_token_id, as HF does
  forced_eos_token_id: int | None = None
  dtype: str = 'float32'  # compute dtype
  param_dtype: str = 'float32'
  remat: str = 'none'  # activation rematerialisation per layer: 'none' | 'full' | 'dots'

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'MBartConfig':
    return config_from_dict(cls, values)


def _ffn_block(fc1, fc2, activation_dropout, x, rngs):
  return fc2(activation_dropout(jax.nn.gelu(fc1(x), approximate=False),
                                deterministic=rngs is None, rngs=rngs))


class EncoderLayer(nnx.Module):
  """Pre-LN self-attention and FFN."""

  def __init__(self, cfg: MBartConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.self_attn = MultiHeadAttention(cfg.d_model, cfg.encoder_attention_heads,
                                        cfg.attention_dropout, **kw)
    self.self_attn_layer_norm = layer_norm(cfg.d_model, **kw)
    self.fc1 = dense(cfg.d_model, cfg.encoder_ffn_dim, ('embed', 'mlp'), **kw)
    self.fc2 = dense(cfg.encoder_ffn_dim, cfg.d_model, ('mlp', 'embed'), **kw)
    self.final_layer_norm = layer_norm(cfg.d_model, **kw)
    self.dropout = nnx.Dropout(cfg.dropout)
    self.activation_dropout = nnx.Dropout(cfg.activation_dropout)

  def __call__(self, x, mask, rngs):  # x: [batch, src_len, d_model]; mask: [batch, 1, 1, src_len]
    x = x + self.dropout(self.attend_to_self(x, mask, rngs), deterministic=rngs is None,
                         rngs=rngs)
    return self.feed_forward(x, rngs)

  def attend_to_self(self, x, mask, rngs):
    """The self-attention branch (before dropout and the residual), [batch, len, d_model]."""
    h = self.self_attn_layer_norm(x)
    return self.self_attn(h, *self.self_attn.project_kv(h), mask, rngs=rngs)

  def feed_forward(self, x, rngs):
    """x plus the FFN branch, [batch, len, d_model]."""
    h = _ffn_block(self.fc1, self.fc2, self.activation_dropout, self.final_layer_norm(x), rngs)
    return x + self.dropout(h, deterministic=rngs is None, rngs=rngs)


class DecoderLayer(nnx.Module):
  """Pre-LN self-attention (causal, cached when decoding), cross-attention to an encoder (left
  out with cross_attention=False: a decoder-only LM such as XGLM), and the FFN."""

  def __init__(self, cfg: MBartConfig, *, cross_attention: bool = True, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.self_attn = MultiHeadAttention(cfg.d_model, cfg.decoder_attention_heads,
                                        cfg.attention_dropout, **kw)
    self.self_attn_layer_norm = layer_norm(cfg.d_model, **kw)
    self.encoder_attn = (MultiHeadAttention(cfg.d_model, cfg.decoder_attention_heads,
                                            cfg.attention_dropout, **kw)
                         if cross_attention else None)
    self.encoder_attn_layer_norm = layer_norm(cfg.d_model, **kw) if cross_attention else None
    # Set by a system that attends to another modality inside self-attention (Sign2GPT).
    self.visual_adaptor = nnx.data(None)
    self.fc1 = dense(cfg.d_model, cfg.decoder_ffn_dim, ('embed', 'mlp'), **kw)
    self.fc2 = dense(cfg.decoder_ffn_dim, cfg.d_model, ('mlp', 'embed'), **kw)
    self.final_layer_norm = layer_norm(cfg.d_model, **kw)
    self.dropout = nnx.Dropout(cfg.dropout)
    self.activation_dropout = nnx.Dropout(cfg.activation_dropout)

  def __call__(self, x, self_mask, cross_kv, cross_mask, rngs, cache=None, cache_index=None,
               cache_slots=None, visual=None):
    """One decoder layer.

    x: [batch, tgt_len, d_model]; self_mask: [1 or batch, 1, tgt_len, kv_len]; cross_kv: encoder
    keys and values [batch, src_len, heads, head_dim] (None without cross-attention); cross_mask:
    [batch, 1, 1, src_len].
    With `cache` (a KVCache of max_len positions) the new keys/values are written at
    `cache_index` and attention runs over the whole cache (through `cache_slots` [sentences,
    beams, max_len] in a beam search: see MultiHeadAttention.attend_to_cache). `visual`: this
    layer's (keys, values, mask) of another modality for `visual_adaptor`, whose per-head output
    joins self-attention's. Returns (x, updated cache or None).
    """
    drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)
    h = self.self_attn_layer_norm(x)
    k, v = self.self_attn.project_kv(h, rngs)
    added = (None if visual is None or self.visual_adaptor is None else
             self.visual_adaptor(h, self.self_attn, visual, rngs))
    if cache is None:
      h = self.self_attn(h, k, v, self_mask, added_heads=added, rngs=rngs)
    else:
      cache = cache.written(k, v, cache_index)
      h = self.self_attn.attend_to_cache(h, cache, self_mask, kv_slots=cache_slots,
                                         added_heads=added, rngs=rngs)
    x = x + drop(h)
    if self.encoder_attn is not None:
      h = self.encoder_attn(self.encoder_attn_layer_norm(x), *cross_kv, cross_mask, rngs=rngs)
      x = x + drop(h)
    h = _ffn_block(self.fc1, self.fc2, self.activation_dropout, self.final_layer_norm(x), rngs)
    return x + drop(h), cache


class DecoderParts(NamedTuple):
  """What a decoder pass runs over MBart's shared token embeddings: MBart's own decoder, or any
  module with these attributes (IP-SLT's refinement decoder)."""
  embed_positions: nnx.Embed
  layernorm_embedding: nnx.LayerNorm
  layers: nnx.List
  layer_norm: nnx.LayerNorm


class MBart(nnx.Module):
  """Encoder-decoder with tied embeddings. Logits are float32 [batch, tgt_len, vocab]."""

  def __init__(self, cfg: MBartConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    num_positions = cfg.max_position_embeddings + POSITION_OFFSET
    self.shared = embedding(cfg.vocab_size, cfg.d_model, ('vocab', 'embed'), **kw)
    self.encoder_embed_positions = embedding(num_positions, cfg.d_model, ('positions', 'embed'), **kw)
    self.encoder_layernorm_embedding = layer_norm(cfg.d_model, **kw)
    self.encoder_layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.encoder_layers)])
    self.encoder_layer_norm = layer_norm(cfg.d_model, **kw)
    self.decoder_embed_positions = embedding(num_positions, cfg.d_model, ('positions', 'embed'), **kw)
    self.decoder_layernorm_embedding = layer_norm(cfg.d_model, **kw)
    self.decoder_layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.decoder_layers)])
    self.decoder_layer_norm = layer_norm(cfg.d_model, **kw)
    self.final_logits_bias = Buffer(jnp.zeros((cfg.vocab_size,), cfg.param_dtype),
                                    out_sharding=('vocab',))
    self.dropout = nnx.Dropout(cfg.dropout)
    self.embed_scale = cfg.d_model ** 0.5 if cfg.scale_embedding else 1.0

  def embed_tokens(self, ids):  # [batch, len] -> [batch, len, d_model], scaled as mBART does
    return self.shared(ids) * self.embed_scale

  def embed_source(self, input_ids=None, *, inputs_embeds=None, rngs=None):
    """What the encoder layers read, [batch, src_len, d_model]: token embeddings of `input_ids`
    or `inputs_embeds` (used as given, no scaling, exactly like HF's), plus learned positions,
    then layernorm_embedding and dropout."""
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError('encode() takes exactly one of input_ids and inputs_embeds.')
    x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    positions = jnp.arange(x.shape[1]) + POSITION_OFFSET
    x = self.encoder_layernorm_embedding(x + self.encoder_embed_positions(positions)[None])
    return self.dropout(x, deterministic=rngs is None, rngs=rngs)

  def encode_embedded(self, x, attention_mask, rngs=None):
    """The encoder layers and final LayerNorm over `embed_source`'s output [batch, src_len,
    d_model]; attention_mask [batch, src_len], 1 for real positions."""
    mask = attention_mask[:, None, None, :].astype(bool)  # [batch, 1, 1, src_len]
    for layer in self.encoder_layers:
      x = call_layer(self.config.remat, layer, x, mask, rngs)
    return self.encoder_layer_norm(x)

  def encode(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, rngs=None):
    """Encoder states [batch, src_len, d_model] from token ids or from `inputs_embeds`
    [batch, src_len, d_model]; attention_mask: [batch, src_len], 1 for real positions."""
    return self.encode_embedded(self.embed_source(input_ids, inputs_embeds=inputs_embeds,
                                                  rngs=rngs), attention_mask, rngs)

  def decoder_parts(self) -> DecoderParts:
    """The decoder that `decode` runs by default (the one inference uses)."""
    return DecoderParts(self.decoder_embed_positions, self.decoder_layernorm_embedding,
                        self.decoder_layers, self.decoder_layer_norm)

  def cross_attention_kv(self, encoder_out, decoder: DecoderParts | None = None):
    """Per decoder layer, the encoder keys and values (computed once per source for decoding)."""
    decoder = self.decoder_parts() if decoder is None else decoder
    return [layer.encoder_attn.project_kv(encoder_out) for layer in decoder.layers]

  def init_cache(self, batch_size: int, max_length: int):
    """Zeroed self-attention cache: a KVCache of max_length positions per decoder layer."""
    cfg = self.config
    heads = cfg.decoder_attention_heads
    return [KVCache.zeros(batch_size, max_length, heads, cfg.d_model // heads, cfg.dtype)
            for _ in self.decoder_layers]

  def decode(self, decoder_input_ids, encoder_mask, cross_kv, *, cache=None, cache_index=0,
             cache_slots=None, rngs=None, decoder: DecoderParts | None = None):
    """Decoder logits [batch, tgt_len, vocab] (float32) and the updated cache.

    decoder_input_ids: [batch, tgt_len]; encoder_mask: [batch, src_len]; cross_kv from
    `cross_attention_kv`, per source sentence: with one token per row (a decoding step) its batch
    may be batch // beams, consecutive rows then being beams of one sentence. Without a cache the decoder is causal over `decoder_input_ids`; with one,
    the tokens sit at positions cache_index.. and attend to everything cached so far; a beam
    search passes cache_slots [sentences, beams, max_length]: position t of beam i of sentence s
    is in cache row s*beams + cache_slots[s, i, t]. `decoder`: which decoder runs (default
    `decoder_parts()`; cross_kv must come from the same one).
    """
    decoder = self.decoder_parts() if decoder is None else decoder
    tgt_len = decoder_input_ids.shape[1]
    query_positions = cache_index + jnp.arange(tgt_len)  # [tgt_len]
    key_positions = query_positions if cache is None else jnp.arange(cache[0].length)
    self_mask = (key_positions[None, :] <= query_positions[:, None])[None, None]
    x = self.embed_tokens(decoder_input_ids)
    x = x + decoder.embed_positions(query_positions + POSITION_OFFSET)[None]
    x = self.dropout(decoder.layernorm_embedding(x), deterministic=rngs is None, rngs=rngs)
    cross_mask = encoder_mask[:, None, None, :].astype(bool)
    new_cache = []
    for i, layer in enumerate(decoder.layers):
      if cache is None:  # teacher forcing (training): the activations worth rematerialising
        x, layer_cache = call_layer(self.config.remat, layer, x, self_mask, cross_kv[i],
                                     cross_mask, rngs)
      else:
        x, layer_cache = layer(x, self_mask, cross_kv[i], cross_mask, rngs, cache=cache[i],
                               cache_index=cache_index, cache_slots=cache_slots)
      new_cache.append(layer_cache)
    x = decoder.layer_norm(x)
    logits = self.shared.attend(x).astype(jnp.float32) + self.final_logits_bias[...]
    return logits, (None if cache is None else new_cache)

  def __call__(self, input_ids, attention_mask, decoder_input_ids, *, inputs_embeds=None,
               rngs=None):
    """Teacher-forced logits [batch, tgt_len, vocab], like HF's forward(...).logits."""
    encoder_out = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, rngs=rngs)
    logits, _ = self.decode(decoder_input_ids, attention_mask, self.cross_attention_kv(encoder_out),
                            rngs=rngs)
    return logits

  def translation_loss(self, attention_mask, decoder_input_ids, labels, label_weights, *,
                       input_ids=None, inputs_embeds=None, label_smoothing: float,
                       per: str = 'token', rngs=None):
    """(label-smoothed cross entropy per target token, or per sentence with per='sentence' (as
    losses.mean_cross_entropy), {'ce', 'tokens'}) of the teacher-forced translation of a source
    (token ids or `inputs_embeds`, as `encode` takes), labels and label_weights [batch, tgt_len].
    The training objective of every system that translates with this network (IP-SLT's
    refinement extends it)."""
    logits = self(input_ids, attention_mask, decoder_input_ids, inputs_embeds=inputs_embeds,
                  rngs=rngs)
    ce, tokens = mean_cross_entropy(logits, labels, label_weights, label_smoothing, per=per)
    return ce, {'ce': ce, 'tokens': tokens}
