"""Multi-head dot-product attention with separate projections (the BART/mBART layout), and the
key/value cache a decoder writes while it decodes."""
import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from sltjax.models.layers import lora
from sltjax.models.layers.dense import dense


@flax.struct.dataclass
class KVCache:
  """A decoder layer's self-attention keys and values, written a position at a time.

  keys [batch, heads, head_dim, length], values [batch, length, heads, head_dim]: with positions
  the minor axis of the keys, a decoding step's scores (a reduction over head_dim) run along
  contiguous positions, which XLA:CPU vectorises 1.2-3x faster than the [length, heads,
  head_dim] layout (3x at 16 heads: mBART-large). Only MultiHeadAttention.attend_to_cache
  reads it.
  """
  keys: jax.Array
  values: jax.Array

  @classmethod
  def zeros(cls, batch: int, length: int, heads: int, head_dim: int, dtype) -> 'KVCache':
    return cls(keys=jnp.zeros((batch, heads, head_dim, length), dtype),
               values=jnp.zeros((batch, length, heads, head_dim), dtype))

  @property
  def length(self) -> int:
    return self.values.shape[1]

  def written(self, keys, values, index) -> 'KVCache':
    """This cache with keys/values [batch, new, heads, head_dim] written at positions index.."""
    keys = keys.transpose(0, 2, 3, 1).astype(self.keys.dtype)
    return KVCache(
        keys=jax.lax.dynamic_update_slice_in_dim(self.keys, keys, index, axis=3),
        values=jax.lax.dynamic_update_slice_in_dim(
            self.values, values.astype(self.values.dtype), index, axis=1))

  def resized(self, length: int) -> 'KVCache':
    """The first `length` positions, or all of them followed by zero positions up to `length`."""
    def resize(x, axis):
      if length <= x.shape[axis]:
        return jax.lax.slice_in_dim(x, 0, length, axis=axis)
      padding = [(0, 0)] * x.ndim
      padding[axis] = (0, length - x.shape[axis])
      return jnp.pad(x, padding)
    return KVCache(keys=resize(self.keys, 3), values=resize(self.values, 1))


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

  def __call__(self, queries, keys, values, mask, *, added_heads=None,
               rngs: nnx.Rngs | None = None):
    """Attends `queries` [batch, q_len, d_model] to projected keys/values [kv_batch, kv_len, heads,
    head_dim]; returns [batch, q_len, d_model].

    mask: bool, broadcastable to [batch, heads, q_len, kv_len]; True where attention is allowed.
    For one query per row (a decoding step), consecutive groups of batch // kv_batch rows (the
    beams of one sentence) may share one row of keys/values, which is then read once per group.
    `added_heads` [batch, q_len, heads, head_dim] is added to the heads' outputs before the
    output projection (Sign2GPT's gated cross-attention).
    """
    q = self._queries(queries, rngs)
    if q.shape[1] == 1:
      out = self._attend_one_query(q, keys, values, mask, rngs)
    else:
      out = self._attend(jnp.einsum('bqhd,bkhd->bhqk', q, keys), values, mask, rngs)
    return self._output(out, added_heads, rngs)

  def attend_to_cache(self, queries, cache: KVCache, mask, *, kv_slots=None, added_heads=None,
                      rngs: nnx.Rngs | None = None):
    """Attends `queries` [batch, q_len, d_model] to a decoder's `cache` (batch rows); returns
    [batch, q_len, d_model]. mask: as __call__'s, over the cache's positions.

    With `kv_slots` [groups, group, length] (a beam search's cache, never reordered: see
    decoding.beam_search), the query of row g*group + i, one per row, reads position t from
    cache row g*group + kv_slots[g, i, t]; without, each row reads its own. `added_heads`: as
    __call__'s.
    """
    q = self._queries(queries, rngs)
    batch, q_len = q.shape[:2]
    if q_len > 1:  # a prompt written into the cache at once
      out = self._attend(jnp.einsum('bqhd,bhdk->bhqk', q, cache.keys), cache.values, mask, rngs)
    else:
      if kv_slots is None:
        kv_slots = jnp.zeros((batch, 1, cache.length), jnp.int32)
      out = self._attend_through_slots(q, cache, mask, kv_slots, rngs)
    return self._output(out, added_heads, rngs)

  def _queries(self, queries, rngs):  # [batch, q_len, d_model] -> scaled [batch, q_len, heads, d]
    return self._split_heads(lora.call(self.q_proj, queries, rngs)) * (self.head_dim ** -0.5)

  def _output(self, out, added_heads, rngs):  # [batch, q_len, heads, d] -> [batch, q_len, d_model]
    if added_heads is not None:
      out = out + added_heads.astype(out.dtype)
    return lora.call(self.out_proj, out.reshape(*out.shape[:2], -1), rngs)

  def _attend(self, logits, values, mask, rngs):
    """Softmax over logits [batch, heads, q_len, kv_len] (masked), then the weighted sum of
    values [batch, kv_len, heads, head_dim] -> [batch, q_len, heads, head_dim]."""
    logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
    probs = self.dropout(probs, deterministic=rngs is None, rngs=rngs)
    return jnp.einsum('bhqk,bkhd->bqhd', probs, values)

  def _attend_through_slots(self, q, cache, mask, kv_slots, rngs):
    """A decoding step over a beam search's cache, q [batch, 1, heads, head_dim] ->
    [batch, 1, heads, head_dim]. Each query is scored against every row of its group and the
    row its key position lives in is kept (a one-hot sum over the group): the cache is read
    once per group, with no gather, so XLA updates it in place (a gather from it made XLA copy
    the whole cache every step)."""
    groups, group, kv_len = kv_slots.shape
    heads, head_dim = q.shape[2:]
    q = q.reshape(groups, group, 1, heads, head_dim, 1)  # [groups, i, 1, heads, d, 1]
    keys = cache.keys.reshape(groups, 1, group, heads, head_dim, kv_len)  # [g, 1, j, h, d, kv]
    values = cache.values.reshape(groups, 1, group, kv_len, heads, head_dim)
    owner = (kv_slots[:, :, None, :] == jnp.arange(group)[:, None])[:, :, :, None]  # [g,i,j,1,kv]
    # Broadcast multiply-reduces: the fastest form on CPU. (In the cache's earlier [length, heads,
    # head_dim] key layout, XLA's CPU reduce fusion miscompiled them for a single group; the
    # test of this function covers one group and several.)
    scores = jnp.sum(q * keys, axis=4)  # [groups, i, j, heads, kv]
    logits = jnp.sum(jnp.where(owner, scores.astype(jnp.float32), 0.0), axis=2)  # [g, i, h, kv]
    mask = jnp.broadcast_to(mask, (groups * group, 1, 1, kv_len)).reshape(groups, group, 1, kv_len)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
    probs = self.dropout(probs, deterministic=rngs is None, rngs=rngs)
    weights = jnp.where(owner, probs[:, :, None], 0.0).swapaxes(3, 4)  # [groups, i, j, kv, heads]
    out = jnp.sum(weights[..., None] * values, axis=(2, 3))  # [groups, i, heads, head_dim]
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
