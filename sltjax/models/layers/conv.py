"""Convolution and BatchNorm with logical axis names, in channels-last layout.

`BatchNorm` adds what video models need on top of nnx.BatchNorm: statistics from the positions a
mask marks (padded frames excluded, MMTLB's masked norm) and a `frozen` switch that always uses
the running averages (frozen-BN fine-tuning). `max_pool` computes the gradient of strided
pooling on CPU without XLA's slow select-and-scatter, and `computed_once` keeps XLA:CPU from
recomputing an activation inside the transposes of the backward pass.

Kernels are split over FSDP by their output channels (`conv_out`) and gathered whole where they
are used (`whole_kernel_conv`), as FSDP does for every weight.
"""
import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from sltjax import sharding

# torchvision's convolution init (kaiming normal, fan_out, ReLU gain).
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def whole_kernel_conv(lhs, rhs, *args, **kwargs):
  """lax.conv_general_dilated with its kernel `rhs` gathered whole on every chip first (the
  FSDP all-gather; its transpose reduce-scatters the kernel's gradient).

  Left to itself, XLA splits such a convolution over its output channels (slower: v5e-8 C2RL
  pretraining 30 -> 53 ms per step), and its SPMD partitioner computes a wrong input gradient
  when the convolution's time axis is split over `tensor` as well: 4x too large on fsdp 2 x
  tensor 4 (jax 0.10.2, both partitioners; docs/pods.md).
  """
  return lax.conv_general_dilated(lhs, sharding.constrain(rhs), *args, **kwargs)


