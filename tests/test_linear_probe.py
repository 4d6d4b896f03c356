"""Tests of the linear-probe evaluator: the JAX fit against scikit-learn's LogisticRegression (the same
objective with C = 1 / (l2 * n)) on Gaussian clusters and on a tiny model's features of the tiny shapes world,
k-shot draws, the evaluator end to end through a config (by shape and by colour), and its config checks."""

import copy
import logging
import os
import re

import jax
import numpy as np
import pytest

from configs import base
from configs import shapes as shapes_config
from tests.test_evaluators import random_params
from vitclip import config as config_lib
from vitclip import evaluators, sharding
from vitclip.data import folder, shapes, sources
from vitclip.errors import ConfigError
from vitclip.evaluators import EVALUATORS
from vitclip.evaluators import linear_probe as lp
from vitclip.models import build_model
from vitclip.tokenizer import Tokenizer, train_bpe

SETTINGS = dict(image_size=32, num_train=160, num_validation=40, num_test=200, seed=0)
GRID = (1e-4, 1e-2, 1.0)
SHOTS = (1, 2, 4)
DRAWS = 3
TOL_POINTS = 0.005  # Accuracy difference allowed between the JAX fit and scikit-learn: half a point.


def sklearn_fit(x, y, l2):
  """scikit-learn's multinomial logistic regression at the same strength, to tight tolerance, in float64 (a
  test-only dependency, requirements.txt; the tests that compare with it skip without it)."""
  linear_model = pytest.importorskip('sklearn.linear_model')
  import threadpoolctl  # scikit-learn's own dependency.
  model = linear_model.LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000)
  with threadpoolctl.threadpool_limits(1):  # Tiny problems: BLAS threads next to XLA's made it 15x slower.
    return model.fit(x.astype(np.float64), y)


def objective64(weights, bias, x, y, l2):
  """The objective of `lp.objective` in float64 numpy (mean cross-entropy + l2/2 ||W||²)."""
  logits = x.astype(np.float64) @ weights + bias
  peak = logits.max(1, keepdims=True)
  lse = np.log(np.exp(logits - peak).sum(1)) + peak[:, 0]
  return float(np.mean(lse - logits[np.arange(len(y)), y]) + 0.5 * l2 * np.sum(weights.astype(np.float64) ** 2))


def assert_matches_sklearn(fitted: lp.Fit, r: int, x, y, x_test, y_test, l2):
  """Problem r of `fitted` against scikit-learn on (x, y): test accuracy within half a point, objective and
  weights close."""
  ref = sklearn_fit(x, y, l2)
  ours = float(np.mean(fitted.predict(x_test)[r] == y_test))
  theirs = ref.score(x_test.astype(np.float64), y_test)
  assert abs(ours - theirs) <= TOL_POINTS, (l2, ours, theirs)
  w, b = fitted.weights[r], fitted.bias[r]
  assert objective64(w, b, x, y, l2) == pytest.approx(objective64(ref.coef_.T, ref.intercept_, x, y, l2), rel=1e-6)
  assert np.linalg.norm(w - ref.coef_.T) <= 2e-3 * np.linalg.norm(ref.coef_)
  # The intercepts: both start from 0 and every gradient in b sums to 0 over classes, so both stay centred.
  np.testing.assert_allclose(b, ref.intercept_, atol=1e-2 * max(1.0, np.abs(ref.intercept_).max()))


# ------------------------------------------------------------------------------------- the fit, k-shot


