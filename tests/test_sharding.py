"""Sharded training on 8 simulated devices: gradient caching, FSDP, data parallelism, mesh-changing restore.

A train step takes far longer to compile than to run, so each sharded configuration and its one-device reference
are compiled and stepped once for the module (`stepped`); the tests read what they check from the results: the
loss and t from the metrics, the gradient from Adam's first moment after the first update (mu = (1 - b1) x the
clipped gradient, with the clipping factor known from the reported gradient norm), and the new state.
"""

import jax
import numpy as np
import pytest

from tests.tiny import first_update_gradient, tiny_config
from vitclip import checkpoint as checkpoint_lib
from vitclip import run as run_lib
from vitclip import sharding
from vitclip.data.pipeline import ImageSpec

BATCH = 32
# One block per tower: nothing checked here depends on the depth, and half the param leaves compile in far less
# time.
SMALL = {'model.image.variant': 'mu/8', 'model.text.variant': 'mu', 'model.text.vocab_size': 64}
FSDP = {'mesh': [('data', 2), ('fsdp', -1)], 'sharding.params': 'fsdp', 'sharding.fsdp_min_size': 256}

# Each against one device, the dense loss of the same kind and the full-batch gradient of host-normalised images.
# Both cases use the sigmoid loss, so one reference serves them; the loss implementations themselves (ring and
# dense, softmax and sigmoid, value and gradient on 8 devices) are checked against float64 in tests/test_losses.py.
CASES = {
    # data parallel, replicated params, gradient caching in 4 microbatches, ring loss on the cached embeddings
    'dp-gradcache8-sigmoid-ring': {'grad_cache.microbatch': 8, 'loss.impl': 'ring', 'loss.kind': 'sigmoid'},
    # data x fsdp mesh, sharded params, full-batch gradient, dense loss (embeddings gathered over both axes)
    'fsdp-sigmoid-dense': {**FSDP, 'loss.impl': 'dense', 'loss.kind': 'sigmoid'},
}


def build(devices=None, **overrides):
  config = tiny_config('/nonexistent', batch_size=BATCH, **SMALL, **overrides)
  return run_lib.build(config, None, devices=devices, train=False, check_data=False, with_tokenizer=False)


def batch_for(run, seed=0, normalized=False):
  """uint8 pixels as the pipeline feeds the step, or (normalized) the float32 model input made on the host."""
  rng = np.random.default_rng(seed)
  size, length = run.config.model.image.image_size, run.config.model.text.max_len
  tokens = rng.integers(4, 64, (BATCH, length)).astype(np.int32)
  tokens[:, -1] = 2  # EOS
  pixels = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
  image = np.stack([ImageSpec.from_config(run.config, train=True).normalize(p) for p in pixels]) if normalized \
      else pixels
  return jax.device_put({'image': image, 'tokens': tokens}, sharding.batch_sharding(run.mesh))


def assert_trees_close(a, b, tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


def one_step(run, batch):
  """(params before, metrics, state after) of the run's compiled train step from a fresh state."""
  state = run_lib.create_state(run)
  before = jax.device_get(state.params)
  after, metrics = run_lib.compile_train_step(run)(state, batch)  # Donates `state`.
  return before, jax.device_get(metrics), after


@pytest.fixture(scope='module')
def stepped():
  """case -> (sharded run, its step, the one-device reference's step), each step as `one_step` returns it;
  computed on first use (the reference once per loss kind: every case steps the same batch)."""
  done, references = {}, {}

  def reference(kind):
    # One device, dense loss, no gradient caching, fed the images normalised on the host; the sharded steps get
    # the uint8 pixels and normalise them themselves (with gradient caching: in each microbatch).
    if kind not in references:
      single = build(devices=jax.devices()[:1], **{'loss.kind': kind})
      references[kind] = one_step(single, batch_for(single, normalized=True))
    return references[kind]

  def get(case):
    if case not in done:
      sharded = build(**CASES[case])
      done[case] = sharded, one_step(sharded, batch_for(sharded)), reference(sharded.config.loss.kind)
    return done[case]
  return get


@pytest.mark.parametrize('case', CASES)
def test_sharded_step_equals_one_device(stepped, case):
  run, (before, metrics, after), (ref_before, ref_metrics, ref_after) = stepped(case)
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-5)
  np.testing.assert_allclose(metrics['grad_norm'], ref_metrics['grad_norm'], rtol=1e-5)
  grads = first_update_gradient(run, jax.device_get(after.opt_state), metrics['grad_norm'])
  ref_grads = first_update_gradient(run, jax.device_get(ref_after.opt_state), ref_metrics['grad_norm'])
  assert_trees_close(grads, ref_grads, 1e-5)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads)) > 1e-2  # Not all (near) zero.
  # The first update's lr is 0 (warmup from 0): the new params are the init's, the gradient is checked above.
  assert_trees_close(jax.device_get(after.params), jax.device_get(ref_after.params), 2e-5)
  assert float(metrics['t']) == pytest.approx(float(np.exp(before['t'])))  # The step reports t = exp(params t).
  assert_trees_close(before, ref_before, 0)  # The same init whatever the mesh.


def test_fsdp_shards_large_params_and_optimizer_state():
  run = build(**FSDP)
  specs = {jax.tree_util.keystr(p): s.sharding.spec for p, s in
           jax.tree_util.tree_leaves_with_path(run.abstract_state.params)}
  sharded = [k for k, s in specs.items() if 'fsdp' in s]
  assert sharded and all(specs[k] == jax.sharding.PartitionSpec() for k in specs if "['t']" in k)
  mu = [s.sharding.spec for s in jax.tree.leaves(run.abstract_state.opt_state) if s.ndim >= 2]
  assert any('fsdp' in s for s in mu)  # Adam moments follow their params.
  assert sharding.fsdp_spec((3, 64), 4, 0) == jax.sharding.PartitionSpec(None, 'fsdp')
  assert sharding.fsdp_spec((3, 5), 4, 0) == jax.sharding.PartitionSpec()  # nothing divisible: replicated


def test_restore_onto_a_different_mesh(stepped, tmp_path):
  """The FSDP case's state after its step (sharded params and Adam moments) onto 4 devices, replicated."""
  saved, (_, _, state), _ = stepped('fsdp-sigmoid-dense')
  assert any('fsdp' in x.sharding.spec for x in jax.tree.leaves(state.params))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.save(1, state, force=True)
  ckpt.wait()
  target = build(devices=jax.devices()[:4], **{'loss.kind': saved.config.loss.kind})  # replicated params
  restored = checkpoint_lib.Checkpointer(str(tmp_path)).restore(target.abstract_state)
  assert_trees_close(jax.device_get(restored.params), jax.device_get(state.params), 0)
  assert_trees_close(jax.device_get(restored.opt_state), jax.device_get(state.opt_state), 0)
  for leaf in jax.tree.leaves(restored.params):
    assert leaf.sharding.mesh.devices.size == 4 and leaf.sharding.spec == jax.sharding.PartitionSpec()
  params = checkpoint_lib.restore_params(str(tmp_path), target.abstract_state.params)
  assert_trees_close(jax.device_get(params), jax.device_get(state.params), 0)
