"""Multi-head dot-product attention with separate projections (the BART/mBART layout)."""
import jax
import jax.numpy as jnp
from flax import nnx

from sltjax.models.layers import lora
from sltjax.models.layers.dense import dense


class MultiHeadAttention(nnx.Module):
  """q/k/v/out projections with biases; queries scaled by head_dim**-0.5 as in fairseq/HF."""

  def __init__(self, d_model: int, num_heads: int, dropout: float, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f'd_model={d_model} is not divisible by num_heads={num_heads}.')
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    make = lambda axes: dense(d_model, d_model, axes, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
    self.q_proj = make(('embed', 'heads'))
    self.k_proj = make(('embed', 'heads'))
    self.v_proj = make(('embed', 'heads'))
    self.out_proj = make(('heads', 'embed'))
    self.dropout = nnx.Dropout(dropout)

  def _split_heads(self, x):  # [batch, length, d_model] -> [batch, length, heads, head_dim]
    return x.reshape(*x.shape[:2], self.num_heads, self.head_dim)

  def project_kv(self, inputs, rngs: nnx.Rngs | None = None):
    """Keys and values of `inputs` [batch, length, d_model], each [batch, length, heads, head_dim]
    (`rngs`: dropout of LoRA adapters, when the projections have them)."""
    return (self._split_heads(lora.call(self.k_proj, inputs, rngs)),
            self._split_heads(lora.call(self.v_proj, inputs, rngs)))

  def __call__(self, queries, keys, values, mask, *, kv_slots=None, added_heads=None,
               rngs: nnx.Rngs | None = None):
    """Attends `queries` [batch, q_len, d_model] to projected keys/values [kv_batch, kv_len, heads,
    head_dim]; returns [batch, q_len, d_model].

    mask: bool, broadcastable to [batch, heads, q_len, kv_len]; True where attention is allowed
    (through `kv_slots`: [batch or 1, 1, 1, kv_len]).
    For one query per row (a decoding step), consecutive groups of batch // kv_batch rows (the
    beams of one sentence) may share one row of keys/values, which is then read once per group.
    With `kv_slots` [groups, group, kv_len] (a beam search's cache, never reordered: see
    decoding.beam_search), query row g*group + i reads key position t from keys/values row
    g*group + kv_slots[g, i, t]. `added_heads` [batch, q_len, heads, head_dim] is added to the
    heads' outputs before the output projection (Sign2GPT's gated cross-attention).
    """
    q = self._split_heads(lora.call(self.q_proj, queries, rngs)) * (self.head_dim ** -0.5)
    if q.shape[1] == 1:
      out = (self._attend_one_query(q, keys, values, mask, rngs) if kv_slots is None else
             self._attend_through_slots(q, keys, values, mask, kv_slots, rngs))
    else:
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, keys).astype(jnp.float32)
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(logits, axis=-1).astype(values.dtype)  # [batch, heads, q, kv]
      probs = self.dropout(probs, deterministic=rngs is None, rngs=rngs)
      out = jnp.einsum('bhqk,bkhd->bqhd', probs, values)  # [batch, q, heads, head_dim]
    if added_heads is not None:
      out = out + added_heads.astype(out.dtype)
    return lora.call(self.out_proj, out.reshape(*out.shape[:2], -1), rngs)

  def _attend_through_slots(self, q, keys, values, mask, kv_slots, rngs):
    """A decoding step over a beam search's cache, q [batch, 1, heads, head_dim] ->
    [batch, 1, heads, head_dim]. Each query is scored against every row of its group and the
    row its key position lives in is kept (a one-hot sum over the group): the cache is read
    once per group, with no gather, so XLA updates it in place (a gather from it made XLA copy
    the whole cache every step)."""
    groups, group, kv_len = kv_slots.shape
    heads, head_dim = q.shape[2:]
    q = q.reshape(groups, group, 1, 1, heads, head_dim)  # [groups, i, 1, 1, heads, d]
    keys = keys.reshape(groups, 1, group, kv_len, heads, head_dim)  # [groups, 1, j, kv, heads, d]
    values = values.reshape(groups, 1, group, kv_len, heads, head_dim)
    owner = (kv_slots[:, :, None, :] == jnp.arange(group)[:, None])[..., None]  # [g, i, j, kv, 1]
    # Broadcast multiply-reduces are the fastest form on CPU, but XLA's CPU (YNNPACK) reduce
    # fusion miscompiles them for a single group (jax 0.10.2): einsums there.
    if groups == 1:
      scores = jnp.einsum('gaxyhd,gbjkhd->gajkh', q, keys)  # [groups, i, j, kv, heads]
    else:
      scores = jnp.sum(q * keys, axis=-1)
    logits = jnp.sum(jnp.where(owner, scores.astype(jnp.float32), 0.0), axis=2)  # [g, i, kv, h]
    mask = jnp.broadcast_to(mask, (groups * group, 1, 1, kv_len)).reshape(groups, group, kv_len, 1)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=2).astype(values.dtype)
    probs = self.dropout(probs, deterministic=rngs is None, rngs=rngs)
    weights = jnp.where(owner, probs[:, :, None], 0.0)  # [groups, i, j, kv, heads]
    if groups == 1:
      out = jnp.einsum('gijkh,gbjkhd->gihd', weights, values)  # [groups, i, heads, d]
    else:
      out = jnp.sum(weights[..., None] * values, axis=(2, 3))
    return out.reshape(groups * group, 1, heads, head_dim)

  def _attend_one_query(self, q, keys, values, mask, rngs):
    """A decoding step, q [batch, 1, heads, head_dim] -> [batch, 1, heads, head_dim], as broadcast
    multiply-reduces over keys/values laid out [(kv_batch, group,) kv, heads]: XLA fuses each
    into one pass over the keys or values, where its CPU batched dot is several times slower
    for single rows."""
    batch, kv_batch, kv_len = q.shape[0], keys.shape[0], keys.shape[1]
    if kv_batch in (1, batch):  # keys/values per row, or one row broadcast to all
      logits = jnp.sum(q * keys, axis=-1)  # [batch, kv, heads]
      mask = mask[:, :, 0, :].transpose(0, 2, 1)  # [batch|1, kv, heads|1]
      kv_axis = 1
    else:  # groups of rows share keys/values
      grouped = q.reshape(kv_batch, batch // kv_batch, 1, *q.shape[2:])
      logits = jnp.sum(grouped * keys[:, None], axis=-1)  # [kv_batch, group, kv, heads]
      mask = jnp.broadcast_to(mask, (batch, 1, 1, kv_len)).reshape(*logits.shape[:3], 1)
      values = values[:, None]
      kv_axis = 2
    logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=kv_axis).astype(values.dtype)
    probs = self.dropout(probs, deterministic=rngs is None, rngs=rngs)
    out = jnp.sum(probs[..., None] * values, axis=kv_axis)  # [(kv_batch, group|) batch, heads, d]
    return out.reshape(batch, 1, *out.shape[-2:])