def test_fit_matches_sklearn_on_gaussian_clusters():
  """Three strengths; 30 extra rows of weight 0 change nothing (scikit-learn never sees them). The shapes (160
  rows of 32 features, 8 classes) are those of the suite's full-probe fits below: nothing new to compile."""
  rng = np.random.default_rng(0)
  num_classes, dim, n, junk = 8, 32, 130, 30
  centers = 0.4 * rng.normal(size=(num_classes, dim))

  def sample(m):
    y = rng.integers(0, num_classes, m)
    return (centers[y] + rng.normal(size=(m, dim))).astype(np.float32), y

  (x, y), (x_test, y_test) = sample(n), sample(4000)
  mean, scale = lp.normalizer(x)
  x, x_test = (x - mean) / scale, (x_test - mean) / scale
  x_all = np.concatenate([x, 5 * rng.normal(size=(junk, dim)).astype(np.float32)])[None]
  y_all = np.concatenate([y, rng.integers(0, num_classes, junk)])[None]
  w_all = np.concatenate([np.ones(n), np.zeros(junk)]).astype(np.float32)[None]
  precond = lp.preconditioner(x)
  for l2 in (1e-1, 1e-3, 1e-5):
    # tol 1e-6 (the evaluator's default is 1e-5): at l2 = 1e-5, 1e-5 leaves the objective 6e-5 above scikit-learn's.
    fitted = lp.fit(x_all, y_all, w_all, l2, num_classes, precond, tol=1e-6, max_steps=1000)
    assert fitted.grad_max[0] <= 1e-6 and fitted.steps[0] < 1000  # Converged, well before max_steps.
    assert_matches_sklearn(fitted, 0, x, y, x_test, y_test, l2)


def test_kshot_draws_exactly_k_per_class():
  labels = np.repeat([0, 1, 3], [5, 9, 4])  # Class 2 absent: not drawn.
  draw = lp.kshot_indices(labels, 3, [0, 3, 0])
  assert len(draw) == len(set(draw.tolist())) == 9
  assert [int(np.sum(labels[draw] == c)) for c in (0, 1, 2, 3)] == [3, 3, 0, 3]
  np.testing.assert_array_equal(draw, lp.kshot_indices(labels, 3, [0, 3, 0]))  # Same seed, same draw.
  others = [lp.kshot_indices(labels, 3, [0, 3, r]) for r in range(1, 4)]
  assert all(not np.array_equal(draw, o) for o in others)  # Different draws differ.
  with pytest.raises(ValueError, match='class 3 has 4 training examples, fewer than 5'):
    lp.kshot_indices(labels, 5, 0)


def test_sklearn_is_a_test_only_reference():
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'vitclip')
  imports = re.compile(r'^\s*(import|from)\s+sklearn\b', re.MULTILINE)
  for directory, _, files in os.walk(root):
    for name in files:
      if name.endswith('.py'):
        with open(os.path.join(directory, name)) as f:
          assert not imports.search(f.read()), os.path.join(directory, name)


# ------------------------------------------------------------------------------ end to end: tiny model


@pytest.fixture(scope='module')
def suite(tmp_path_factory):
  """linear_probe on the tiny shapes world, by shape and by colour, through the config; a micro model with
  random params (its features separate the classes only partly, which makes the probe's choices matter)."""
  data_dir = str(tmp_path_factory.mktemp('data'))
  shapes.prepare(data_dir, **SETTINGS)
  train, _ = sources.load_source(shapes.full_name(**SETTINGS), 'train', data_dir)
  tok_path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.json')
  train_bpe([c for i in range(20) for c in sources.decode_captions(train[i])], 300).save(tok_path)
  c = shapes_config.get_config()
  c.data.shapes.update(SETTINGS)
  c.model.embed_dim = 32
  c.model.image.variant, c.model.image.image_size = 'micro/8', 32
  c.model.text.variant, c.model.text.max_len = 'micro', 16
  tok = Tokenizer.from_file(tok_path, c.model.text.max_len)
  c.model.text.vocab_size, c.model.text.eos_id, c.model.text.pad_id = tok.vocab_size, tok.eos_id, tok.pad_id
  c.evals.names = ('linear_probe',)
  c.evals.batch_size = 40
  c.evals.linear_probe.update(datasets=('shapes', 'shapes:color'), l2_grid=GRID, shots=SHOTS, draws=DRAWS)
  c = config_lib.resolve(c)
  evaluators.check_config(c, data_dir)
  mesh = sharding.make_mesh([('data', -1)])
  return evaluators.Suite(c, build_model(c.model), tok, mesh, str(tmp_path_factory.mktemp('work')), data_dir)


