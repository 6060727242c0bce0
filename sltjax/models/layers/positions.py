"""Fixed position encodings: sinusoidal tables added to the inputs, rotary embeddings of queries
and keys."""
import math

import jax.numpy as jnp


def sinusoidal_positions(length: int, dim: int):
  """[length, dim] sin/cos position encodings (sin on even, cos on odd features)."""
  position = jnp.arange(length, dtype=jnp.float32)[:, None]
  frequency = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * (-math.log(10000.0) / dim))
  table = jnp.zeros((length, dim), jnp.float32)
  table = table.at[:, 0::2].set(jnp.sin(position * frequency))
  return table.at[:, 1::2].set(jnp.cos(position * frequency))


def rotate_half(x):
  """[..., d] -> [-x2, x1] of its halves x1, x2 (GPT-NeoX's rotary layout)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x, base: float = 10000.0):
  """Rotary position embedding (RoFormer) of x [batch, length, heads, head_dim] at positions
  0..length-1: x * cos + rotate_half(x) * sin, frequencies base^(-2i / head_dim) repeated over
  the two halves. Computed in float32."""
  length, head_dim = x.shape[1], x.shape[-1]
  inverse = 1.0 / base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inverse[None]  # [length, d/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # [1, length, 1, d]
  x32 = x.astype(jnp.float32)
  return (x32 * jnp.cos(angles) + rotate_half(x32) * jnp.sin(angles)).astype(x.dtype)
