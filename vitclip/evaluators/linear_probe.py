"""Linear probe and k-shot probes: L2-regularised multinomial logistic regression on frozen image features.

Protocol (CLIP, Radford et al. 2021): image features of a labelled train split; the regularisation strength is
chosen on held-out data by a sweep over `l2_grid`; a final fit on all of train with that strength; accuracy on the
test split. The held-out data are `val_split` when set (e.g. 'validation'; the sweep then fits all of train, so
its fit at the chosen strength is the final one), else a stratified, seeded `val_fraction` of train
(`folder.stratified_split`), refitted with the rest of train at the end.

The fit minimises, per problem,

    mean over examples of CE(x W + b, y)  +  (l2 / 2) ||W||²        (the intercept b is not penalised)

with L-BFGS (optax.lbfgs and its zoom line search) in a jitted while loop, float32, from zero, until the largest
absolute gradient entry is at most `tol` (or `max_steps`; a fit that stops there is reported as a warning). The
objective is convex, and strictly convex in W for l2 > 0, so every converged fit gives the same W and
predictions (b is fixed up to a constant shift, and stays centred from zero since every gradient in b sums to
zero over classes). scikit-learn's `LogisticRegression(C=C)` minimises C·Σ CE + ||W||² / 2, the same objective
times C·n, so l2 = 1 / (C·n) for n training examples (tests/test_linear_probe.py checks the two against each
other). With the mean, the penalty weighs against the average example whatever the data set's size.

Preconditioning: L-BFGS runs over V in W = U · diag(s) · V, U the principal axes of the train features, s_j =
1 / sqrt(variance_j + l2). This changes variables, not the objective (still that of W, so the same minimiser),
and makes the Hessian roughly the identity: embeddings of real models have directions of tiny variance, where
the curvature is little more than l2. On the features of a micro model trained 8 steps on the shapes world
(512 images, labels by shape), plain L-BFGS needed 128 steps at l2 = 1e-4, 831 at 1e-6 and did not converge in
1,000 at 1e-7; preconditioned, 13 to 23 at every l2 from 1e-1 to 1e-7 (by colour, which those features nearly
separate, up to 154).

Features: the image embeddings minus their mean over the train split, divided by one number, the root mean
square norm of the centred train features. Embeddings typically share a large common component (unit vectors
in a narrow cone); centring moves it into the intercept, which is not penalised, so the penalty acts only on the
directions that tell classes apart. One global scale (not one per dimension) keeps the geometry of the embedding
and makes an l2 value mean the same for every model and width. No label is used for either.

k-shot probes: for each k in `shots`, `draws` seeded draws of exactly k training examples per class (from the
examples the sweep fits on, i.e. train less its held-out part), each fitted and tested; mean and standard
deviation (ddof 0) over the draws. The strength: with `shots_l2='search'` the grid value whose fits score best
on the held-out data on average over the draws (a validation search, as the full probe's, using the same held-out
labels); with 'full' the strength chosen for the full probe. A class with fewer than k training examples skips
that k, with a warning.

Data set entries are 'name' (classes in the ClassLabel feature 'label') or 'name:feature'. Result keys
`linear_probe/<dataset>/{top1, l2, val_top1}` and `linear_probe/<dataset>/<k>shot/{top1, top1_std, l2}`, with
<dataset> as zero-shot's ('shapes', 'shapes_color').
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from vitclip.data import folder, pipeline, sources
from vitclip.errors import ConfigError
from vitclip.evaluators import common

PREFIX = 'config.evals.linear_probe'
SHOTS_L2 = ('search', 'full')
SPLIT_FIELDS = ('train_split', 'val_split', 'test_split')

# ------------------------------------------------------------------------------------------------ the fit


def objective(params, x: jax.Array, y: jax.Array, w: jax.Array, l2) -> jax.Array:
  """Weighted mean cross-entropy + (l2 / 2)·||W||² (module docstring); the intercept is not penalised.

  Args:
    params: (W float32 [D, C], b float32 [C]).
    x: float32 [N, D] features; y: int [N] classes; w: float32 [N] example weights, 0 = not in this fit (so
      problems of different sizes share one compiled fit), not all 0.
    l2: scalar.
  Returns:
    float32 scalar.
  """
  weights, bias = params
  logits = x @ weights + bias
  # CE = log(1 + sum over k != y of exp(z_k - z_y)) = softplus(logsumexp over k != y of (z_k - z_y)). Written so,
  # a well-classified example's tiny loss keeps its float32 precision; logsumexp(z) - z_y would round it to
  # multiples of eps * |z_y|, and on (nearly) separable data that noise stalls the line search.
  margins = logits - jnp.take_along_axis(logits, y[:, None], axis=-1)
  others = jnp.where(jnp.arange(logits.shape[-1]) == y[:, None], -jnp.inf, margins)
  ce = jax.nn.softplus(jax.nn.logsumexp(others, axis=-1))
  return jnp.sum(w * ce) / jnp.sum(w) + 0.5 * l2 * jnp.sum(weights * weights)


def _max_abs(tree) -> jax.Array:
  return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(tree)]))


def _lbfgs(x, y, w, l2, basis, variances, init, tol, max_steps):
  """One problem (shapes as `objective`), preconditioned (module docstring): L-BFGS over V with W = basis ·
  diag(s) · V, s = 1 / sqrt(variances + l2), from `init` = (V, b) zeros, until the largest entry of the gradient
  in (W, b) is at most tol or after max_steps.

  Args:
    basis: float32 [D, D] orthonormal columns; variances: float32 [D] >= 0, the train features' variance along
      each column.
  Returns:
    ((W [D, C], b [C]), steps int, max |gradient| float32).
  """
  s = jax.lax.rsqrt(variances + l2)[:, None]  # [D, 1]
  # The objective of W itself, so the minimiser is exactly `objective`'s even where float32 leaves the basis
  # slightly off orthonormal; only the path there changes.
  fn = lambda p: objective((basis @ (s * p[0]), p[1]), x, y, w, l2)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fn)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fn)
    return optax.apply_updates(params, updates), state

  def grad_max(state):
    # The state holds the gradient at the current params (the line search computed it); zeros before step 1.
    grad_v, grad_b = optax.tree_utils.tree_get(state, 'grad')
    return _max_abs((basis @ (grad_v / s), grad_b))  # d/dW = basis · diag(1/s) · d/dV.

  def running(carry):
    count = optax.tree_utils.tree_get(carry[1], 'count')
    return (count == 0) | ((count < max_steps) & (grad_max(carry[1]) > tol))

  (v, b), state = jax.lax.while_loop(running, step, (init, solver.init(init)))
  return (basis @ (s * v), b), optax.tree_utils.tree_get(state, 'count'), grad_max(state)


# R independent problems of equal shapes at once (k-shot draws; R = 1 for the full probe), one preconditioner.
_fit_batch = jax.jit(jax.vmap(_lbfgs, in_axes=(0, 0, 0, 0, None, None, 0, None, None)))


@dataclasses.dataclass
class Fit:
  """R fitted problems: weights float32 [R, D, C], bias float32 [R, C]; steps int [R]; grad_max float [R], the
  largest absolute gradient entry at the end (converged where <= the tol it was fitted with)."""
  weights: np.ndarray
  bias: np.ndarray
  steps: np.ndarray
  grad_max: np.ndarray

  def predict(self, x: np.ndarray) -> np.ndarray:
    """x: float32 [N, D], the same examples for every problem -> int [R, N] predicted classes."""
    return np.stack([(x @ weights + bias).argmax(-1) for weights, bias in zip(self.weights, self.bias)])


def fit(x, y, w, l2, num_classes: int, precond: tuple[np.ndarray, np.ndarray], *, tol: float,
        max_steps: int) -> Fit:
  """Fits R problems of the `objective` at once, each from zero (jitted; one compilation per shape).

  Args:
    x: float32 [R, N, D]; y: int [R, N]; w: float32 [R, N] (see `objective`), numpy or jax arrays.
    l2: float or float [R].
    num_classes: C (classes absent from y get a never-predicted column).
    precond: (basis float32 [D, D], variances float32 [D]) from `preconditioner`; it changes how fast the fit
      converges, not what it converges to.
    tol, max_steps: stop when max |gradient| <= tol, or after max_steps L-BFGS steps.
  Returns:
    Fit with R problems.
  """
  r, _, d = x.shape
  init = (jnp.zeros((r, d, num_classes), jnp.float32), jnp.zeros((r, num_classes), jnp.float32))
  l2 = jnp.broadcast_to(jnp.asarray(l2, jnp.float32), (r,))
  basis, variances = (jnp.asarray(a, jnp.float32) for a in precond)
  (weights, bias), steps, grad_max = _fit_batch(
      jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.asarray(w, jnp.float32), l2, basis, variances,
      init, jnp.float32(tol), jnp.int32(max_steps))
  return Fit(np.asarray(weights), np.asarray(bias), np.asarray(steps), np.asarray(grad_max))


def fit_grid(x, y, w, l2_grid, num_classes: int, precond, *, tol: float, max_steps: int) -> dict[float, Fit]:
  """`fit` at every l2 of the grid, each from zero.

  Returns:
    {l2: Fit}, in decreasing l2.
  """
  x, y, w = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.asarray(w, jnp.float32)  # Copied once.
  return {l2: fit(x, y, w, l2, num_classes, precond, tol=tol, max_steps=max_steps)
          for l2 in sorted(set(float(v) for v in l2_grid), reverse=True)}


def normalizer(x_train: np.ndarray) -> tuple[np.ndarray, float]:
  """(mean float32 [D], scale): x -> (x - mean) / scale centres the train features and gives them root mean
  square norm 1 (module docstring). x_train: float [N, D]."""
  mean = x_train.mean(axis=0)
  scale = float(np.sqrt(np.mean(np.sum((x_train - mean) ** 2, axis=-1))))
  return mean.astype(np.float32), max(scale, 1e-12)


def preconditioner(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Principal components of centred features x float [N, D]: (basis float32 [D, D] orthonormal columns,
  variances float32 [D] >= 0 along them)."""
  x = jnp.asarray(x, jnp.float32)
  variances, basis = jnp.linalg.eigh(x.T @ x / x.shape[0])
  return np.asarray(basis), np.maximum(np.asarray(variances), 0)


