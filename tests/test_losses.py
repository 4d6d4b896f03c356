"""Tests of vitclip.losses.contrastive_loss: numpy reference, toy cases, sharded impls, memory scaling, errors."""

import functools
import os

# Before jax is imported: the CPU backend reads the device count once. Same value in every test file, so the
# whole suite can share one process.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vitclip import losses
from vitclip.losses import contrastive_loss

ARGNUMS = (0, 1, 2, 3)  # zimg, ztxt, t, b
KINDS = list(losses.KINDS)
SHARDED_IMPLS = [impl for impl in losses.IMPLS if impl != 'dense']


def make_mesh(shape, names):
  return Mesh(np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape), names)


def normalized(rng, batch, dim):
  x = rng.normal(size=(batch, dim))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ reference


def reference(zimg, ztxt, t, b, kind, weight=0.5):
  """float64 numpy loss and analytic gradients (dzimg, dztxt, dt, db)."""
  batch = zimg.shape[0]
  sims = zimg @ ztxt.T
  logits = t * sims
  eye = np.eye(batch)
  if kind == 'softmax':
    def log_softmax(x, axis):
      m = x.max(axis=axis, keepdims=True)
      return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    row, col = log_softmax(logits, 1), log_softmax(logits, 0)
    loss = -(weight * np.trace(row) + (1 - weight) * np.trace(col)) / batch
    glog = (weight * (np.exp(row) - eye) + (1 - weight) * (np.exp(col) - eye)) / batch
  elif kind == 'sigmoid':
    labels = 2 * eye - 1
    x = labels * (logits + b)
    loss = np.sum(np.logaddexp(0, -x)) / batch  # −log σ(x) = log(1 + e^{−x})
    glog = -labels / (1 + np.exp(x)) / batch  # d/dlogits of softplus(−x) = −z·σ(−x)
  else:
    raise NotImplementedError(f'no numpy reference for kind={kind!r}; a kind in losses.KINDS needs one here.')
  db = 0.0 if kind == 'softmax' else glog.sum()
  return loss, (t * glog @ ztxt, t * glog.T @ zimg, np.sum(glog * sims), db)


def numerical_grad(fn, args, eps=1e-6):
  """Central differences of a float64 scalar function for every entry of every arg."""
  grads = []
  for i, a in enumerate(args):
    a = np.asarray(a, np.float64)
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
      hi, lo = [list(args) for _ in range(2)]
      hi[i], lo[i] = a.copy(), a.copy()
      hi[i][idx] += eps
      lo[i][idx] -= eps
      g[idx] = (fn(*hi) - fn(*lo)) / (2 * eps)
    grads.append(g)
  return grads


@pytest.mark.parametrize('kind', KINDS)
def test_reference_gradient_matches_finite_differences(kind):
  rng = np.random.default_rng(0)
  args = (normalized(rng, 4, 3), normalized(rng, 4, 3), np.array(3.0), np.array(-2.0))
  _, analytic = reference(*args, kind, 0.3)
  numeric = numerical_grad(lambda *a: reference(*a, kind, 0.3)[0], args)
  for a, n in zip(analytic, numeric):
    np.testing.assert_allclose(a, n, atol=1e-7)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('weight', [0.5, 0.3])
def test_dense_matches_numpy_reference(kind, weight):
  rng = np.random.default_rng(1)
  zimg, ztxt = normalized(rng, 16, 8), normalized(rng, 16, 8)
  t, b = 10.0, -10.0
  fn = jax.jit(jax.value_and_grad(
      lambda *a: contrastive_loss(*a, kind=kind, impl='dense', softmax_weight=weight), argnums=ARGNUMS))
  loss, grads = fn(jnp.float32(zimg), jnp.float32(ztxt), jnp.float32(t), jnp.float32(b))
  ref_loss, ref_grads = reference(zimg, ztxt, t, b, kind, weight)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ toy cases


ALL_IMPLS = list(losses.IMPLS)