@pytest.fixture(scope='module')
def params(suite):
  return random_params(suite.ctx.model, suite.ctx.config.model.text.max_len)


@pytest.fixture(scope='module')
def run_once(suite, params):
  """(results, warning lines) of one `suite.run`."""
  warnings = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = lambda record: warnings.append(record.getMessage())
  logging.getLogger().addHandler(handler)
  try:
    return suite.run(params), warnings
  finally:
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope='module')
def results(run_once):
  return run_once[0]


@pytest.fixture(scope='module')
def features(suite, params):
  """{split: (features float32 [N, D], {'label': int [N], 'color': int [N]})} through the run's own encoder."""
  ctx, out = suite.ctx, {}
  for split in ('train', 'validation', 'test'):
    source, _ = sources.load_source(shapes.full_name(**SETTINGS), split, ctx.data_dir)
    records = [source[i] for i in range(len(source))]
    spec, bs = ctx.image_spec(), ctx.batch_size
    images = np.stack([spec.eval_view(sources.decode_image(r)) for r in records])
    images = np.concatenate([images, np.zeros((-len(images) % bs,) + images.shape[1:], images.dtype)])
    batches = [jax.device_put(images[i:i + bs], sharding.batch_sharding(ctx.mesh)) for i in range(0, len(images), bs)]
    x = np.concatenate([ctx.encode_image_batch(params, batch) for batch in batches])[:len(records)]
    out[split] = x, {f: np.array([r[f] for r in records]) for f in ('label', 'color')}
  return out


def test_registered_with_a_base_config_section():
  assert EVALUATORS['linear_probe'] is lp.LinearProbe
  c = base.get_config()
  assert c.evals.linear_probe.datasets == () and c.evals.linear_probe.shots == (1, 2, 4, 8, 16)
  c.evals.names = ('linear_probe',)
  evaluators.check_config(c, None)


def test_end_to_end_keys_and_convergence(run_once):
  results, warnings = run_once
  assert not [w for w in warnings if 'linear_probe' in w], warnings  # Every fit converged; no k skipped.
  keys = {'top1', 'l2', 'val_top1'} | {f'{k}shot/{m}' for k in SHOTS for m in ('top1', 'top1_std', 'l2')}
  assert set(results) == {f'linear_probe/{ds}/{k}' for ds in ('shapes', 'shapes_color') for k in keys}
  for ds in ('shapes', 'shapes_color'):
    assert results[f'linear_probe/{ds}/l2'] in GRID and results[f'linear_probe/{ds}/1shot/l2'] in GRID
    assert all(0 <= results[f'linear_probe/{ds}/{m}'] <= 1 for m in ['top1', 'val_top1'] + [
        f'{k}shot/top1' for k in SHOTS])
    assert results[f'linear_probe/{ds}/1shot/top1_std'] > 0  # Draws differ.
  assert results['linear_probe/shapes/top1'] != results['linear_probe/shapes_color/top1']


@pytest.mark.parametrize('feature', ['label', 'color'])
def test_protocol_matches_sklearn_on_model_features(results, features, feature):
  """The suite's numbers equal scikit-learn's run of the same protocol on the model's features (held-out
  search on the stratified 20% of train, refit on all of train at the chosen l2, accuracy on test), and the
  JAX fit at each grid value matches scikit-learn's."""
  (x, labels), (x_test, test_labels) = features['train'], features['test']
  y, y_test = labels[feature], test_labels[feature]
  mean, scale = lp.normalizer(x)
  x, x_test = (x - mean) / scale, (x_test - mean) / scale
  parts = folder.stratified_split(y, {'fit': 0.8, 'held': 0.2}, seed=0)
  held = {}
  for l2 in sorted(GRID, reverse=True):
    held[l2] = sklearn_fit(x[parts['fit']], y[parts['fit']], l2).score(x[parts['held']], y[parts['held']])
  key = 'shapes' if feature == 'label' else 'shapes_color'
  chosen = results[f'linear_probe/{key}/l2']
  assert held[chosen] == pytest.approx(max(held.values()), abs=1 / len(parts['held']) + 1e-9)
  reference = sklearn_fit(x, y, chosen).score(x_test, y_test)
  assert results[f'linear_probe/{key}/top1'] == pytest.approx(reference, abs=TOL_POINTS)
  ones = np.ones((1, len(y)), np.float32)
  for l2 in sorted({GRID[0], chosen}):  # The shapes of the suite's final fit: nothing new to compile.
    fitted = lp.fit(x[None], y[None], ones, l2, 8, lp.preconditioner(x), tol=1e-5, max_steps=1000)
    assert_matches_sklearn(fitted, 0, x, y, x_test, y_test, l2)


