"""Cloud TPU slices by name, their chips' published figures, and their devices without TPUs.

`Slice.parse('v5e-64')` (Cloud TPU's accelerator type) or `Slice.parse('v5e:8x8')` (JAX's
topology name) -> the generation, chip count and physical shape; `slice.devices()` gives the
slice's TPU devices from libtpu's topology description (`pip install 'sltjax[tpu]'`), on a
machine with no TPU, for ahead-of-time compilation (sltjax/compile_check.py).
"""
import contextlib
import dataclasses
import math
import os
import re

from sltjax.errors import UserError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One chip's published figures (per chip, not per TensorCore)."""
  peak_bf16_flops: float  # FLOP/s of the matrix units in bfloat16 (float32 matmuls run on them)
  hbm_bytes: int
  hbm_bandwidth: float  # bytes/s
  ici_bandwidth: float  # bytes/s, bidirectional, all of the chip's inter-chip links together
  cores_per_chip: int  # TensorCores: the count Cloud TPU's accelerator-type names give
  torus_dims: int  # 2 (v5e, v6e) or 3 (v4, v5p)
  source: str


CHIPS = {
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOP/s (bf16), 32 GiB HBM2 at 1,200 GB/s, two
    # TensorCores per chip, 3D torus. The page gives no per-chip ICI figure; 6 links of 50 GB/s
    # each way (300 GB/s) follows Jouppi et al., "TPU v4" (ISCA 2023).
    'v4': Chip(275e12, 32 * GiB, 1200e9, 300e9, 2, 3, 'https://cloud.google.com/tpu/docs/v4'),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOP/s (bf16), 16 GiB HBM at 819 GB/s,
    # bidirectional ICI 400 GB/s per chip, one TensorCore per chip, 2D torus.
    'v5e': Chip(197e12, 16 * GiB, 819e9, 400e9, 1, 2, 'https://cloud.google.com/tpu/docs/v5e'),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOP/s (bf16), 95 GiB HBM2e at 2,765 GB/s,
    # bidirectional ICI 1,200 GB/s per chip, two TensorCores per chip, 3D torus.
    'v5p': Chip(459e12, 95 * GiB, 2765e9, 1200e9, 2, 3, 'https://cloud.google.com/tpu/docs/v5p'),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOP/s (bf16), 32 GB HBM at 1,638 GB/s,
    # bidirectional ICI 800 GB/s per chip, one TensorCore per chip, 2D torus.
    'v6e': Chip(918e12, 32 * GiB, 1638e9, 800e9, 1, 2, 'https://cloud.google.com/tpu/docs/v6e'),
}
# Cloud TPU's names of the generations, as accelerator types spell them.
ALIASES = {'v5litepod': 'v5e', 'v6': 'v6e', 'v5lite': 'v5e'}


@dataclasses.dataclass(frozen=True)
class Slice:
  generation: str
  shape: tuple[int, ...]  # chips along each torus axis

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def jax_name(self) -> str:
    return f'{self.generation}:{"x".join(map(str, self.shape))}'

  @property
  def cloud_name(self) -> str:
    """The accelerator type (v5e-64, v5p-128: TensorCores for v4 and v5p, chips otherwise)."""
    return f'{self.generation}-{self.chips * self.chip.cores_per_chip}'

  @classmethod
  def parse(cls, name: str) -> 'Slice':
    """'v5e-64', 'v5p-128', 'v4-32', 'v6e-256' or JAX's 'v5e:8x8', 'v5p:4x4x4'."""
    match = re.fullmatch(r'(v\d+[a-z]*)(?::(\d+(?:x\d+)+)|-(\d+))', name.strip().lower())
    generation = match and ALIASES.get(match.group(1), match.group(1))
    if not match or generation not in CHIPS:
      raise UserError(f'--topology={name}: not a TPU slice name; use Cloud TPU\'s (v5e-64, '
                      f'v5p-128, v6e-256, v4-32) or JAX\'s (v5e:8x8, v5p:4x4x4), generations '
                      f'{", ".join(CHIPS)}.')
    chip = CHIPS[generation]
    if match.group(2):
      shape = tuple(int(n) for n in match.group(2).split('x'))
      if len(shape) != chip.torus_dims:
        raise UserError(f'--topology={name}: {generation} slices have {chip.torus_dims} axes '
                        f'(e.g. {cls(generation, _torus_shape(16, chip.torus_dims)).jax_name}).')
      return cls(generation, shape)
    cores = int(match.group(3))
    if cores % chip.cores_per_chip:
      raise UserError(f'--topology={name}: {generation} names count TensorCores, '
                      f'{chip.cores_per_chip} per chip; {cores} is not a whole number of chips.')
    chips = cores // chip.cores_per_chip
    shape = _torus_shape(chips, chip.torus_dims)
    if shape is None:
      raise UserError(f'--topology={name}: {chips} chips is not a {generation} slice shape; '
                      'use a power of two (v5e-64, v5p-128, ...).')
    return cls(generation, shape)

  def devices(self) -> list:
    """The slice's TPU devices (for compiling only), from libtpu on any machine."""
    # Only compiling: several processes (pytest workers, a scaling sweep) may load libtpu at once,
    # which its lockfile (/tmp/libtpu_lockfile) otherwise refuses.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    try:
      from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
      with _quiet_native_stderr():  # libtpu warns that it finds no TPU host: expected here
        # Two-core chips (v4, v5p) run as one device each (megacore), as JAX runs them.
        options = {'chip_config_name': 'megacore'} if self.chip.cores_per_chip > 1 else {}
        return list(topologies.get_topology_desc(topology_name=self.jax_name, platform='tpu',
                                                 **options).devices)
    except (RuntimeError, ValueError) as e:
      if 'libtpu' in str(e).lower() or 'tpu' in str(e).lower():
        raise UserError(f'Compiling for {self.jax_name} needs libtpu: pip install '
                        f'"sltjax[tpu]" (libtpu==0.0.42.1 for jax 0.10.2). ({e})') from e
      raise


def _torus_shape(chips: int, dims: int) -> tuple[int, ...] | None:
  """Cloud TPU's slice shape of `chips` chips: 2D 2x4, 4x4, 4x8, 8x8, ...; 3D 2x2x1, 2x2x2,
  2x2x4, 2x4x4, 4x4x4, 4x4x8, ... (the smallest axes grow first, from the last)."""
  if chips < 1 or chips & (chips - 1):
    return None
  shape = [1] * dims
  for _ in range(int(math.log2(chips))):
    shape[shape.index(min(shape))] *= 2
  shape.sort()
  if shape[0] == 1 and dims == 3:  # 2x2x1: the flat axis last
    shape = shape[1:] + [1]
  return tuple(shape)


@contextlib.contextmanager
def _quiet_native_stderr():
  """Sends file descriptor 2 to /dev/null (C++ logging does not go through sys.stderr)."""
  saved = os.dup(2)
  with open(os.devnull, 'w') as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