@functools.lru_cache
def _jitted_loss(kind, impl, has_bias):
  mesh = make_mesh((8,), ('data',))
  return jax.jit(lambda zimg, ztxt, t, b: contrastive_loss(zimg, ztxt, t, b if has_bias else None, kind=kind,
                                                           impl=impl, mesh=mesh))


def toy_loss(zimg, ztxt, t, b, kind, impl):
  fn = _jitted_loss(kind, impl, b is not None)
  return float(fn(jnp.float32(zimg), jnp.float32(ztxt), jnp.float32(t), jnp.float32(b or 0.0)))


@pytest.mark.parametrize('impl', ALL_IMPLS)
def test_softmax_toy_cases(impl):
  eye = np.eye(8)
  # Each image matches only its own text: logits t on the diagonal, 0 elsewhere, CE = log(1 + (B−1)e^{−t}).
  assert toy_loss(eye, eye, 1.0, None, 'softmax', impl) == pytest.approx(np.log1p(7 / np.e), rel=1e-6)
  assert toy_loss(eye, eye, 100.0, None, 'softmax', impl) == pytest.approx(0.0, abs=1e-6)
  # All embeddings equal: every logit is the same, the softmax is uniform, CE = log B.
  same = np.ones((8, 4)) / 2
  assert toy_loss(same, same, 10.0, None, 'softmax', impl) == pytest.approx(np.log(8), rel=1e-6)


@pytest.mark.parametrize('impl', ALL_IMPLS)
def test_sigmoid_toy_cases(impl):
  eye = np.eye(16)
  # Every image orthogonal to every text, t=1, b=0: all B² logits are 0, each pair costs log 2, sum / B = B·log 2.
  assert toy_loss(eye[:8], eye[8:], 1.0, 0.0, 'sigmoid', impl) == pytest.approx(8 * np.log(2), rel=1e-6)
  # Positives on the diagonal with logit 1: log(1 + e^{−1}) + (B−1)·log 2.
  expected = np.log1p(np.exp(-1)) + 7 * np.log(2)
  assert toy_loss(eye[:8], eye[:8], 1.0, None, 'sigmoid', impl) == pytest.approx(expected, rel=1e-6)
  # Well separated with a large scale and the SigLIP bias: near zero.
  assert toy_loss(eye[:8], eye[:8], 100.0, -50.0, 'sigmoid', impl) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ sharded


MESHES = {
    '1d': ((8,), ('data',)),
    '2d': ((2, 4), ('data', 'fsdp')),
}


def sharded_inputs(mesh, axes, batch=32, dim=16, dtype=jnp.float32, seed=2):
  rng = np.random.default_rng(seed)
  rows = NamedSharding(mesh, P(axes, None))
  zimg = jax.device_put(jnp.asarray(normalized(rng, batch, dim), dtype), rows)
  ztxt = jax.device_put(jnp.asarray(normalized(rng, batch, dim), dtype), rows)
  return zimg, ztxt, jnp.float32(7.0), jnp.float32(-3.0)


def value_and_grads(args, kind, impl, mesh, **kw):
  fn = jax.jit(jax.value_and_grad(
      lambda *a: contrastive_loss(*a, kind=kind, impl=impl, mesh=mesh, **kw), argnums=ARGNUMS))
  return fn(*args)


def assert_same(got, want, tol):
  (loss, grads), (ref_loss, ref_grads) = got, want
  np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
  for name, g, r in zip(('zimg', 'ztxt', 't', 'b'), grads, ref_grads):
    np.testing.assert_allclose(np.float32(g), np.float32(r), rtol=tol, atol=tol, err_msg=f'd/d{name}')


@pytest.mark.parametrize('mesh_name', list(MESHES))
@pytest.mark.parametrize('kind', KINDS)
def test_gather_and_ring_match_dense(mesh_name, kind):
  shape, names = MESHES[mesh_name]
  mesh = make_mesh(shape, names)
  args = sharded_inputs(mesh, names)
  dense = value_and_grads(args, kind, 'dense', mesh, softmax_weight=0.3)
  for impl in SHARDED_IMPLS:
    got = value_and_grads(args, kind, impl, mesh, softmax_weight=0.3)
    assert_same(got, dense, 1e-5)
    assert got[1][0].sharding.is_equivalent_to(args[0].sharding, 2), impl


