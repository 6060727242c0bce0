"""Beam search compiled by XLA (`lax.while_loop` over a fixed-shape BeamState) and `generate`.

The search follows Hugging Face transformers' vectorised beam search step for step, so converted
models decode token-for-token like `model.generate(num_beams=K)`:
  * each step keeps the top 2K continuations of all K beams; the best K that did not just end
    stay live; those among the top K that ended with EOS (or hit the length limit) compete, with
    length-normalised scores, for the K finished slots;
  * `early_stopping=False` stops a sentence once its best live beam, normalised at the current
    length, cannot beat its worst finished one (HF's heuristic); True stops once K are finished;
  * normalisation: 'hf' divides the summed log-probability by len**length_penalty, 'gnmt' by
    ((5 + len) / 6)**length_penalty (Wu et al. 2016), len counting generated tokens with EOS.
Greedy decoding is beam size 1.
"""
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.models.layers.attention import KVCache

NEG_INF = -1.0e9  # HF's "very large negative" score for impossible/unfinished beams
# A search attends to a cache of this many positions, then of twice as many, and so on (then
# max_len), rather than to the whole cache from the first step: each length compiles the step
# once more (see attended_lengths).
FIRST_ATTENDED_LENGTH = 16


@flax.struct.dataclass
class BeamState:
  cur_len: jax.Array          # [] tokens in every sequence so far (start token included)
  live_seqs: jax.Array        # [batch, beams, max_len]
  live_scores: jax.Array      # [batch, beams] summed log-probabilities
  finished_seqs: jax.Array    # [batch, beams, max_len]
  finished_scores: jax.Array  # [batch, beams] length-normalised; NEG_INF for empty slots
  finished_flags: jax.Array   # [batch, beams] bool
  improvable: jax.Array       # [batch] bool: can live beams still beat the finished ones?
  cache: Any                  # model cache (KVCaches), batch*beams rows; never reordered
  cache_slots: jax.Array      # [batch, beams, max_len] which of its sentence's rows holds each
                              # beam's position t


def length_normalizer(length, alpha: float, style: str):
  if style == 'hf':
    return length ** alpha
  if style == 'gnmt':
    return ((5.0 + length) / 6.0) ** alpha
  raise ValueError(f'length_penalty_style={style!r}; expected "hf" or "gnmt".')


def _gather_beams(x, beam_indices):
  """x [batch, n, ...] -> [batch, k, ...] picking beam_indices [batch, k] along axis 1."""
  idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _flat(x):  # [batch, beams, ...] -> [batch * beams, ...]
  return x.reshape((-1,) + x.shape[2:])