# ---------------------------------------------------------------------------------------------- protocol


def kshot_indices(labels: np.ndarray, k: int, seed) -> np.ndarray:
  """Exactly k distinct examples of every class present in `labels`.

  Args:
    labels: int [N].
    k: examples per class.
    seed: an int or a sequence of ints (numpy SeedSequence entropy): the same seed, the same draw.
  Returns:
    int64 [k * classes present] indices into labels, k per class in class order.
  Raises:
    ValueError: naming a class with fewer than k examples.
  """
  rng = np.random.default_rng(seed)
  out = []
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    if len(members) < k:
      raise ValueError(f'class {int(cls)} has {len(members)} training examples, fewer than {k}')
    out.append(np.sort(rng.choice(members, k, replace=False)))
  return np.concatenate(out).astype(np.int64)


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """int [R, N], int [N] or [R, N] -> float [R]."""
  return np.mean(predictions == labels, axis=-1)


def _converged(fits, tol: float, what: str):
  grad_max = np.concatenate([f.grad_max for f in fits])
  if np.any(grad_max > tol):
    logging.warning('%s: %d of %d fits stopped at max_steps with max |gradient| up to %.2g > tol=%g; raise '
                    '--%s.max_steps.', what, int(np.sum(grad_max > tol)), len(grad_max), float(grad_max.max()),
                    tol, PREFIX)


def probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], num_classes: int, cfg,
          val: tuple[np.ndarray, np.ndarray] | None = None, what: str = 'linear_probe') -> dict[str, float]:
  """The full and k-shot probes of one labelled feature set (module docstring).

  Args:
    train, test, val: (features float [N, D], labels int [N]); val None: hold out cfg.val_fraction of train.
    num_classes: C, the number of classes of the label feature.
    cfg: `config.evals.linear_probe` (l2_grid, val_fraction, shots, draws, shots_l2, seed, tol, max_steps,
      train_split for messages).
    what: the name for log lines.
  Returns:
    {'top1', 'l2', 'val_top1', '<k>shot/top1', '<k>shot/top1_std', '<k>shot/l2': float}.
  """
  mean, scale = normalizer(train[0])
  norm = lambda x: ((x - mean) / scale).astype(np.float32)
  x, y = norm(train[0]), np.asarray(train[1])
  x_test, y_test = norm(test[0]), np.asarray(test[1])
  if val is None:
    parts = folder.stratified_split(y, {'fit': 1 - cfg.val_fraction, 'held': cfg.val_fraction}, cfg.seed)
    pool, x_held, y_held = parts['fit'], x[parts['held']], y[parts['held']]
  else:
    pool, x_held, y_held = np.arange(len(y)), norm(val[0]), np.asarray(val[1])

  precond = preconditioner(x)
  if not len(y_held):
    raise ValueError(f'{what}: no held-out examples to choose l2 on: every class of split '
                     f'{cfg.train_split!r} has one example; set --{PREFIX}.val_split to a split.')
  settings = dict(tol=cfg.tol, max_steps=cfg.max_steps)

  # The sweep fits the pool (train less the held-out part) with weights over all of train, so the final fit on
  # all of train has the same shapes (one compilation).
  in_pool = np.zeros((1, len(y)), np.float32)
  in_pool[0, pool] = 1
  fits = fit_grid(x[None], y[None], in_pool, cfg.l2_grid, num_classes, precond, **settings)
  held = {l2: float(_accuracy(f.predict(x_held), y_held)[0]) for l2, f in fits.items()}
  l2 = max(held, key=held.get)  # The first best in decreasing l2: the strongest of equally good strengths.
  logging.info('%s: held-out top-1 by l2: %s; chose %g', what, ', '.join(f'{k:g}: {v:.4f}' for k, v in held.items()),
               l2)
  final = fits[l2]
  if len(pool) < len(y):
    final = fit(x[None], y[None], np.ones((1, len(y)), np.float32), l2, num_classes, precond, **settings)
  _converged(list(fits.values()) + [final], cfg.tol, what)
  results = {'top1': float(_accuracy(final.predict(x_test), y_test)[0]), 'l2': l2, 'val_top1': held[l2]}
  for k in cfg.shots:
    results.update(_kshot(x[pool], y[pool], (x_held, y_held), (x_test, y_test), k, max(cfg.shots), num_classes,
                          precond, l2, cfg, what))
  return results