def conv(in_channels: int, out_channels: int, kernel: Sequence[int], *, stride: Sequence[int],
         padding: Sequence[int], dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """Bias-free N-d convolution (kernel [*kernel, in, out]) with PyTorch-style symmetric padding."""
  kernel_axes = (None,) * len(kernel) + ('conv_in', 'conv_out')
  return nnx.Conv(in_channels, out_channels, tuple(kernel), strides=tuple(stride),
                  padding=tuple((p, p) for p in padding), use_bias=False, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs, conv_general_dilated=whole_kernel_conv,
                  kernel_init=nnx.with_partitioning(KAIMING_FAN_OUT, kernel_axes))


def temporal_conv(in_channels: int, out_channels: int, kernel: int, *, padding: str, dtype,
                  param_dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """1-d convolution over time with bias, [B, T, in] -> [B, T', out] ('SAME' or 'VALID'
  `padding`); LeCun-normal kernel, zero bias."""
  return nnx.Conv(in_channels, out_channels, (kernel,), padding=padding, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs, conv_general_dilated=whole_kernel_conv,
                  kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                    (None, 'conv_in', 'conv_out')),
                  bias_init=nnx.with_partitioning(nnx.initializers.zeros, ('conv_out',)))


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
    if not train or self.frozen:
      return super().__call__(x, use_running_average=True)
    x = x.astype(self.dtype or x.dtype)
    mean, var = masked_moments(x.astype(jnp.promote_types(x.dtype, jnp.float32)), mask)
    self.mean[...] = lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
    self.var[...] = lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
    y = (x - mean) * (lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]
    return y.astype(x.dtype)


def masked_moments(x, mask=None):
  """Mean and biased variance per feature of the positions mask marks (all when None).

  x: [..., features]; mask: broadcastable to x[..., :1], e.g. one entry per frame
  [frames, 1, 1, 1]. Sums run over the positions each mask entry stands for first and are
  weighted per entry after, so the mask is never spread over x's shape (as jnp.mean(where=)
  does: on CPU, counting ResNet-18's first BatchNorm's positions over 128 frames that way took
  0.2-0.26 s, and a spread mask costs a full pass over x). -> ([features], [features])
  """
  axes = tuple(range(x.ndim - 1))
  if mask is None:
    mean = jnp.mean(x, axes)
    return mean, jnp.mean(jnp.square(x - mean), axes)
  weights = jnp.reshape(mask, (1,) * (x.ndim - mask.ndim) + mask.shape).astype(x.dtype)
  spread_axes = tuple(axis for axis in axes if weights.shape[axis] == 1)
  count = jnp.sum(weights) * math.prod(x.shape[axis] for axis in spread_axes)

  def weighted_mean(values):  # [..., features] -> [features]
    return jnp.sum(jnp.sum(values, spread_axes, keepdims=True) * weights, axes) / count

  mean = weighted_mean(x)
  return mean, weighted_mean(jnp.square(x - mean))


def computed_once(x):
  """x unchanged (values and gradient), but computed once and stored on CPU.

  XLA fuses chains of cheap elementwise operations (BatchNorm's normalisation, a residual add,
  ReLU) into each of their consumers. The kernel gradient of a convolution on XLA:CPU starts with
  a transpose of the convolution's input, and the chain that made that input is fused into the
  transpose, where it reads all its operands strided: ResNet-18's backward pass recomputed its
  blocks' outputs that way, 0.55 s of C2RL's 5.8 s pretraining step (benchmarks/
  train_step_c2rl.py) against ~33 ms per transpose of a stored array, and S3D's step is ~15%
  faster without it (benchmarks/train_step_mmtlb.py). XLA never duplicates a division, which it
  counts as expensive, so x is divided by a 1 it cannot fold, 1 + 0 * x's first element (a
  scalar: XLA turns a division by a broadcast array into a multiplication); x is then computed
  once, stored, and transposed from memory. x: any shape, at least one element. Other platforms
  get x itself.
  """
  return lax.platform_dependent(x, cpu=_divided_by_runtime_one, default=lambda x: x)


def _divided_by_runtime_one(x):
  one = 1 + 0 * lax.stop_gradient(x[(0,) * x.ndim])  # NaN where x's first element is not finite
  return x / one


def max_pool(x, window: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
  """Max pooling over the spatial axes of channels-last x, padding with -inf (as PyTorch).

  x: [batch, *spatial, channels]. The gradient goes to the first maximum of each window in
  row-major order, as XLA's own. Where each position lies in at most 4 windows (strided pooling:
  ResNet's, S3D's spatial ones), it is computed tap by tap on CPU: ResNet-18's pooling of 128
  frames at 112 px 0.25 s against 0.7 s for XLA:CPU's select-and-scatter, S3D's (1, 3, 3) / 2
  3x faster; densely overlapping windows (S3D's 3x3x3 / 1: 2x slower by taps) keep XLA's.
  """
  window, stride = tuple(window), tuple(stride)
  padding = tuple((p, p) for p in padding)
  if math.prod(-(-w // s) for w, s in zip(window, stride)) > 4:
    return nnx.max_pool(x, window, stride, padding)
  return _max_pool(x, window, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return nnx.max_pool(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
  return _max_pool(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, grad_out):
  return (lax.platform_dependent(
      cpu=lambda: _max_pool_grad_by_taps(x, grad_out, window, strides, padding),
      default=lambda: jax.vjp(lambda x: nnx.max_pool(x, window, strides, padding), x)[1](
          grad_out)[0]),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _max_pool_grad_by_taps(x, grad_out, window, strides, padding):
  """The input gradient [batch, *spatial, channels] of max pooling, one window tap at a time.

  A running maximum over each tap's strided view of the padded input marks, per window, the
  first tap (row-major) holding its maximum; that tap takes the window's gradient, placed back
  at its positions by an interior-padded copy. The winner is found here from x alone, not by
  comparing x with the forward's pooled values: XLA may compute x twice (fused into each
  consumer) with different rounding, and a window whose recomputed maximum no longer equalled
  the stored one lost its gradient (GFSLT's temporal convolutions on 8 CPU devices: 30% of the
  input gradient). grad_out: [batch, *out_spatial, channels].
  """
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out_spatial = grad_out.shape[1:-1]
  views = []  # (tap's strided slice of padded, its placement back into padded's shape)
  for offsets in itertools.product(*map(range, window)):
    ends = [o + s * (n - 1) + 1 for o, s, n in zip(offsets, strides, out_spatial)]
    views.append((padded[(slice(None), *(slice(o, e, s) for o, e, s in
                                         zip(offsets, ends, strides)))],
                  [(0, 0, 0), *((o, size - e, s - 1) for o, e, s, size in
                                zip(offsets, ends, strides, padded.shape[1:-1])), (0, 0, 0)]))
  best, winner = views[0][0], jnp.zeros(grad_out.shape, jnp.int32)
  for tap, (seen, _) in enumerate(views[1:], start=1):
    better = seen > best  # strictly: a tie stays with the earlier tap
    best, winner = jnp.where(better, seen, best), jnp.where(better, tap, winner)
  grad = jnp.zeros(padded.shape, grad_out.dtype)
  for tap, (_, placement) in enumerate(views):
    grad = grad + lax.pad(jnp.where(winner == tap, grad_out, 0), jnp.zeros((), grad.dtype),
                          placement)
  return grad[(slice(None), *(slice(lo, size - hi) for (lo, hi), size in
                              zip(padding, padded.shape[1:-1])))]
