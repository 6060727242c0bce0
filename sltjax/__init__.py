"""sltjax: sign language translation and retrieval in JAX/Flax NNX."""
from sltjax import xla_flags

xla_flags.keep_convolutions_off_ynnpack()