def beam_search(tokens_to_logits: Callable, start_ids, cache, *, beam_size: int,
                max_new_tokens: int, eos_id: int, pad_id: int, length_penalty: float = 1.0,
                length_penalty_style: str = 'hf', early_stopping: bool = False,
                forced_eos_id: int | None = None):
  """Best sequences [batch, beams, 1 + max_new_tokens] (start token first, pad after EOS), scores.

  tokens_to_logits(tokens [batch*beams], cache, position, cache_slots [batch, beams, length])
  -> (logits [batch*beams, vocab], cache) consumes the last token of every live beam at
  `position` (0 = the start token), writing its state into its own row of `cache` at
  `position` (after the cache's prefix) and attending to the cache's `length` positions (after
  its prefix), masked after `position`. `cache` is a pytree of KVCaches of batch*beams rows and
  prefix + max_len positions (the prefix: a prompt's keys and values, the same in every beam's
  row, or nothing); the search passes it cut to the prefix and the first of
  `attended_lengths(max_len)`, and grows it to the next length when the search reaches it
  (attention over positions not yet written is work for nothing). The cache is never
  reordered when beams change parents (a copy of the whole cache per step, which dominated
  decoding time): beam i of sentence b reads its position t from row b*beams +
  cache_slots[b, i, t] instead. `forced_eos_id` forces EOS as the last possible token (HF's
  forced_eos_token_id). Sequences are sorted best first.
  """
  batch = start_ids.shape[0]
  max_len = 1 + max_new_tokens
  norm = partial(length_normalizer, alpha=length_penalty, style=length_penalty_style)
  seqs = jnp.full((batch, beam_size, max_len), pad_id, jnp.int32)
  seqs = seqs.at[:, :, 0].set(start_ids[:, None].astype(jnp.int32))
  # Only beam 0 is live at first, so the first step does not pick K copies of one token.
  live_scores = jnp.where(jnp.arange(beam_size) == 0, 0.0, NEG_INF)[None].repeat(batch, 0)
  own_slots = jnp.arange(beam_size, dtype=jnp.int32)
  state = BeamState(
      cur_len=jnp.array(1, jnp.int32), live_seqs=seqs, live_scores=live_scores,
      finished_seqs=seqs, finished_scores=jnp.full((batch, beam_size), NEG_INF),
      finished_flags=jnp.zeros((batch, beam_size), bool),
      improvable=jnp.ones((batch,), bool), cache=cache,
      cache_slots=jnp.broadcast_to(own_slots[None, :, None], (batch, beam_size, max_len)))
  num_candidates = 2 * beam_size

  def step(state: BeamState, attended: int) -> tuple[BeamState, jax.Array]:
    """One token per beam, attending to a cache of `attended` positions (after any prefix)."""
    tokens = _flat(state.live_seqs)[:, state.cur_len - 1]  # [batch*beams]
    logits, cache = tokens_to_logits(tokens, state.cache, state.cur_len - 1,
                                     state.cache_slots[:, :, :attended])
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [batch*beams, vocab]
    vocab = log_probs.shape[-1]
    at_last = state.cur_len + 1 >= max_len
    if forced_eos_id is not None:
      forced = jnp.where(jnp.arange(vocab) == forced_eos_id, 0.0, -jnp.inf)
      log_probs = jnp.where(at_last, forced[None], log_probs)
    scores = log_probs.reshape(batch, beam_size, vocab) + state.live_scores[:, :, None]
    top_scores, top_idx = jax.lax.top_k(scores.reshape(batch, -1), num_candidates)  # [batch, 2K]
    top_beams, top_tokens = top_idx // vocab, top_idx % vocab
    top_seqs = _gather_beams(state.live_seqs, top_beams)  # [batch, 2K, max_len]
    top_seqs = jax.lax.dynamic_update_slice_in_dim(
        top_seqs, top_tokens[:, :, None].astype(jnp.int32), state.cur_len, axis=2)
    ended = (top_tokens == eos_id) | at_last  # [batch, 2K]

    # Live beams for the next step: the best K candidates that did not end.
    live_candidates = top_scores + ended * NEG_INF
    _, keep = jax.lax.top_k(live_candidates, beam_size)  # [batch, K]
    live_seqs = _gather_beams(top_seqs, keep)
    live_scores = _gather_beams(live_candidates, keep)
    beam_origin = _gather_beams(top_beams, keep)  # [batch, K] parent beam of each new live beam

    # Finished beams: candidates of rank < K that ended, if this sentence can still improve.
    in_top_k = jnp.arange(num_candidates) < beam_size
    just_finished = ended & in_top_k[None] & state.improvable[:, None]
    if early_stopping:
      just_finished &= ~jnp.all(state.finished_flags, axis=1, keepdims=True)
    finished_candidates = jnp.where(just_finished, top_scores / norm(state.cur_len), NEG_INF)
    merged_scores = jnp.concatenate([state.finished_scores, finished_candidates], axis=1)
    _, best = jax.lax.top_k(merged_scores, beam_size)
    finished_seqs = _gather_beams(jnp.concatenate([state.finished_seqs, top_seqs], axis=1), best)
    finished_scores = _gather_beams(merged_scores, best)
    finished_flags = _gather_beams(
        jnp.concatenate([state.finished_flags, just_finished], axis=1), best)

    # A new live beam reads its parent's cached positions, and writes the next one in its own row.
    cache_slots = jax.lax.dynamic_update_slice_in_dim(
        _gather_beams(state.cache_slots, beam_origin),
        jnp.broadcast_to(own_slots[None, :, None], (batch, beam_size, 1)), state.cur_len, axis=2)

    cur_len = state.cur_len + 1
    best_live = live_scores[:, 0] / norm(cur_len - 1)
    worst_finished = jnp.where(finished_flags, jnp.min(finished_scores, axis=1, keepdims=True),
                               NEG_INF)
    improvable = state.improvable & jnp.any(best_live[:, None] > worst_finished, axis=1)
    new_state = BeamState(cur_len=cur_len, live_seqs=live_seqs, live_scores=live_scores,
                          finished_seqs=finished_seqs, finished_scores=finished_scores,
                          finished_flags=finished_flags, improvable=improvable,
                          cache=cache, cache_slots=cache_slots)
    return new_state, at_last

  def should_continue(carry):
    state, reached_max = carry
    open_beams = ~jnp.all(state.finished_flags) if early_stopping else True
    return jnp.any(state.improvable) & open_beams & ~reached_max

  lengths = attended_lengths(max_len)
  prefix = jax.tree.leaves(cache, is_leaf=_is_kv_cache)[0].length - max_len
  carry = (state, jnp.array(False))
  for attended in lengths:  # one loop per length, each until the search reaches it
    carry = (carry[0].replace(cache=_resized(carry[0].cache, prefix + attended)), carry[1])
    carry = jax.lax.while_loop(
        lambda carry, attended=attended: should_continue(carry) & (carry[0].cur_len <= attended),
        lambda carry, attended=attended: step(carry[0], attended), carry)
  state, _ = carry
  return state.finished_seqs, state.finished_scores


