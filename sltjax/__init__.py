"""sltjax: sign language translation and retrieval in JAX/Flax NNX."""
from sltjax import jax_fixes, platforms, xla_flags

xla_flags.add_sltjax_flags()  # both before anything starts a JAX backend
platforms.cpu_alone_without_accelerators()
jax_fixes.cheap_tracer_sharding_probe()
