"""Convolution and BatchNorm with logical axis names, in channels-last layout.

`BatchNorm` adds what video models need on top of nnx.BatchNorm: statistics from the positions a
mask marks (padded frames excluded, MMTLB's masked norm) and a `frozen` switch that always uses
the running averages (frozen-BN fine-tuning).
"""
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

# torchvision's convolution init (kaiming normal, fan_out, ReLU gain).
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(in_channels: int, out_channels: int, kernel: Sequence[int], *, stride: Sequence[int],
         padding: Sequence[int], dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """Bias-free N-d convolution (kernel [*kernel, in, out]) with PyTorch-style symmetric padding."""
  kernel_axes = (None,) * len(kernel) + ('conv_in', 'conv_out')
  return nnx.Conv(in_channels, out_channels, tuple(kernel), strides=tuple(stride),
                  padding=tuple((p, p) for p in padding), use_bias=False, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs,
                  kernel_init=nnx.with_partitioning(KAIMING_FAN_OUT, kernel_axes))


class BatchNorm(nnx.BatchNorm):
  """BatchNorm over the last axis.

  momentum uses Flax's convention (running = momentum * running + (1 - momentum) * batch), so
  PyTorch's momentum m is 1 - m here. The running variance is the biased batch variance.
  """

  def __init__(self, features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
               frozen: bool = False, dtype, param_dtype, rngs: nnx.Rngs):
    super().__init__(features, momentum=momentum, epsilon=epsilon, dtype=dtype,
                     param_dtype=param_dtype, use_fast_variance=False, rngs=rngs,
                     scale_init=nnx.with_partitioning(nnx.initializers.ones, ('norm',)),
                     bias_init=nnx.with_partitioning(nnx.initializers.zeros, ('norm',)))
    self.frozen = frozen

  def __call__(self, x, mask=None, train: bool = False):
    """x: [..., features]; mask: broadcastable to x[..., :1] (1 = counts towards the statistics).

    Training (and not frozen) normalises with the masked batch statistics and updates the
    running averages; otherwise it uses the running averages.
    """
    if mask is not None:
      mask = jnp.broadcast_to(mask.astype(bool), x.shape[:-1] + (1,))
    return super().__call__(x, use_running_average=not train or self.frozen, mask=mask)


def max_pool(x, window: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
  """Max pooling over the spatial axes of channels-last x, padding with -inf (as PyTorch)."""
  return nnx.max_pool(x, tuple(window), tuple(stride), tuple((p, p) for p in padding))
