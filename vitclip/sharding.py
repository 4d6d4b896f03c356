"""Device mesh from the config, parameter sharding rules, and batch sharding.

The batch is split over every mesh axis except 'model'. Parameters are either replicated or, under 'fsdp',
split along their largest dimension that the 'fsdp' axis size divides (params below a size threshold stay
replicated: sharding them costs more in collectives than it saves in memory).
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vitclip.errors import ConfigError

MODEL_AXIS = 'model'
FSDP_AXIS = 'fsdp'


def mesh_shape(mesh_spec, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Resolves `[(name, size), ...]` with at most one -1 into concrete axis sizes over `num_devices`."""
  names = tuple(str(n) for n, _ in mesh_spec)
  sizes = [int(s) for _, s in mesh_spec]
  if len(set(names)) != len(names):
    raise ConfigError(f'config.mesh={mesh_spec!r} repeats an axis name.')
  if sizes.count(-1) > 1:
    raise ConfigError(f'config.mesh={mesh_spec!r} has more than one -1 axis; give all but one size.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(
          f'config.mesh={mesh_spec!r}: {num_devices} devices are not divisible by the fixed axes ({known}).')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'config.mesh={mesh_spec!r} covers {math.prod(sizes)} devices but {num_devices} are '
                      'visible; make the axis sizes multiply to the device count or use -1 for one axis.')
  return names, tuple(sizes)


def batch_parallelism(mesh_spec, num_devices: int) -> int:
  """Number of devices the batch dimension is split over (every mesh axis except 'model')."""
  names, sizes = mesh_shape(mesh_spec, num_devices)
  return math.prod(s for n, s in zip(names, sizes) if n != MODEL_AXIS)


def make_mesh(mesh_spec, devices=None) -> Mesh:
  """`[(name, size), ...]` (one size may be -1) -> Mesh over `devices` (default: all devices).

  Built with `Mesh` directly (not `jax.make_mesh`) so axes use automatic (GSPMD) sharding propagation.
  """
  devices = jax.devices() if devices is None else devices
  names, sizes = mesh_shape(mesh_spec, len(devices))
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(n for n in mesh.axis_names if n != MODEL_AXIS)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the batch axes; other dimensions replicated."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int) -> P:
  """Shards the largest dimension divisible by `axis_size` over 'fsdp'; small or indivisible -> replicated."""
  if axis_size <= 1 or math.prod(shape) < min_size:
    return P()
  candidates = [(d, i) for i, d in enumerate(shape) if d % axis_size == 0]
  if not candidates:
    return P()
  _, dim = max(candidates)
  spec = [None] * len(shape)
  spec[dim] = FSDP_AXIS
  return P(*spec)


def param_shardings(abstract_tree, mesh: Mesh, rule: str, min_size: int):
  """Pytree of NamedSharding for a pytree of arrays/ShapeDtypeStructs (params or optimizer state)."""
  if rule == 'replicate' or FSDP_AXIS not in mesh.axis_names:
    return jax.tree.map(lambda _: replicated(mesh), abstract_tree)
  if rule != 'fsdp':
    raise ValueError(f'unknown parameter sharding rule {rule!r}; use "replicate" or "fsdp".')
  size = mesh.shape[FSDP_AXIS]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), size, min_size)), abstract_tree)