@pytest.mark.parametrize('kind', KINDS)
def test_model_axis_is_not_a_batch_axis(kind):
  # Default batch axes skip 'model': the batch is sharded over 'data' and replicated over 'model'.
  mesh = make_mesh((4, 2), ('data', 'model'))
  args = sharded_inputs(mesh, 'data')
  dense = value_and_grads(args, kind, 'dense', mesh)
  for impl in SHARDED_IMPLS:
    assert_same(value_and_grads(args, kind, impl, mesh), dense, 1e-5)
  # Explicit batch_axes: sharded over 'data' only on a ('data', 'fsdp') mesh.
  mesh = make_mesh((2, 4), ('data', 'fsdp'))
  args = sharded_inputs(mesh, 'data')
  assert_same(value_and_grads(args, kind, 'ring', mesh, batch_axes='data'), dense, 1e-5)


@pytest.mark.parametrize('kind', KINDS)
def test_bfloat16_inputs(kind):
  mesh = make_mesh((8,), ('data',))
  args = sharded_inputs(mesh, 'data', dtype=jnp.bfloat16)
  as_f32 = (args[0].astype(jnp.float32), args[1].astype(jnp.float32)) + args[2:]
  dense = value_and_grads(as_f32, kind, 'dense', mesh)
  for impl in ALL_IMPLS:
    loss, grads = value_and_grads(args, kind, impl, mesh)
    assert loss.dtype == jnp.float32
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    assert_same((loss, grads), dense, 2e-2)


def test_ring_memory_is_independent_of_device_count():
  """Same per-device batch on 2 and 8 devices: ring temp bytes equal, gather temp bytes grow.

  Guards the custom VJP: autodiff through the ring would keep every b×b block, i.e. b×B per device.
  """
  per_device, dim = 128, 64

  def temp_bytes(impl, kind, devices):
    mesh = make_mesh((devices,), ('data',))
    rows, scalar = NamedSharding(mesh, P('data', None)), NamedSharding(mesh, P())
    fn = jax.jit(jax.value_and_grad(lambda *a: contrastive_loss(*a, kind=kind, impl=impl, mesh=mesh),
                                    argnums=ARGNUMS),
                 in_shardings=(rows, rows, scalar, scalar), out_shardings=(scalar, (rows, rows, scalar, scalar)))
    emb = jax.ShapeDtypeStruct((per_device * devices, dim), jnp.float32)
    one = jax.ShapeDtypeStruct((), jnp.float32)
    return fn.lower(emb, emb, one, one).compile().memory_analysis().temp_size_in_bytes

  for kind in KINDS:
    assert temp_bytes('ring', kind, 8) <= 1.1 * temp_bytes('ring', kind, 2), kind
    assert temp_bytes('gather', kind, 8) > 2 * temp_bytes('gather', kind, 2), kind


# ------------------------------------------------------------------------------------------------ new kinds
#
# Kinds that exist only here, each one LossKind record: registering it in losses.KINDS is all it takes for
# every implementation to compute it.


def _numpy_squared(zimg, ztxt, t, b, weight):
  """Every logit regressed onto its label: Σ_ij (L_ij + b − [i = j])² / B. No statistics; weight unused."""
  del weight
  return np.sum(np.square(t * zimg @ ztxt.T + b - np.eye(len(zimg)))) / len(zimg)


def _gap_stat_loss(row_max, col_max, weight):
  return weight * jnp.sum(row_max) + (1.0 - weight) * jnp.sum(col_max)


def _numpy_gap(zimg, ztxt, t, b, weight):
  """Hardest-logit gap, the zero-temperature softmax: w·(max_j L_ij − L_ii) + (1−w)·(max_i L_ij − L_jj)."""
  del b
  logits = t * zimg @ ztxt.T
  total = weight * logits.max(axis=1).sum() + (1 - weight) * logits.max(axis=0).sum() - np.trace(logits)
  return total / len(zimg)