def attended_lengths(max_len: int) -> list[int]:
  """The cache lengths a search of max_len positions attends to, in turn: doubling from
  FIRST_ATTENDED_LENGTH, then max_len (a length within half the first one of max_len is
  skipped: a loop of so few steps is not worth its compilation)."""
  lengths = [FIRST_ATTENDED_LENGTH]
  while lengths[-1] < max_len:
    lengths.append(2 * lengths[-1])
  return [n for n in lengths if n + FIRST_ATTENDED_LENGTH // 2 <= max_len] + [max_len]


def _is_kv_cache(node) -> bool:
  return isinstance(node, KVCache)


def _resized(cache, length: int):
  """Every KVCache in `cache` cut, or zero-padded, to `length` positions."""
  return jax.tree.map(lambda c: c.resized(length), cache, is_leaf=_is_kv_cache)


def encoder_decoder_search(model, input_ids, attention_mask, *, inputs_embeds=None,
                           decoder_start_token_id: int, eos_token_id: int, pad_token_id: int,
                           num_beams: int, max_new_tokens: int, length_penalty: float,
                           length_penalty_style: str, early_stopping: bool,
                           forced_eos_token_id: int | None = None):
  """Encodes once, then beam-searches the decoder with a KV cache. Returns [batch, beams, len].

  num_beams=1 is greedy search (argmax until EOS or max_new_tokens).
  """
  if num_beams == 1:
    early_stopping = True  # one beam that finishes ends the search: greedy decoding, as HF does
  encoder_out = model.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds)
  batch = encoder_out.shape[0]
  # Keys/values of the source stay [batch, ...]: the beams of a sentence share them.
  cross_kv = model.cross_attention_kv(encoder_out)
  encoder_mask = jnp.repeat(attention_mask, num_beams, axis=0)  # [batch*beams, src_len]

  def tokens_to_logits(tokens, cache, position, cache_slots):
    logits, cache = model.decode(tokens[:, None], encoder_mask, cross_kv, cache=cache,
                                 cache_index=position, cache_slots=cache_slots)
    return logits[:, 0], cache

  start_ids = jnp.full((batch,), decoder_start_token_id, jnp.int32)
  sequences, _ = beam_search(
      tokens_to_logits, start_ids, model.init_cache(batch * num_beams, 1 + max_new_tokens),
      beam_size=num_beams, max_new_tokens=max_new_tokens, eos_id=eos_token_id, pad_id=pad_token_id,
      length_penalty=length_penalty, length_penalty_style=length_penalty_style,
      early_stopping=early_stopping, forced_eos_id=forced_eos_token_id)
  return sequences


def decoder_only_search(model, input_ids, attention_mask, *, eos_token_id: int,
                        pad_token_id: int, num_beams: int, max_new_tokens: int,
                        length_penalty: float, length_penalty_style: str, early_stopping: bool,
                        forced_eos_token_id: int | None = None, visual=None):
  """Continues left-padded prompts [batch, prompt_len] of a decoder-only model (XGLM) as HF's
  generate does: positions from the attention mask, the prompt's keys and values computed once
  (all but its last token, which starts the search). visual: (tokens [batch, V, d_model], mask
  [batch, V]) that the model's adapted layers attend to (Sign2GPT), their keys and values
  computed once per sentence. Returns [batch, beams, prompt_len + max_new_tokens]: prompt, then
  continuation (pad after EOS)."""
  if num_beams == 1:
    early_stopping = True
  batch, prompt_len = input_ids.shape
  prefix = prompt_len - 1
  positions = jnp.where(attention_mask > 0, jnp.cumsum(attention_mask, axis=1) - 1, 1)
  cache_len = prefix + 1 + max_new_tokens
  cache = model.init_cache(batch, cache_len)
  visual_kv = None if visual is None else model.visual_kv(*visual)
  prompt_keys = jnp.zeros((batch, cache_len), jnp.int32).at[:, :prefix].set(
      attention_mask[:, :prefix])
  if prefix:  # the prompt's keys and values, once per sentence, then copied to its beams
    _, cache = model.decode(input_ids[:, :prefix], positions[:, :prefix], prompt_keys, cache, 0,
                            visual_kv=visual_kv)
  cache = jax.tree.map(lambda c: jnp.repeat(c, num_beams, axis=0), cache)
  # Keys: the valid prompt tokens, then every searched position up to the current one.
  key_mask = jnp.repeat(prompt_keys.at[:, prefix:].set(1), num_beams, axis=0)
  last_position = jnp.repeat(positions[:, -1], num_beams)  # [batch*beams]
  prompt_slots = jnp.broadcast_to(jnp.arange(num_beams, dtype=jnp.int32)[None, :, None],
                                  (batch, num_beams, prefix))

  def tokens_to_logits(tokens, cache, position, cache_slots):
    logits, cache = model.decode(
        tokens[:, None], (last_position + position)[:, None],
        key_mask[:, :prefix + cache_slots.shape[2]], cache, prefix + position,
        cache_slots=jnp.concatenate([prompt_slots, cache_slots], axis=2), visual_kv=visual_kv)
    return logits[:, 0], cache

  sequences, _ = beam_search(
      tokens_to_logits, input_ids[:, -1], cache, beam_size=num_beams,
      max_new_tokens=max_new_tokens, eos_id=eos_token_id, pad_id=pad_token_id,
      length_penalty=length_penalty, length_penalty_style=length_penalty_style,
      early_stopping=early_stopping, forced_eos_id=forced_eos_token_id)
  prompts = jnp.broadcast_to(input_ids[:, None, :prefix], (batch, num_beams, prefix))
  return jnp.concatenate([prompts.astype(sequences.dtype), sequences], axis=2)