def test_validation_split_and_full_strength_for_kshot(suite, params, results, features):
  """val_split='validation': l2 chosen on that split (the fit is all of train, no refit); shots_l2='full':
  every k-shot probe uses the full probe's l2."""
  cfg = copy.deepcopy(suite.ctx.config.evals.linear_probe)
  cfg.update(datasets=('shapes',), val_split='validation', shots_l2='full')
  got = lp.LinearProbe(suite.ctx, cfg).run(params)
  (x, labels), (x_val, val_labels) = features['train'], features['validation']
  mean, scale = lp.normalizer(x)
  chosen = got['linear_probe/shapes/l2']
  reference = sklearn_fit((x - mean) / scale, labels['label'], chosen).score((x_val - mean) / scale,
                                                                            val_labels['label'])
  assert got['linear_probe/shapes/val_top1'] == pytest.approx(reference, abs=1 / len(x_val) + 1e-9)
  assert all(got[f'linear_probe/shapes/{k}shot/l2'] == chosen for k in SHOTS)
  assert got != {k: v for k, v in results.items() if k.startswith('linear_probe/shapes/')}


CHECKS = [
    ({'datasets': ('nothing',)}, "config.evals.linear_probe.datasets names 'nothing', which is not prepared"),
    ({'val_split': 'dev'}, "config.evals.linear_probe.val_split='dev': data set 'shapes' has no such split"),
    ({'test_split': ''}, "config.evals.linear_probe.test_split='': name a split"),
    ({'test_split': 'train'}, 'must differ'),
    ({'datasets': ('shapes:shade',)}, "has no class feature 'shade'"),
    ({'datasets': ('shapes:num_objects',)}, "feature 'num_objects' of data set 'shapes' is a Scalar, not a ClassLabel"),
    ({'shots': (0, 1)}, 'config.evals.linear_probe.shots=(0, 1): give distinct'),
    ({'shots': (2, 2)}, 'config.evals.linear_probe.shots=(2, 2): give distinct'),
    ({'shots': (1, 32)}, "32 examples of each of the 8 classes of 'shapes' need 256 training examples, but split "
                         "'train' has 160; use at most 20 shots"),
    ({'l2_grid': (0.1, -1.0)}, 'config.evals.linear_probe.l2_grid=(0.1, -1.0): give distinct positive'),
    ({'l2_grid': ()}, 'config.evals.linear_probe.l2_grid=()'),
    ({'val_fraction': 1.5}, 'config.evals.linear_probe.val_fraction=1.5'),
    ({'shots_l2': 'best'}, "config.evals.linear_probe.shots_l2='best' is unknown"),
    ({'draws': 0}, 'config.evals.linear_probe.draws=0 must be an integer >= 1'),
    ({'tol': 0.0}, 'config.evals.linear_probe.tol=0.0 must be positive'),
    ({'max_examples': -2}, 'config.evals.linear_probe.max_examples='),
]


@pytest.mark.parametrize('overrides, message', CHECKS, ids=[m[:40] for _, m in CHECKS])
def test_check_config_names_the_field(suite, overrides, message):
  c = copy.deepcopy(suite.ctx.config)
  c.evals.linear_probe.update(overrides)
  with pytest.raises(ConfigError) as e:
    evaluators.check_config(c, suite.ctx.data_dir)
  assert message in str(e.value)
