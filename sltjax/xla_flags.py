"""XLA settings sltjax needs, put into XLA_FLAGS before JAX starts its backend.

* Reduced-precision values are rounded where the program says (`--xla_allow_excess_precision=
  false`), as PyTorch rounds every bfloat16 op's output. By default XLA may keep a bfloat16
  value in float32 inside a fusion, and since it recomputes cheap producers inside each
  consumer's fusion, one value can reach some consumers rounded and others not: a LayerNorm
  then subtracts a mean of the unrounded values from the rounded ones. On a converted mBART
  whose residual stream reaches 107, bfloat16 logits were 0.27 off the float32 ones, against
  0.033 with rounding (PyTorch's bfloat16: 0.037). Float32 programs are unaffected.
* jaxlib 0.10 hands convolutions on CPU to YNNPACK by default, and there a convolution's
  gradient is far slower than XLA's own (Eigen) kernels: one 3x3 layer of ResNet-18 on 128
  frames at 112 px takes 2.2 s for its kernel gradient instead of 0.1 s, and C2RL's pretraining
  step runs 3x slower (benchmarks/train_step_c2rl.py: 16.3 s against 5.4 s). sltjax keeps
  YNNPACK for what it does well (single matrix products and reductions) and leaves convolutions
  to Eigen; other jaxlib versions keep their default (their flags may differ: XLA refuses
  unknown ones).

A flag the user already put into XLA_FLAGS is left alone.
"""
import importlib.metadata
import os

EXCESS_PRECISION_FLAG = '--xla_allow_excess_precision'
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'
MEASURED_JAXLIB = '0.10.'  # the releases the YNNPACK setting was measured with


def add_sltjax_flags(environ=os.environ) -> None:
  """Adds sltjax's settings to environ's XLA_FLAGS, each unless that flag is already there.

  Takes effect only when called before JAX's backend starts (sltjax/__init__.py calls it).
  """
  settings = {EXCESS_PRECISION_FLAG: 'false'}
  if _jaxlib_version().startswith(MEASURED_JAXLIB):
    settings[YNN_FLAG] = YNN_WITHOUT_CONVOLUTIONS
  flags = environ.get('XLA_FLAGS', '')
  present = {flag.split('=')[0] for flag in flags.split()}
  added = [f'{flag}={value}' for flag, value in settings.items() if flag not in present]
  environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ''
