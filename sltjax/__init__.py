"""sltjax: sign language translation and retrieval in JAX/Flax NNX."""
from sltjax import jax_fixes, xla_flags

xla_flags.keep_convolutions_off_ynnpack()  # before anything starts JAX's CPU backend
jax_fixes.cheap_tracer_sharding_probe()
