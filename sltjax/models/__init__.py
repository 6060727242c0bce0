"""Flax NNX models: shared layers, the mBART-shaped encoder-decoder, and (later) the SLT systems."""
from flax import nnx

# Parameters carry logical axis names only; sltjax places them explicitly through jit
# out_shardings (sltjax/sharding.py), so Flax must not try to shard them eagerly at creation.
nnx.use_eager_sharding(False)