def _kshot(x_pool, y_pool, held, test, k: int, max_k: int, num_classes: int, precond, full_l2: float, cfg,
           what: str) -> dict[str, float]:
  """The k-shot results of `probe`: cfg.draws draws of k per class fitted at once (preconditioned with the
  train features', which fits any draw); {} when a class is short."""
  try:
    draws = [kshot_indices(y_pool, k, [cfg.seed, k, r]) for r in range(cfg.draws)]
  except ValueError as e:
    logging.warning('%s: %d-shot skipped: %s.', what, k, e)
    return {}
  # Every k padded to max_k per class with weight-0 rows: one compilation for all shots.
  rows = max_k * len(np.unique(y_pool))
  x = np.zeros((cfg.draws, rows, x_pool.shape[1]), np.float32)
  y = np.zeros((cfg.draws, rows), np.int32)
  w = np.zeros((cfg.draws, rows), np.float32)
  for r, idx in enumerate(draws):
    x[r, :len(idx)], y[r, :len(idx)], w[r, :len(idx)] = x_pool[idx], y_pool[idx], 1
  grid = cfg.l2_grid if cfg.shots_l2 == 'search' else (full_l2,)
  fits = fit_grid(x, y, w, grid, num_classes, precond, tol=cfg.tol, max_steps=cfg.max_steps)
  _converged(fits.values(), cfg.tol, f'{what} {k}-shot')
  held_mean = {l2: float(_accuracy(f.predict(held[0]), held[1]).mean()) for l2, f in fits.items()}
  l2 = max(held_mean, key=held_mean.get)
  top1 = _accuracy(fits[l2].predict(test[0]), test[1])
  return {f'{k}shot/top1': float(top1.mean()), f'{k}shot/top1_std': float(top1.std()), f'{k}shot/l2': l2}


# ---------------------------------------------------------------------------------------------- evaluator


