"""Device mesh from the config, parameter sharding rules, and batch sharding.

The batch is split over every mesh axis except 'model'. Parameters are either replicated or, under 'fsdp',
split along their largest dimension that the 'fsdp' axis size divides (params below a size threshold stay
replicated: sharding them costs more in collectives than it saves in memory).
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vitclip import config as config_lib

MODEL_AXIS = 'model'
FSDP_AXIS = 'fsdp'


def make_mesh(mesh_spec, devices=None) -> Mesh:
  """`[(name, size), ...]` (one size may be -1) -> Mesh over `devices` (default: all devices).

  Built with `Mesh` directly (not `jax.make_mesh`) so axes use automatic (GSPMD) sharding propagation.
  """
  devices = jax.devices() if devices is None else devices
  names, sizes = config_lib.mesh_shape(mesh_spec, len(devices))
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
