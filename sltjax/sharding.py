"""Device mesh and the one table that maps logical parameter/activation axes onto it.

Every parameter is created with logical axis names (`nnx.with_partitioning`); the rules below
resolve them to mesh axes, so the same model runs on 1 CPU, 8 fake CPU devices, a GPU or a TPU pod.
"""
import functools
from collections.abc import Mapping

import jax
import numpy as np
import optax
from flax import nnx
from flax.linen import logical_to_mesh_axes
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # a batch's leading axis is split over these

# logical axis -> mesh axis (or axes); names not listed stay replicated.
LOGICAL_AXIS_RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),
    ('positions', None),
    ('norm', None),
    ('length', None),
    # Convolution kernels are split by output channel and gathered at use (layers/conv.py).
    ('conv_in', None),
    ('conv_out', 'fsdp'),
)


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
  """Builds a mesh from `{axis: size}` over `devices` (default: all); one size may be -1 (all
  remaining devices)."""
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.mesh has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}.')
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  devices = jax.devices() if devices is None else devices
  num_devices = len(devices)
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {free}.')
  fixed = int(np.prod([size for size in sizes.values() if size != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(f'config.mesh={dict(mesh_config)}: {num_devices} devices are not divisible '
                       f'by the fixed axes (product {fixed}).')
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(list(sizes.values()))) != num_devices:
    raise ValueError(f'config.mesh={dict(mesh_config)} needs {int(np.prod(list(sizes.values())))} '
                     f'devices but {num_devices} are available.')
  shape, axis_types = tuple(sizes.values()), (AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:
    # A TPU torus whose physical axes no product of matches an axis size (8 over v5p's 4x4x4):
    # lay the mesh out with physical axes split (what jax.make_mesh does on v5e by default).
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


def named_shardings(abstract_state, mesh: jax.sharding.Mesh):
  """NamedShardings for an (abstract) nnx.State whose Variables carry logical axis names.

  A dimension the mesh axes do not divide (say a 2,454-token vocabulary over 4 tensor shards) is
  replicated instead, since XLA requires even tiling.
  """
  with nnx.logical_axis_rules(LOGICAL_AXIS_RULES):
    shardings = nnx.get_named_sharding(abstract_state, mesh)
  # optax.MaskedNode marks frozen parameters' (absent) optimizer state: it stays as it is.
  # (the multi_transform of frozen parameters, or a weight-decay mask).
  masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(lambda x, s: x if masked(x) else _evenly_divisible(s, x.shape),
                      abstract_state, shardings, is_leaf=masked)


def _evenly_divisible(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  return NamedSharding(sharding.mesh, _fit(sharding.spec, shape, sharding.mesh.shape))


def _fit(spec, shape: tuple[int, ...], mesh_shape: Mapping[str, int]) -> PartitionSpec:
  """`spec` with every dimension its mesh axes do not divide left unsplit."""
  spec = tuple(spec) + (None,) * (len(shape) - len(spec))
  fitted = []
  for dim, axes in zip(shape, spec):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    fitted.append(axes if dim % int(np.prod([mesh_shape[a] for a in names])) == 0 else None)
  return PartitionSpec(*fitted)


def constrain(x, *spec):
  """Pins activation `x`'s sharding inside a step traced under `tracing_mesh`: `spec` names mesh
  axes per leading dimension, as a PartitionSpec does. A dimension the axes do not divide stays
  unsplit; with no mesh being traced (a bare model call), `x` is returned as it is.

  Used where XLA's propagation alone would repeat work: a video backbone applied to a batch
  smaller than the mesh would otherwise run whole on every tensor-parallel chip.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, _fit(spec, x.shape, mesh.shape))


def fsdp_gathered(weight, axes: tuple[str | None, ...]):
  """`weight` (logical `axes`) whole over `fsdp` where a layer uses it, still split over `tensor`:
  FSDP's all-gather, whose gradient is reduce-scattered back to the weight's own split.
  Unchanged outside a traced step or where fsdp is 1.

  Left to itself, XLA may contract a weight split over its input dimension against activations
  gathered from the whole global batch instead, so a chip's memory grows with the number of chips
  at a fixed batch per chip (Sign2GPT's XGLM held logits [global batch, 64, 256008] on every
  chip: 11.6 GiB per chip on v5e-64 at one video per chip, beyond 16 GiB on v5e-256).
  """
  split = tuple(logical_to_mesh_axes(axes, LOGICAL_AXIS_RULES))
  return _gathered(weight, split, tuple(_without_fsdp(mesh_axes) for mesh_axes in split))


def _without_fsdp(mesh_axes: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
  names = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes or ()
  return tuple(a for a in names if a != 'fsdp') or None


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gathered(weight, split, gathered):
  return constrain(weight, *gathered)


def _gathered_forward(weight, split, gathered):
  return _gathered(weight, split, gathered), None


def _gathered_backward(split, gathered, _, gradient):
  # Pinned to the weight's own split: XLA reduce-scatters each chip's partial sum. The transpose
  # of the gather alone would all-reduce it, leaving the whole gradient on every chip.
  del gathered
  return (constrain(gradient, *split),)


_gathered.defvjp(_gathered_forward, _gathered_backward)


def constrain_frames(images):
  """images [batch * frames, ...] (a per-frame backbone's input or output) split over every mesh
  axis: each chip embeds its own frames, whatever the mesh's tensor size."""
  return constrain(images, MESH_AXES)


def tracing_mesh(mesh: jax.sharding.Mesh):
  """Context for tracing a step over `mesh`, under which `constrain` applies."""
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of input batches: leading axis split over the data-parallel mesh axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """How many ways a batch is split (the product of the batch mesh axes)."""
  return mesh.shape['data'] * mesh.shape['fsdp']
