"""Image token masking: FLIP's random masks, A-CLIP's attention scores, token selection, views, EMA and
objective, each against a straightforward reference (numpy recomputation, an independent loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import first_update_gradient, tiny_config
from vitclip import aclip, masking, run as run_lib, train_step
from vitclip import checkpoint as checkpoint_lib
from vitclip.config import validate
from vitclip.errors import ConfigError
from vitclip.models import TwoTower, l2_normalize, logit_params
from vitclip.models.vit import VisionTransformer, _keep_tokens

ACLIP = {'aclip.enabled': True, 'aclip.mlp_hidden': 32, 'aclip.mlp_out': 16, 'aclip.unit': 1}
# Runs (train steps, objectives) with one block per tower: nothing checked on them depends on the depth (the
# layer average of the scores is checked on the two-block tower above), and half the param leaves compile in far
# less time.
SMALL = {'model.image.variant': 'mu/8', 'model.text.variant': 'mu'}


def _tower(**kw):
  """(two-block tower, params, images [3, 32, 32, 3]). The params are drawn in numpy at the init's shapes (weights
  scaled by 1 / sqrt(fan-in)): what these tests check holds for any params, and the model's own init (a random
  normal per leaf) takes seconds to compile for every variant of the tower."""
  m = VisionTransformer(variant='micro/8', image_size=32, embed_dim=16, **kw)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
  shapes = jax.eval_shape(m.init, jax.random.key(1), images)
  draw = lambda x: (rng.standard_normal(x.shape) / np.sqrt(x.shape[0] if x.ndim > 1 else 1)).astype(x.dtype)
  return m, jax.tree.map(draw, shapes), images


# ------------------------------------------------------------------------------------------ the tower


def test_keep_all_tokens_is_the_plain_forward_and_order_free_for_gap():
  m, p, x = _tower(pool='gap', cls_token=False)
  apply = jax.jit(m.apply)  # One program per shape of `keep` (a fraction of the time of op by op).
  plain = apply(p, x)
  every = jnp.broadcast_to(jnp.arange(16), (3, 16))
  np.testing.assert_allclose(apply(p, x, keep=every), plain, atol=1e-5)
  # Global attention + GAP is permutation invariant once position embeddings are added: dropping happens after.
  perm = jnp.stack([jax.random.permutation(jax.random.key(i), 16) for i in range(3)])
  np.testing.assert_allclose(apply(p, x, keep=perm), plain, atol=1e-5)
  assert not np.allclose(apply(p, x, keep=every[:, :8]), plain, atol=1e-3)


def test_kept_tokens_attend_by_their_original_grid_positions():
  m = VisionTransformer(variant='micro/8', image_size=48, attention_radius=1, pool='gap', cls_token=True)
  full = m._attention_mask(6, 6, 1)
  keep = jnp.array([[0, 1, 7, 20, 35], [3, 4, 10, 11, 30]])
  x = jnp.zeros((2, 37, 4))
  _, mask = _keep_tokens(x, full, keep, 1)
  for b in range(2):
    yx = [(-1, -1)] + [divmod(int(i), 6) for i in keep[b]]
    want = np.array([[i == 0 or j == 0 or (abs(yi - yj) <= 1 and abs(xi - xj) <= 1)
                      for j, (yj, xj) in enumerate(yx)] for i, (yi, xi) in enumerate(yx)])
    np.testing.assert_array_equal(np.asarray(mask[b, 0]), want)


def _numpy_scores(m, p, intermediates, rows_from_prefix: bool):
  """A-CLIP's score recomputed from each block's query / key projections of its normalized input (`intermediates`:
  those the forward captured)."""
  inter, params = intermediates['Transformer'], p['params']['Transformer']
  num_prefix = int(m.cls_token)
  n = 16 + num_prefix
  mask = m._attention_mask(4, 4, num_prefix)
  layers = []
  for i in range(len([k for k in params if k.startswith('encoderblock_')])):
    y = np.asarray(inter[f'encoderblock_{i}']['LayerNorm_0']['__call__'][0], np.float64)
    att = params[f'encoderblock_{i}']['MultiHeadDotProductAttention_0']
    q = np.einsum('blw,whd->blhd', y, att['query']['kernel']) + np.asarray(att['query']['bias'])
    k = np.einsum('blw,whd->blhd', y, att['key']['kernel']) + np.asarray(att['key']['bias'])
    logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
      logits = np.where(np.asarray(mask), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    rows = w[:, :, num_prefix:n] if rows_from_prefix else w[:, :, :1]
    layers.append(rows.mean(axis=(1, 2)))
  return np.mean(layers, axis=0)[:, num_prefix:].reshape(-1, 4, 4)


@pytest.mark.parametrize('kw, rows_from_prefix', [
    (dict(pool='tok'), False),  # CLS-to-patch attention (the paper).
    (dict(pool='gap', cls_token=False, attention_radius=1), True),  # Mean over patch queries, local attention.
])
def test_token_scores_match_a_numpy_recomputation_from_q_and_k(kw, rows_from_prefix):
  m, p, x = _tower(**kw)

  @jax.jit  # One program: a fraction of the time of op by op.
  def forwards(p, x):
    scores = m.apply(p, x, method=VisionTransformer.token_scores)
    _, state = m.apply(p, x, capture_intermediates=True, mutable=['intermediates'])
    return scores, state['intermediates'], m.apply(p, x, return_scores=True)[0], m.apply(p, x)
  got, intermediates, emb, plain = forwards(p, x)
  np.testing.assert_allclose(got, _numpy_scores(m, p, intermediates, rows_from_prefix), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(emb, plain, atol=1e-5)  # The scores come from the same forward.


def test_token_scores_the_same_with_scan_and_remat():
  m, p, x = _tower(pool='tok')
  ms = VisionTransformer(variant='micro/8', image_size=32, embed_dim=16, pool='tok', scan=True,
                         remat_policy='full')
  blocks = [p['params']['Transformer'].pop(f'encoderblock_{i}') for i in range(2)]
  stacked = {**p['params'], 'Transformer': {**p['params']['Transformer'],
                                            'encoderblock': jax.tree.map(lambda *a: jnp.stack(a), *blocks)}}
  for i, b in enumerate(blocks):
    p['params']['Transformer'][f'encoderblock_{i}'] = b
  np.testing.assert_allclose(ms.apply({'params': stacked}, x, method=VisionTransformer.token_scores),
                             m.apply(p, x, method=VisionTransformer.token_scores), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------- selection


def test_random_keep_draws_distinct_sorted_tokens_per_row():
  keep = np.asarray(masking.random_keep(jax.random.key(0), 64, 36, 0.75))
  assert keep.shape == (64, 9)
  assert all(len(set(r)) == 9 and list(r) == sorted(r) and r.max() < 36 for r in keep)
  assert len({tuple(r) for r in keep}) > 60  # A fresh mask per example.
  np.testing.assert_array_equal(keep, masking.random_keep(jax.random.key(0), 64, 36, 0.75))
  assert not np.array_equal(keep, masking.random_keep(jax.random.key(1), 64, 36, 0.75))


def test_selection_keeps_exactly_the_top_units():
  rng = np.random.default_rng(0)
  scores = rng.random((5, 6, 6)).astype(np.float32)
  units = scores.reshape(5, 3, 2, 3, 2).mean(axis=(2, 4)).reshape(5, 9)
  k = masking.num_kept(9, 0.5)
  for selection, want_units in (('high', np.argsort(-units, 1)[:, :k]), ('low', np.argsort(units, 1)[:, :k])):
    keep = np.asarray(masking.select_by_score(jnp.asarray(scores), 0.5, 2, selection, jax.random.key(0)))
    for b in range(5):
      want = sorted((uy * 2 + dy) * 6 + ux * 2 + dx for u in want_units[b] for uy, ux in [divmod(u, 3)]
                    for dy in range(2) for dx in range(2))
      assert list(keep[b]) == want
  mixed = np.asarray(masking.select_by_score(jnp.asarray(scores), 0.5, 1, 'mixture', jax.random.key(0)))
  k = masking.num_kept(36, 0.5)
  for b in range(5):
    top = set(np.argsort(-scores[b].ravel())[:(k + 1) // 2])
    assert len(set(mixed[b])) == k and top <= set(mixed[b])


def test_scores_resampled_from_the_union_onto_a_view():
  # Jitted: a fraction of the time of op by op.
  scores_in_view = jax.jit(masking.scores_in_view, static_argnums=3)
  random_boxes = jax.jit(masking.random_boxes, static_argnums=(1, 2))
  crop_resize = jax.jit(masking.crop_resize, static_argnums=2)
  scores = jnp.arange(16.0).reshape(1, 4, 4)
  whole = jnp.array([[0.0, 0.0, 1.0, 1.0]])
  np.testing.assert_allclose(scores_in_view(scores, whole, whole, 4), scores, atol=1e-5)
  # The view is the union's top-left quarter: its 2 x 2 grid sits on the union's tokens 0, 1, 4, 5.
  quarter = jnp.array([[0.0, 0.0, 0.5, 0.5]])
  np.testing.assert_allclose(scores_in_view(scores, whole, quarter, 2)[0], [[0, 1], [4, 5]], atol=1e-5)
  boxes = np.asarray(random_boxes(jax.random.key(0), 100, (0.5, 1.0)))
  assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:] <= 1 + 1e-6)
  assert np.all((boxes[:, 2] ** 2 >= 0.5 - 1e-6) & (boxes[:, 2] ** 2 <= 1 + 1e-6))
  union = np.asarray(jax.jit(masking.union_box)(boxes[:50], boxes[50:]))
  assert np.all(union[:, :2] <= np.minimum(boxes[:50, :2], boxes[50:, :2]) + 1e-6)
  image = jnp.broadcast_to(jnp.arange(8.0)[None, :, None, None], (1, 8, 8, 1))  # Value = row index.
  crop = crop_resize(image, jnp.array([[0.5, 0.0, 0.5, 0.5]]), 4)
  np.testing.assert_allclose(crop[0, :, 0, 0], [4, 5, 6, 7], atol=1e-5)


# --------------------------------------------------------------------------------------------- A-CLIP


def test_ema_momentum_schedule_and_update():
  cfg = tiny_config('', **ACLIP).aclip
  assert float(aclip.ema_momentum(cfg, 0, 100)) == pytest.approx(0.996)
  assert float(aclip.ema_momentum(cfg, 50, 100)) == pytest.approx(0.998)
  assert float(aclip.ema_momentum(cfg, 100, 100)) == pytest.approx(1.0)
  ema, new = {'w': jnp.ones(3)}, {'w': jnp.arange(3.0)}
  np.testing.assert_allclose(aclip.update_ema(ema, new, 0.9)['w'], 0.9 + 0.1 * np.arange(3.0), rtol=1e-6)


def _build(tmp_path, devices=1, **overrides):
  """A run of the tiny config on the first `devices` devices (one unless sharding is the point: compiles fast)."""
  config = tiny_config(str(tmp_path), **SMALL, **overrides)
  return run_lib.build(config, None, devices=jax.devices()[:devices], train=False, check_data=False,
                       with_tokenizer=False)


def _batch(run, seed=0):
  c = run.config
  rng = np.random.default_rng(seed)
  return {'image': jnp.asarray(rng.standard_normal((c.batch_size, 32, 32, 3)), jnp.float32),
          'tokens': jnp.asarray(rng.integers(3, c.model.text.vocab_size, (c.batch_size, 12)), jnp.int32)}


def _infonce(a, b, t):
  logits = t * a @ b.T
  ce = lambda l: np.mean(np.log(np.exp(l).sum(1)) - np.diag(l))
  return 0.5 * ce(logits) + 0.5 * ce(logits.T)


# A compiled train step takes far longer to build than anything a test does with it, so each masked run's step is
# compiled once for the module and the tests read the objective from its metrics (`loss` and the terms are the
# objective at the state's step key, before the update) and the gradient from Adam's first moment.
@pytest.fixture(scope='module')
def aclip_run(tmp_path_factory):
  """(run, compiled train step) of A-CLIP with the ring loss on 4 devices (the objective is recomputed densely,
  so the sharded terms are checked with it); views of 30-60 % of the image, so that the two views of an image
  differ."""
  run = _build(tmp_path_factory.mktemp('aclip'), 4, **ACLIP, **{'aclip.view_crop_scale': (0.3, 0.6),
                                                                 'loss.impl': 'ring'})
  return run, run_lib.compile_train_step(run)


@pytest.fixture(scope='module')
def flip_run(tmp_path_factory):
  """(run, compiled train step) of FLIP at mask ratio 0.5 whose last 3 of 8 steps keep every token, with the
  full-batch gradient (the grad cache's reference), on 2 devices."""
  run = _build(tmp_path_factory.mktemp('flip'), 2, **{'flip.mask_ratio': 0.5, 'flip.unmasked_steps': 3})
  return run, run_lib.compile_train_step(run)


def test_aclip_objective_matches_an_independent_recomputation(aclip_run):
  """Each term recomputed densely in float64 from the public pieces; SimCLR must pair the two *different* masked
  views. The run's image-text and SimCLR terms go through contrastive_loss with its impl (the ring on 4 devices),
  so this also checks that the objective shards like the loss: ring == dense."""
  run, step = aclip_run
  state, batch = run_lib.create_state(run), _batch(run)
  key = train_step.step_key(state)
  params, ema = jax.device_get((state.params, state.ema))
  _, terms = step(state, batch)  # The state is donated: read above what the recomputation needs.
  a, model, heads = run.config.aclip, run.model, aclip.heads_from_config(run.config)
  b = run.config.batch_size

  @jax.jit  # One program: a fraction of the time of op by op.
  def pieces(params, ema, batch, key):
    """The text embeddings, the EMA tower's embedding of the union view, and each masked view's embedding with
    its SimCLR projection and BYOL prediction."""
    k1, k2, s1, s2 = jax.random.split(key, 4)
    boxes = [masking.random_boxes(k, b, a.view_crop_scale) for k in (k1, k2)]
    union = masking.union_box(*boxes)
    teacher = {'params': {**params, 'img': ema}}
    target, scores = model.apply(teacher, masking.crop_resize(batch['image'], union, 32), return_scores=True,
                                 method=TwoTower.embed_image)
    ztxt = model.apply({'params': params}, None, batch['tokens'])[1]
    views = []
    for box, k in zip(boxes, (s1, s2)):
      keep = masking.select_by_score(masking.scores_in_view(scores, union, box, 4), 0.5, 1, 'high', k)
      h = model.apply({'params': params}, masking.crop_resize(batch['image'], box, 32), keep=keep,
                      method=TwoTower.embed_image)
      views.append((h, *heads.apply({'params': params['aclip']}, h)))
    return ztxt, target, views

  ztxt, target, views = pieces(params, ema, batch, key)
  ztxt = np.asarray(ztxt, np.float64)
  t = float(np.exp(params['t']))
  norm = lambda z: np.asarray(l2_normalize(z), np.float64)
  clip = sum(_infonce(norm(h), ztxt, t) for h, _, _ in views)
  simclr = _infonce(norm(views[0][1]), norm(views[1][1]), 1 / a.simclr_temperature)
  byol = np.mean([np.mean(2 - 2 * np.sum(norm(pred) * norm(target), -1)) for _, _, pred in views])
  np.testing.assert_allclose([terms['clip'], terms['simclr'], terms['byol']], [clip, simclr, byol], rtol=2e-4)
  same_view = _infonce(norm(views[0][1]), norm(views[0][1]), 1 / a.simclr_temperature)
  assert abs(simclr - same_view) > 1e-2  # The views differ, so feeding one twice would be caught.
  np.testing.assert_allclose(terms['loss'], 0.5 * clip + simclr + 2 * byol, rtol=2e-4)


@pytest.mark.parametrize('masked_run', ['aclip_run', 'flip_run'])
def test_masked_training_resumes_exactly(tmp_path, masked_run, request):
  """Masks come from fold_in(rng, step) and the EMA is in the checkpoint: 2 + 1 steps == 3 steps. (A-CLIP: the
  EMA update is checked on the way.) Two steps before the checkpoint: the first has lr 0 (warmup), so only after
  the second do the params differ from the EMA and the init."""
  run, step = request.getfixturevalue(masked_run)
  batches = [_batch(run, seed) for seed in range(3)]

  def checked_step(state, i):
    old_ema = jax.device_get(state.ema)
    state, metrics = step(state, batches[i])
    if old_ema is not None:  # The EMA follows the new params with the scheduled momentum.
      m = float(metrics['ema_momentum'])
      assert m == pytest.approx(float(aclip.ema_momentum(run.config.aclip, i, run.config.total_steps)))
      want = jax.tree.map(lambda e, p: m * e + (1 - m) * p, old_ema, jax.device_get(state.params['img']))
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), jax.device_get(state.ema),
                   want)
    return state

  state = checked_step(checked_step(run_lib.create_state(run), 0), 1)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'w'))
  ckpt.save(2, state, force=True)
  ckpt.wait()
  resumed = ckpt.restore(run.abstract_state, step=2)  # Before the straight step, which donates `state`.
  ckpt.close()
  straight = checked_step(state, 2)
  resumed, _ = step(resumed, batches[2])
  plain = lambda s: jax.device_get(s.replace(rng=jax.random.key_data(s.rng)))
  jax.tree.map(np.testing.assert_array_equal, plain(resumed), plain(straight))