TOY_INIT = {'t_init': 1.0, 'b_init': 0.0, 't_max': 0.0}
TOY_KINDS = {
    'squared': (losses.LossKind(positive=lambda logits, bias: jnp.square(logits + bias - 1.0),
                                negative=lambda logits, bias: jnp.square(logits + bias), init=TOY_INIT),
                _numpy_squared),
    'max_gap': (losses.LossKind(positive=lambda logits, bias: -logits, stat=jnp.max,
                                stat_grad=lambda logits, m: (logits == m).astype(logits.dtype),
                                stat_loss=_gap_stat_loss, init=TOY_INIT),
                _numpy_gap),
}


@pytest.mark.parametrize('name', list(TOY_KINDS))
def test_a_kind_is_one_record(name, monkeypatch):
  """A kind added as one record: numpy value and gradient, and dense = gather = ring, with no other code."""
  record, numpy_loss = TOY_KINDS[name]
  monkeypatch.setitem(losses.KINDS, name, record)
  mesh = make_mesh((8,), ('data',))
  args = sharded_inputs(mesh, 'data')
  dense = value_and_grads(args, name, 'dense', mesh, softmax_weight=0.3)
  args64 = [np.float64(a) for a in args]
  np.testing.assert_allclose(dense[0], numpy_loss(*args64, 0.3), rtol=1e-5)
  numeric = numerical_grad(lambda *a: numpy_loss(*a, 0.3), args64)
  for arg, g, n in zip(('zimg', 'ztxt', 't', 'b'), dense[1], numeric):
    np.testing.assert_allclose(g, n, rtol=1e-4, atol=1e-4, err_msg=f'd/d{arg}')
  for impl in SHARDED_IMPLS:
    assert_same(value_and_grads(args, name, impl, mesh, softmax_weight=0.3), dense, 1e-5)


def test_every_kind_declares_model_defaults():
  for name, record in losses.KINDS.items():
    assert set(record.init) == {'t_init', 'b_init', 't_max'}, name
  with pytest.raises(ValueError, match='stat, stat_grad and stat_loss'):
    losses.LossKind(positive=lambda logits, bias: -logits, stat=jnp.max, init=TOY_INIT)


# ------------------------------------------------------------------------------------------------ errors


def test_errors_name_the_value_and_the_fix():
  mesh = make_mesh((8,), ('data',))
  z = jnp.ones((16, 4)) / 2
  with pytest.raises(ValueError, match=r"kind='cosine'.*softmax"):
    contrastive_loss(z, z, 1.0, kind='cosine', impl='dense')
  with pytest.raises(ValueError, match=r"impl='allreduce'.*ring"):
    contrastive_loss(z, z, 1.0, kind='softmax', impl='allreduce')
  for impl in ('gather', 'ring'):
    with pytest.raises(ValueError, match=rf"impl='{impl}'.*needs mesh=.*impl='dense'"):
      contrastive_loss(z, z, 1.0, kind='sigmoid', impl=impl)
  with pytest.raises(ValueError, match=r'global batch 12 is not divisible by the 8 devices.*multiple of 8'):
    contrastive_loss(z[:12], z[:12], 1.0, kind='sigmoid', impl='ring', mesh=mesh)
  with pytest.raises(ValueError, match=r"batch_axes='batch'.*\('data',\)"):
    contrastive_loss(z, z, 1.0, kind='sigmoid', impl='gather', mesh=mesh, batch_axes='batch')
  with pytest.raises(ValueError, match=r'\(16, 4\).*\(16, 2\)'):
    contrastive_loss(z, z[:, :2], 1.0, kind='softmax', impl='dense')
  with pytest.raises(ValueError, match=r'softmax_weight=1.5.*0.5'):
    contrastive_loss(z, z, 1.0, kind='softmax', impl='dense', softmax_weight=1.5)
  with pytest.raises(ValueError, match=r'logit_scale must be a scalar.*\(2,\)'):
    contrastive_loss(z, z, jnp.ones(2), kind='softmax', impl='dense')