@dataclasses.dataclass
class _Data:
  """One data set entry, opened once per run."""
  key: str  # <dataset> of the metric keys.
  name: str
  feature: str
  num_classes: int


class _Subset:
  """The records `indices` (sorted) of a random-access source."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, indices

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


def _limit(source, max_examples: int, seed: int):
  """At most max_examples records of `source`, a seeded random subset (a class-folder import stores its records
  in class order, so the first N would be the first classes); 0: all."""
  if max_examples <= 0 or max_examples >= len(source):
    return source
  return _Subset(source, np.sort(np.random.default_rng(seed).choice(len(source), max_examples, replace=False)))


def _check_settings(cfg):
  for field in ('train_split', 'test_split'):
    if not isinstance(cfg[field], str) or not cfg[field]:
      raise ConfigError(f'{PREFIX}.{field}={cfg[field]!r}: name a split of the data sets, e.g. '
                        f'{field.split("_")[0]!r}.')
  if not isinstance(cfg.val_split, str):
    raise ConfigError(f"{PREFIX}.val_split={cfg.val_split!r}: name a split, or '' to hold out val_fraction of "
                      'train.')
  named = [cfg[f] for f in SPLIT_FIELDS if cfg[f]]
  if len(set(named)) < len(named):
    raise ConfigError(f'{PREFIX}: train_split={cfg.train_split!r}, val_split={cfg.val_split!r} and '
                      f'test_split={cfg.test_split!r} must differ (a probe is never scored on what it fitted).')
  if not cfg.val_split and not (isinstance(cfg.val_fraction, float) and 0 < cfg.val_fraction < 1):
    raise ConfigError(f'{PREFIX}.val_fraction={cfg.val_fraction!r}: the part of train held out to choose the l2 '
                      'strength; use a number in (0, 1), e.g. 0.2, or set val_split.')
  grid = tuple(cfg.l2_grid) if isinstance(cfg.l2_grid, (tuple, list)) else ()
  if not grid or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf
                     for v in grid) or len(set(grid)) < len(grid):
    raise ConfigError(f'{PREFIX}.l2_grid={cfg.l2_grid!r}: give distinct positive strengths, e.g. '
                      '"(1e-4,1e-3,1e-2)" (scikit-learn C = 1 / (l2 * n)).')
  shots = tuple(cfg.shots) if isinstance(cfg.shots, (tuple, list)) else None
  if shots is None or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in shots) or len(
      set(shots)) < len(shots):
    raise ConfigError(f'{PREFIX}.shots={cfg.shots!r}: give distinct examples-per-class counts >= 1, e.g. '
                      '"(1,2,4,8,16)", or () for the full probe only.')
  for field, minimum in (('draws', 1), ('max_steps', 1), ('seed', 0)):
    value = cfg[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ConfigError(f'{PREFIX}.{field}={value!r} must be an integer >= {minimum}.')
  if cfg.shots_l2 not in SHOTS_L2:
    raise ConfigError(f'{PREFIX}.shots_l2={cfg.shots_l2!r} is unknown; use one of {SHOTS_L2}.')
  if isinstance(cfg.tol, bool) or not isinstance(cfg.tol, (int, float)) or not cfg.tol > 0:
    raise ConfigError(f'{PREFIX}.tol={cfg.tol!r} must be positive (the largest gradient entry at convergence).')
  common.check_max_examples(PREFIX, cfg.max_examples)


def _check_dataset(cfg, config, data_dir, spec: str):
  name, feature = common.parse_dataset(spec, 'label')
  infos = [common.check_dataset(f'{PREFIX}.datasets', name, f'{PREFIX}.{field}', cfg[field], config, data_dir)
           for field in SPLIT_FIELDS if cfg[field]]
  info = infos[0]
  if info is None:  # No data dir, or a generated data set built before the first step.
    return
  field = f'{PREFIX}.datasets entry {spec!r}'
  if feature not in info.features:
    raise ConfigError(f'{field}: data set {name!r} has no class feature {feature!r}; its features are '
                      f'{sorted(info.features)}. Name the feature that holds the class: \'{name}:FEATURE\'.')
  num_classes = getattr(info.features[feature], 'num_classes', None)
  if num_classes is None:
    raise ConfigError(f'{field}: feature {feature!r} of data set {name!r} is a '
                      f'{type(info.features[feature]).__name__}, not a ClassLabel; a probe needs the number of '
                      'classes.')
  try:
    available = info.splits[cfg.train_split].num_examples
  except (KeyError, ValueError):
    return
  if cfg.max_examples:
    available = min(available, cfg.max_examples)
  if cfg.shots and max(cfg.shots) * num_classes > available:
    raise ConfigError(f'{PREFIX}.shots={tuple(cfg.shots)!r}: {max(cfg.shots)} examples of each of the '
                      f'{num_classes} classes of {spec!r} need {max(cfg.shots) * num_classes} training examples, '
                      f'but split {cfg.train_split!r} has {available}; use at most {available // num_classes} '
                      'shots.')


class LinearProbe(common.Evaluator):
  """top1 / l2 / val_top1 and <k>shot/{top1, top1_std, l2} of each data set entry (module docstring)."""
  NAME = 'linear_probe'
  NEEDS = ('a labelled data set with train and test splits, e.g. a class-folder import: python -m '
           'vitclip.data.folder --images DIR --classes_from_subdirs --name NAME')

  def __init__(self, ctx: common.Context, cfg):
    self._sources = {}  # (name, split) -> source, opened once.
    self._infos = {}  # name -> tfds DatasetInfo.
    self._label_features = {}  # name -> the label features its entries read: one image pass per split.
    self._features = {}  # (name, split) -> (features, labels) during one `run`.
    super().__init__(ctx, cfg)

  @classmethod
  def default_feature(cls, cfg) -> str:
    del cfg
    return 'label'

  @classmethod
  def check_config(cls, cfg, config, data_dir):
    _check_settings(cfg)
    for spec in cfg.datasets:
      _check_dataset(cfg, config, data_dir, spec)

  def setup(self, name: str, feature: str) -> _Data:
    if name not in self._label_features:  # A data set's splits are opened once, whatever its entries.
      self._label_features[name] = []
      for field in SPLIT_FIELDS:
        if self.cfg[field]:
          source, self._infos[name] = common.load_source(self.ctx, name, self.cfg[field])
          self._sources[(name, self.cfg[field])] = _limit(source, self.cfg.max_examples, self.cfg.seed)
    if feature not in self._label_features[name]:
      self._label_features[name].append(feature)
    return _Data(common.dataset_key(name, feature), name, feature, self._infos[name].features[feature].num_classes)

  def run(self, params) -> dict[str, float]:
    try:
      return super().run(params)
    finally:
      self._features = {}  # Features belong to these params.

  def _encoded(self, params, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, D], labels int32 [N, F]) of the readable records of a split, F = the label
    features of `name`'s entries; each split of a data set is encoded once per `run`."""
    if (name, split) not in self._features:
      ctx, features = self.ctx, self._label_features[name]
      image_spec = ctx.image_spec()
      convert = lambda r: {'image': image_spec.eval_view(sources.decode_image(r)),
                           'labels': np.array([r[f] for f in features], np.int32)}
      embeddings, labels = [], []
      for batch, valid in pipeline.eval_batches(self._sources[(name, split)], convert, ctx.batch_size, ctx.mesh):
        embeddings.append(ctx.encode_image_batch(params, batch['image'])[valid])
        labels.append(np.asarray(common.gather(batch['labels']))[valid])
      if not sum(len(e) for e in embeddings):
        raise ValueError(f'linear_probe: split {split!r} of data set {name!r} has no readable examples.')
      self._features[(name, split)] = (np.concatenate(embeddings).astype(np.float32), np.concatenate(labels))
    return self._features[(name, split)]

  def evaluate(self, params, data: _Data) -> dict[str, float]:
    column = self._label_features[data.name].index(data.feature)
    split_data = {}
    for field in SPLIT_FIELDS:
      if self.cfg[field]:
        x, labels = self._encoded(params, data.name, self.cfg[field])
        split_data[field] = (x, labels[:, column])
    results = probe(split_data['train_split'], split_data['test_split'], data.num_classes, self.cfg,
                    val=split_data.get('val_split'), what=f'linear_probe/{data.key}')
    return {f'linear_probe/{data.key}/{k}': v for k, v in results.items()}