# ----------------------------------------------------------------------------------------------- FLIP


def test_flip_masks_in_training_and_not_in_the_unmasked_phase(flip_run):
  run, step = flip_run
  state, batch = run_lib.create_state(run), _batch(run)
  loss_fn = train_step.loss_fn_from_config(run.config, run.mesh)

  def plain_loss(params, batch):  # Every token: the tower without `keep`.
    zimg, ztxt, _ = run.model.apply({'params': params}, batch['image'], batch['tokens'])
    return loss_fn(zimg, ztxt, *logit_params(params))
  plain = jax.jit(plain_loss)(state.params, batch)
  # A copy, as the step donates its state; the step counter placed like the state's, so the step is not compiled
  # again for it.
  late = jax.tree.map(jnp.copy, state).replace(step=jax.device_put(jnp.int32(5), state.step.sharding))
  assert abs(float(step(state, batch)[1]['loss']) - float(plain)) > 1e-4  # Step 0: masked.
  np.testing.assert_allclose(step(late, batch)[1]['loss'], plain, rtol=1e-6)  # Steps 5-7: every token.


def test_flip_grad_cache_equals_the_full_batch_gradient(flip_run, tmp_path):
  """Gradient caching with FLIP's masks (each microbatch keeps its own rows' masks) against the full-batch
  gradient of the FLIP run's first step, on the same state, batch and masks."""
  full, step = flip_run
  cached = _build(tmp_path, 2, **{'flip.mask_ratio': 0.5, 'grad_cache.microbatch': 8})  # Step 0 masks either way.
  state, batch = run_lib.create_state(full), _batch(full)
  lc, gc, _ = jax.jit(train_step.make_loss_and_grad(cached.model, cached.config, cached.mesh))(state, batch)
  state, metrics = step(state, batch)  # Donates the state: the cached gradient is taken above.
  np.testing.assert_allclose(lc, metrics['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), jax.device_get(gc),
               first_update_gradient(full, state.opt_state, metrics['grad_norm']))


@pytest.mark.parametrize('overrides, field', [
    ({'flip.mask_ratio': 1.0}, 'flip.mask_ratio'),
    ({**ACLIP, 'aclip.unit': 3}, 'aclip.unit'),
    ({**ACLIP, 'grad_cache.microbatch': 8}, 'grad_cache.microbatch'),
    ({**ACLIP, 'flip.mask_ratio': 0.5}, 'flip.mask_ratio'),
    ({**ACLIP, 'aclip.selection': 'top'}, 'aclip.selection'),
    ({**ACLIP, 'aclip.view_crop_scale': (0.9, 0.5)}, 'aclip.view_crop_scale'),
])
def test_masking_config_mistakes_are_named_before_the_run(overrides, field):
  with pytest.raises(ConfigError, match=f'config.{field}'):
    validate(tiny_config('', **overrides), None, num_devices=8, check_data=False)
