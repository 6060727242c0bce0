"""Device mesh and the one table that maps logical parameter/activation axes onto it.

Every parameter is created with logical axis names (`nnx.with_partitioning`); the rules below
resolve them to mesh axes, so the same model runs on 1 CPU, 8 fake CPU devices, a GPU or a TPU pod.
"""
from collections.abc import Mapping

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# logical axis -> mesh axis (or axes); names not listed stay replicated.
LOGICAL_AXIS_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),
    ('positions', None),
    ('norm', None),
    ('length', None),
    ('conv_in', None),  # convolutions are small: replicated, data-parallel
    ('conv_out', None),
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
  return jax.make_mesh(tuple(sizes.values()), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


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
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  fitted = []
  for dim, axes in zip(shape, spec):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    ways = int(np.prod([sharding.mesh.shape[a] for a in names]))
    fitted.append(axes if dim % ways == 0 else None)
  return NamedSharding(sharding.mesh, PartitionSpec(*fitted))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of input batches: leading axis split over the data-parallel mesh axes."""
  return NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """How many ways a batch is split (the product of the batch mesh axes)."""
  return mesh.shape['data'] * mesh.shape['fsdp']
