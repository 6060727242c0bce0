"""Linear, embedding and norm constructors that attach logical axis names to their parameters;
linear kernels and embedding tables are gathered over FSDP where they are used."""
import dataclasses

import jax.numpy as jnp
from flax import nnx
from jax import lax

from sltjax import sharding

DEFAULT_INIT_STD = 0.02  # BART/mBART's init_std


@dataclasses.dataclass(frozen=True)
class GatheredDot:
  """An nnx.Linear's dot_general whose kernel (logical `kernel_axes`) is gathered over fsdp
  where it is used (sharding.fsdp_gathered); compares by value, so equal layers stay equal."""
  kernel_axes: tuple[str | None, ...]

  def __call__(self, inputs, kernel, *args, **kwargs):
    return lax.dot_general(inputs, sharding.fsdp_gathered(kernel, self.kernel_axes), *args,
                           **kwargs)


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *, dtype,
          param_dtype, rngs: nnx.Rngs, init_std: float = DEFAULT_INIT_STD, kernel_init=None,
          use_bias: bool = True) -> nnx.Linear:
  """nnx.Linear with a kernel [in, out] named `axes` (N(0, init_std) unless `kernel_init`) and a
  zero bias named axes[1]; the kernel is FSDP-gathered where it is used."""
  kernel_init = kernel_init or nnx.initializers.normal(init_std)
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      rngs=rngs, dot_general=GatheredDot(tuple(axes)),
      kernel_init=nnx.with_partitioning(kernel_init, axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)))


class Embedding(nnx.Embed):
  """nnx.Embed whose table is FSDP-gathered where it is used: the lookup and the tied logits."""

  def __init__(self, num_embeddings: int, features: int, axes: tuple[str, str], *, dtype,
               param_dtype, rngs: nnx.Rngs, init_std: float):
    super().__init__(num_embeddings, features, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                     embedding_init=nnx.with_partitioning(nnx.initializers.normal(init_std),
                                                          axes))
    self.axes = tuple(axes)

  def __call__(self, ids):
    """ids [...] -> [..., features]."""
    (table,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
    return jnp.take(sharding.fsdp_gathered(table, self.axes), ids, axis=0)

  def attend(self, query):
    """query [..., features] -> [..., num_embeddings]: inner products with every row."""
    query, table = self.promote_dtype((query, self.embedding[...]), dtype=self.dtype)
    return jnp.dot(query, sharding.fsdp_gathered(table, self.axes).T)


def embedding(num_embeddings: int, features: int, axes: tuple[str, str], *, dtype, param_dtype,
              rngs: nnx.Rngs, init_std: float = DEFAULT_INIT_STD) -> Embedding:
  return Embedding(num_embeddings, features, axes, dtype=dtype, param_dtype=param_dtype,
                   rngs=rngs, init_std=init_std)


def layer_norm(features: int, *, dtype, param_dtype, rngs: nnx.Rngs,
               epsilon: float = 1e-5) -> nnx.LayerNorm:
  return nnx.LayerNorm(features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       use_fast_variance=False,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones, ('norm',)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, ('norm',)))


class Buffer(nnx.Variable):
  """A non-trainable model constant that is still saved and converted (e.g. final_logits_bias)."""
