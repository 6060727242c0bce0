"""sltjax: sign language translation and retrieval in JAX/Flax NNX."""
from sltjax import jax_fixes, xla_flags

xla_flags.add_sltjax_flags()  # before anything starts a JAX backend
jax_fixes.cheap_tracer_sharding_probe()
