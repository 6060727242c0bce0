"""sltjax: sign language translation and retrieval in JAX/Flax NNX."""
