"""Linear, embedding and norm constructors that attach logical axis names to their parameters."""
from flax import nnx

DEFAULT_INIT_STD = 0.02  # BART/mBART's init_std


def dense(in_features: int, out_features: int, axes: tuple[str, str], *, dtype, param_dtype,
          rngs: nnx.Rngs, init_std: float = DEFAULT_INIT_STD) -> nnx.Linear:
  """nnx.Linear with a N(0, init_std) kernel named `axes` ([in, out]) and a zero bias named axes[1]."""
  return nnx.Linear(
      in_features, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
      kernel_init=nnx.with_partitioning(nnx.initializers.normal(init_std), axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)))


def embedding(num_embeddings: int, features: int, axes: tuple[str, str], *, dtype, param_dtype,
              rngs: nnx.Rngs, init_std: float = DEFAULT_INIT_STD) -> nnx.Embed:
  return nnx.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                   embedding_init=nnx.with_partitioning(nnx.initializers.normal(init_std), axes))


def layer_norm(features: int, *, dtype, param_dtype, rngs: nnx.Rngs,
               epsilon: float = 1e-5) -> nnx.LayerNorm:
  return nnx.LayerNorm(features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       use_fast_variance=False,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones, ('norm',)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, ('norm',)))


class Buffer(nnx.Variable):
  """A non-trainable model constant that is still saved and converted (e.g. final_logits_bias)."""