def is_decoder_only(model) -> bool:
  """Whether `model` is a decoder-only LM (no encoder to run first)."""
  return not hasattr(model, 'encode')


@partial(jax.jit, static_argnames=(
    'graphdef', 'decoder_start_token_id', 'eos_token_id', 'pad_token_id', 'num_beams',
    'max_new_tokens', 'length_penalty', 'length_penalty_style', 'early_stopping',
    'forced_eos_token_id'))
def _jitted_search(graphdef, state, input_ids, attention_mask, **options):
  # jax.jit on the split model: nnx.jit would walk the model's graph on every call (~0.4 s for
  # mBART-large), which generate() pays per batch.
  model = nnx.merge(graphdef, state)
  if is_decoder_only(model):
    options.pop('decoder_start_token_id')
    options.pop('inputs_embeds')
    return decoder_only_search(model, input_ids, attention_mask, **options)
  if options.pop('visual') is not None:
    raise ValueError('visual tokens are for decoder-only models with visual adaptors.')
  return encoder_decoder_search(model, input_ids, attention_mask, **options)


def generate(model, input_ids, attention_mask=None, *, num_beams: int = 4,
             max_new_tokens: int = 64, length_penalty: float = 1.0,
             length_penalty_style: str = 'hf', early_stopping: bool = False,
             decoder_start_token_id: int | None = None, eos_token_id: int | None = None,
             pad_token_id: int | None = None, forced_eos_token_id: int | None = None,
             inputs_embeds=None, visual=None) -> np.ndarray:
  """Like transformers' `generate`: the best sequence per input [batch, len].

  An encoder-decoder model (MBart) encodes input_ids [batch, src_len] (or inputs_embeds [batch,
  src_len, d_model] with attention_mask) and returns decoded sequences, start token first; a
  decoder-only model (XGLM) continues the left-padded prompts input_ids and returns prompt then
  continuation, attending to `visual` (tokens [batch, V, d_model], mask [batch, V]) in adapted
  layers (Sign2GPT). Token ids left as None come from `model.config`, as HF takes them from the
  model's (generation) config: the decoder starts from decoder_start_token_id, else
  bos_token_id, and forced_eos_token_id applies when the config sets it. Trailing all-padding
  columns are cropped, as HF does. num_beams=1 is greedy search.
  """
  cfg = model.config
  pick = lambda value, default: default if value is None else value
  decoder_start_token_id = pick(decoder_start_token_id, pick(
      getattr(cfg, 'decoder_start_token_id', None), cfg.bos_token_id))
  eos_token_id = pick(eos_token_id, cfg.eos_token_id)
  pad_token_id = pick(pad_token_id, cfg.pad_token_id)
  forced_eos_token_id = pick(forced_eos_token_id, getattr(cfg, 'forced_eos_token_id', None))
  if attention_mask is None:
    if input_ids is None:
      raise ValueError('generate(inputs_embeds=...) needs the attention_mask [batch, src_len].')
    attention_mask = (jnp.asarray(input_ids) != pad_token_id).astype(jnp.int32)
  sequences = _jitted_search(
      *nnx.split(model), None if input_ids is None else jnp.asarray(input_ids), jnp.asarray(attention_mask),
      inputs_embeds=inputs_embeds, visual=visual,
      decoder_start_token_id=int(decoder_start_token_id),
      eos_token_id=int(eos_token_id), pad_token_id=int(pad_token_id), num_beams=num_beams,
      max_new_tokens=max_new_tokens, length_penalty=float(length_penalty),
      length_penalty_style=length_penalty_style, early_stopping=bool(early_stopping),
      forced_eos_token_id=None if forced_eos_token_id is None else int(forced_eos_token_id))
  best = np.asarray(sequences[:, 0])
  used = np.flatnonzero((best != pad_token_id).any(axis=0))
  return best[:, :used[-1] + 1]
