"""Multi-head dot-product attention with separate projections (the BART/mBART layout)."""
import jax
import jax.numpy as jnp
from flax import nnx

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

  def project_kv(self, inputs):
    """Keys and values of `inputs` [batch, length, d_model], each [batch, length, heads, head_dim]."""
    return self._split_heads(self.k_proj(inputs)), self._split_heads(self.v_proj(inputs))

  def __call__(self, queries, keys, values, mask, *, rngs: nnx.Rngs | None = None):
    """Attends `queries` [batch, q_len, d_model] to projected keys/values [batch, kv_len, heads, head_dim].

    mask: bool, broadcastable to [batch, heads, q_len, kv_len]; True where attention is allowed.
    """
    q = self._split_heads(self.q_proj(queries)) * (self.head_dim ** -0.5)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, keys).astype(jnp.float32)  # [batch, heads, q, kv]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
    probs = self.dropout(probs, deterministic=rngs is None, rngs=rngs)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, values)  # [batch, q, heads, head_dim]
    return self.out_proj(out.reshape(*out.shape[:2], -1))
