"""Model FLOPs of a JAX function, counted from its jaxpr: every matrix product and convolution, nothing else.

MFU needs the FLOPs the model defines, independent of backend and of rematerialisation. XLA's cost analysis
gives neither reliably: on GPU it leaves out the matmuls it hands to cuBLAS (a B/16 train step reads as ~1/24
of its true count), and it counts recomputed activations. Counting `dot_general` and `conv_general_dilated`
in the traced program is exact for what dominates a transformer; elementwise work (softmax, norms, GELU) is
left out, as in the usual 6·N·D estimates.

  flops = count_matmul_flops(train_step, state, batch)   # ShapeDtypeStructs work: nothing is executed
"""

import math
from typing import Any, Callable

import jax
from jax.extend import core as jax_core


def _dot_general_flops(eqn) -> int:
  """2 x output elements (batch x lhs free x rhs free) x contracted elements."""
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval.shape
  return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> int:
  """2 x output elements x kernel elements per output feature."""
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params['dimension_numbers']
  out_features = rhs[dn.rhs_spec[0]]
  kernel_elements = math.prod(rhs) // out_features  # in_features / groups x spatial window
  return 2 * math.prod(eqn.outvars[0].aval.shape) * kernel_elements


def _sub_jaxprs(value) -> list:
  if isinstance(value, jax_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_general_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name == 'cond':  # One branch runs: count the costliest.
      total += max((_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params['branches'])), default=0)
    else:
      inner = sum(_jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
      if name == 'scan':
        inner *= eqn.params['length']
      elif name == 'shard_map':  # The body's shapes are per device; it runs on every device of the mesh.
        inner *= eqn.params['mesh'].size
      # while loops have no static trip count; their bodies are counted once.
      total += inner
  return total


def count_matmul_flops(fn: Callable, *args: Any) -> int:
  """FLOPs of all matrix products and convolutions in `fn(*args)`, over the global (unsharded) arrays.

  Args: arrays or jax.ShapeDtypeStructs; the function is traced, never run. A multiply-add counts as 2.
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
