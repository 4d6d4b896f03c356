"""Sharded training on 8 simulated devices: gradient caching, FSDP, data parallelism, mesh-changing restore."""

import jax
import numpy as np
import pytest

from tests.tiny import tiny_config
from vitclip import checkpoint as checkpoint_lib
from vitclip import run as run_lib
from vitclip import sharding, train_step as train_step_lib
from vitclip.data.pipeline import ImageSpec
from vitclip.models import logit_params

BATCH = 32


def build(devices=None, **overrides):
  config = tiny_config('/nonexistent', batch_size=BATCH, **{'model.text.vocab_size': 64}, **overrides)
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


def full_batch_grads(run, batch):
  loss_fn = train_step_lib.loss_fn_from_config(run.config, run.mesh)
  fn = train_step_lib.full_batch_loss_and_grad(run.model, loss_fn)
  state = run_lib.create_state(run)
  loss, grads = jax.jit(fn)(state.params, batch, None)  # None: every image token.
  return loss, grads, state


def assert_trees_close(a, b, tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('kind, impl, micro', [('softmax', 'dense', 8), ('sigmoid', 'ring', 16)])
def test_grad_cache_equals_full_batch_gradient(kind, impl, micro):
  # The reference is fed the images normalised on the host; gradient caching gets the uint8 pixels and
  # normalises them in each microbatch.
  run = build(**{'loss.kind': kind, 'loss.impl': impl, 'grad_cache.microbatch': micro})
  loss, grads, state = full_batch_grads(run, batch_for(run, normalized=True))
  cached = train_step_lib.make_loss_and_grad(run.model, run.config, run.mesh)
  loss_gc, grads_gc, _ = jax.jit(cached)(state, batch_for(run))
  extras = {'t': logit_params(state.params)[0]}  # What the train step reports as t.
  np.testing.assert_allclose(loss_gc, loss, rtol=1e-5)
  assert_trees_close(grads_gc, grads, 1e-5)
  assert float(extras['t']) == pytest.approx(float(np.exp(state.params['t'])))


def one_step(run, batch):
  state = run_lib.create_state(run)
  step = run_lib.compile_train_step(run)
  state, metrics = step(state, batch)
  return jax.device_get(state.params), jax.device_get(metrics)


def host_batch(run_to, batch):
  return jax.device_put(jax.device_get(batch), sharding.batch_sharding(run_to.mesh))


@pytest.mark.parametrize('overrides', [
    # data parallel, replicated params, gradient caching
    {'grad_cache.microbatch': 16},
    # data x fsdp mesh, sharded params, ring loss
    {'mesh': [('data', 2), ('fsdp', -1)], 'sharding.params': 'fsdp', 'sharding.fsdp_min_size': 256,
     'loss.impl': 'ring', 'loss.kind': 'sigmoid'},
])
def test_sharded_step_equals_one_device(overrides):
  # Reference: one device, dense loss, no gradient caching, same loss kind.
  single = build(devices=jax.devices()[:1], **{'loss.kind': overrides.get('loss.kind', 'softmax')})
  sharded = build(**overrides)
  batch = batch_for(sharded)
  params, metrics = one_step(sharded, batch)
  ref_params, ref_metrics = one_step(single, host_batch(single, batch))
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-5)
  assert_trees_close(params, ref_params, 2e-5)


def test_fsdp_shards_large_params_and_optimizer_state():
  run = build(mesh=[('data', 2), ('fsdp', -1)], **{'sharding.params': 'fsdp', 'sharding.fsdp_min_size': 256})
  specs = {jax.tree_util.keystr(p): s.sharding.spec for p, s in
           jax.tree_util.tree_leaves_with_path(run.abstract_state.params)}
  sharded = [k for k, s in specs.items() if 'fsdp' in s]
  assert sharded and all(specs[k] == jax.sharding.PartitionSpec() for k in specs if "['t']" in k)
  mu = [s.sharding.spec for s in jax.tree.leaves(run.abstract_state.opt_state) if s.ndim >= 2]
  assert any('fsdp' in s for s in mu)  # Adam moments follow their params.
  assert sharding.fsdp_spec((3, 64), 4, 0) == jax.sharding.PartitionSpec(None, 'fsdp')
  assert sharding.fsdp_spec((3, 5), 4, 0) == jax.sharding.PartitionSpec()  # nothing divisible: replicated


def test_restore_onto_a_different_mesh(tmp_path):
  saved = build(mesh=[('data', 2), ('fsdp', -1)], **{'sharding.params': 'fsdp', 'sharding.fsdp_min_size': 256})
  state = run_lib.create_state(saved)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.save(3, state, force=True)
  ckpt.wait()
  target = build(devices=jax.devices()[:4])  # 4 devices, replicated params
  restored = checkpoint_lib.Checkpointer(str(tmp_path)).restore(target.abstract_state)
  assert_trees_close(jax.device_get(restored.params), jax.device_get(state.params), 0)
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.mesh.devices.size == 4
  params = checkpoint_lib.restore_params(str(tmp_path), target.abstract_state.params)
  assert_trees_close(jax.device_get(params), jax.device_get(state.params), 0)
