"""XLA:CPU settings sltjax needs, put into XLA_FLAGS before JAX starts its CPU backend.

jaxlib 0.10 hands convolutions on CPU to YNNPACK by default, and there a convolution's gradient
is far slower than XLA's own (Eigen) kernels: one 3x3 layer of ResNet-18 on 128 frames at
112 px takes 2.2 s for its kernel gradient instead of 0.1 s, and C2RL's pretraining step runs
3x slower (benchmarks/train_step_c2rl.py: 16.3 s against 5.4 s). sltjax keeps YNNPACK for what
it does well (single matrix products and reductions) and leaves convolutions to Eigen.

A flag the user already put into XLA_FLAGS is left alone; other jaxlib versions are left to
their defaults (their flags may differ: XLA refuses unknown ones).
"""
import importlib.metadata
import os

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'
MEASURED_JAXLIB = '0.10.'  # the releases the setting was measured with


def keep_convolutions_off_ynnpack(environ=os.environ) -> None:
  """Adds `YNN_FLAG=YNN_WITHOUT_CONVOLUTIONS` to environ's XLA_FLAGS unless already set there.

  Takes effect only when called before JAX's CPU backend starts (sltjax/__init__.py calls it).
  """
  flags = environ.get('XLA_FLAGS', '')
  if YNN_FLAG in flags or not _jaxlib_version().startswith(MEASURED_JAXLIB):
    return
  environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}={YNN_WITHOUT_CONVOLUTIONS}'.strip()


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ''
