"""What every evaluator shares: the run's context with its jitted encoders, evaluation data sets by name (read,
batched, gathered, checked), the text classifier, and the `Evaluator` base class.

An evaluator module imports this one (and the leaf helpers metrics / overlays, and vitclip.templates), never another
evaluator. Evaluators are built once per run (`vitclip.evaluators.Suite`): the context caches its jitted
encoders and each evaluator opens its data sets and builds its jitted functions in `__init__`; `run(params)`
then only evaluates, so periodic evaluation never retraces. Params are an argument all the way down (never
stored), so the same compiled functions serve every checkpoint.
"""

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vitclip import sharding
from vitclip.data import generated, pipeline, sources
from vitclip.errors import ConfigError
from vitclip.tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------- context


@functools.lru_cache(maxsize=16)
def _jitted_encoder(model, mesh, method: str):
  """jit of `model.apply(params, x, method=method)` with batch-sharded output. Equal models (hashable: built from
  plain values) on one mesh share it, so evaluating the same model again in a process traces and compiles
  nothing."""
  return jax.jit(lambda p, x: model.apply({'params': p}, x, method=method),
                 out_shardings=sharding.batch_sharding(mesh))


@dataclasses.dataclass(eq=False)
class Context:
  """The run as evaluators see it: one per `Suite`. Its jitted encoders are shared by equal models on one mesh."""
  config: Any
  model: Any
  tokenizer: Tokenizer
  mesh: Any
  workdir: str
  data_dir: str
  # () -> params of config.init_from (vitclip.run.load_init_from), or None when the caller has none to give.
  init_from_params: Callable[[], Any] | None = None

  @property
  def batch_size(self) -> int:
    """Eval batch rounded up to a multiple of the batch-parallel devices."""
    par = int(np.prod([self.mesh.shape[a] for a in sharding.batch_axes(self.mesh)]))
    return -(-self.config.evals.batch_size // par) * par

  @property
  def _encode_image(self):
    return _jitted_encoder(self.model, self.mesh, 'encode_image')

  @property
  def _encode_text(self):
    return _jitted_encoder(self.model, self.mesh, 'encode_text')

  def encode_texts(self, params, texts: Sequence[str]) -> np.ndarray:
    """N strings -> float32 [N, D] L2-normalized, in padded batches sharded over the mesh."""
    ids = self.tokenizer.encode(texts)
    out = []
    bs = self.batch_size
    for start in range(0, len(ids), bs):
      chunk = ids[start:start + bs]
      padded = np.pad(chunk, ((0, bs - len(chunk)), (0, 0)), constant_values=self.tokenizer.pad_id)
      batch = jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh), _local(padded))
      out.append(np.asarray(gather(self._encode_text(params, batch)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.config.model.embed_dim), np.float32)

  def encode_image_batch(self, params, images: jax.Array) -> np.ndarray:
    """images: [B, S, S, 3] float32 sharded over the batch axes -> host float32 [B, D]."""
    return np.asarray(gather(self._encode_image(params, images)))

  def image_spec(self) -> pipeline.ImageSpec:
    return pipeline.ImageSpec.from_config(self.config, train=False)


def _local(global_rows: np.ndarray) -> np.ndarray:
  """This process's slice of host-replicated rows (every process holds the same padded batch)."""
  n = len(global_rows) // jax.process_count()
  return global_rows[jax.process_index() * n:(jax.process_index() + 1) * n]


def gather(x: jax.Array) -> jax.Array:
  """Global array -> fully addressable on every process (no-op on one process)."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(x, tiled=True)


# ------------------------------------------------------------------------------------------- data sets


def parse_dataset(spec: str, default_feature: str) -> tuple[str, str]:
  """'name' -> (name, default_feature); 'name:feature' -> (name, feature). A trailing ':1.2.3' is a version
  (part of the name), not a feature: 'voc/cfg:1.0.0' -> ('voc/cfg:1.0.0', default_feature)."""
  name, sep, feature = spec.rpartition(':')
  if not sep or re.match(r'^\d+\.\d+\.\d+$', feature):
    return spec, default_feature
  return name, feature


def metric_name(name: str) -> str:
  """Data set name -> the <dataset> part of metric keys ('shapes/cfg:1.0.0' -> 'shapes_cfg_1.0.0')."""
  return name.replace('/', '_').replace(':', '_')


def dataset_key(name: str, feature: str) -> str:
  """Result key of a classification data set entry: 'shapes', 'label' -> 'shapes'; 'shapes', 'color' ->
  'shapes_color'."""
  key = metric_name(name)
  return key if feature == 'label' else f'{key}_{feature}'


def load_source(ctx: Context, name: str, split: str, max_examples: int = 0):
  """(source, info) of a split, limited to its first `max_examples` records (0: all). A generated data set
  ('shapes') is read with the settings of `config.data`, i.e. the version the model was trained on."""
  source, info = sources.load_source(generated.resolve(name, ctx.config.data), split, ctx.data_dir)
  return limit_source(source, max_examples), info


class _Head:
  """The first n records of a random-access source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


def limit_source(source, max_examples: int):
  """The first `max_examples` records of `source` (0 or negative: all)."""
  if max_examples <= 0 or max_examples >= len(source):
    return source
  return _Head(source, int(max_examples))


@dataclasses.dataclass
class _Record:
  index: int
  record: object


class _Indexed:
  """source[i] -> (i, record), so that the converted example can carry its record index."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return _Record(i, self.source[i])


def indexed_batches(source, convert: Callable[[dict], dict],
                    ctx: Context) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
  """`pipeline.eval_batches` over `source` whose batches also hold 'index': int32 [B], the record index of
  every row. Per-example data that cannot be stacked into a device batch (captions, masks of different sizes)
  is read back on the host by index, for the rows that `valid` marks.

  Yields:
    (batch, valid) as `pipeline.eval_batches`: batch arrays [ctx.batch_size, ...] sharded over the mesh, valid
    bool [ctx.batch_size] (False for padding and unreadable records).
  """
  def convert_indexed(item: _Record):
    out = convert(item.record)
    if out is not None:
      out = dict(out, index=np.int32(item.index))
    return out

  return pipeline.eval_batches(_Indexed(source), convert_indexed, ctx.batch_size, ctx.mesh)


def gather_index(batch) -> np.ndarray:
  """The 'index' of an `indexed_batches` batch on the host: int [B]."""
  return np.asarray(gather(batch['index']))


def has_split(name: str, split: str, config, data_dir: str) -> bool:
  """Whether data set `name` is prepared under `data_dir` with `split` (reads its dataset_info.json only)."""
  try:
    return check_dataset('', name, '', split, config, data_dir) is not None
  except ConfigError:
    return False


def _read_info(full_name: str, data_dir: str):
  return tfds.builder_from_directory(sources.find_builder_dir(full_name, data_dir)).info


def _base_split(split: str) -> str:
  return re.split(r'[\[+]', split, maxsplit=1)[0]


# ------------------------------------------------------------------------------------------ validation


def check_dataset(field: str, name: str, split_field: str, split: str, config, data_dir: str | None):
  """Checks an evaluation data set without reading a record: the name parses and resolves, the data set is
  prepared and has the split.

  Args:
    field: the config field that names the data set, for messages ('config.evals.zeroshot.datasets').
    name: the data set name as configured (a generated one bare, 'shapes').
    split_field, split: the config field of the split and its value.
    config: the full config (generated data sets resolve with `config.data`).
    data_dir: the TFDS data dir; None checks the name only.

  Returns:
    The tfds DatasetInfo, or None where the data set cannot be read yet: no data dir, or a generated data set
    that is built before the first step.

  Raises:
    ConfigError: naming `field` / `split_field` and the fix.
  """
  try:
    full = generated.resolve(name, config.data)
  except ValueError as e:
    raise ConfigError(f'{field} names {name!r}: {e}') from None
  if data_dir is None:
    return None
  try:
    info = _read_info(full, data_dir)
  except FileNotFoundError as e:
    if generated.is_generated(name):
      return None  # The trainer builds it (vitclip.evaluators.datasets) before the first step.
    raise ConfigError(f'{field} names {name!r}, which is not prepared: {e}') from None
  except ValueError as e:
    raise ConfigError(f'{field} names {name!r}: {e}') from None
  if _base_split(split) not in info.splits:
    raise ConfigError(f'{split_field}={split!r}: data set {name!r} has no such split; it has '
                      f'{sorted(info.splits)}. Set --{split_field}=<one of those>.')
  return info


def check_feature(field: str, name: str, info, features: Sequence[str], what: str):
  """Raises ConfigError naming `field` unless data set `name` (its `info`) has one of `features`."""
  if info is not None and not any(f in info.features for f in features):
    raise ConfigError(f'{field}: data set {name!r} has no {what} (feature {" or ".join(map(repr, features))}); '
                      f'its features are {sorted(info.features)}.')


def check_class_names(prefix: str, cfg, info, name: str, feature: str, field: str):
  """Class names must come from somewhere: a `cfg.classnames_files[name]` that exists, else the ClassLabel
  feature `feature` of the data set. prefix: 'config.evals.<evaluator>'; field: the field naming `feature`."""
  path = cfg.classnames_files.get(name, '')
  if path:
    if not os.path.isfile(os.path.expanduser(path)):
      raise ConfigError(f'{prefix}.classnames_files.{name}={path!r} does not exist; give a text file with one '
                        'class name per line.')
    return
  if info is None:
    return
  if feature not in info.features:
    raise ConfigError(f'{field}: data set {name!r} has no class feature {feature!r}; its features are '
                      f'{sorted(info.features)}. Name the feature that holds the class, or give the class names '
                      f'in a file: --{prefix}.classnames_files.{name}=FILE.')
  if not isinstance(info.features[feature], tfds.features.ClassLabel):
    raise ConfigError(f'{field}: feature {feature!r} of data set {name!r} is a '
                      f'{type(info.features[feature]).__name__}, not a ClassLabel, so it has no class names; give '
                      f'them in a file: --{prefix}.classnames_files.{name}=FILE.')


def check_split(prefix: str, split):
  """The split setting `<prefix>.split` is a non-empty string (whether data sets have it: check_dataset)."""
  if not isinstance(split, str) or not split:
    raise ConfigError(f'{prefix}.split={split!r}: name a split of the evaluation data sets, e.g. "test".')


def check_max_examples(prefix: str, max_examples):
  if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
    raise ConfigError(f'{prefix}.max_examples={max_examples!r}: use an integer >= 0 (0 = all examples).')


# ------------------------------------------------------------------------------------- text classifier


def classnames_for(cfg, info, name: str, feature: str) -> list[str]:
  """Class names: a text file (one per line) named in `cfg.classnames_files[name]`, else the data set's
  ClassLabel names of `feature`; then `cfg.aliases` ('name=alias,...') replaces individual names."""
  path = cfg.classnames_files.get(name, '')
  if path:
    with open(os.path.expanduser(path), encoding='utf-8') as f:
      names = [line.strip() for line in f if line.strip()]
  else:
    names = sources.class_names(info, feature)
  aliases = dict(kv.split('=', 1) for kv in cfg.aliases.split(',') if '=' in kv)
  return [aliases.get(n, n).replace('_', ' ') for n in names]


def build_classifier(ctx: Context, params, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
  """CLIP's prompt ensembling: per class, embed every template, L2-normalize each, average, renormalize.

  Returns:
    float32 [C, D], one row per class (all C x T texts in one batched, sharded pass).
  """
  texts = [t.format(c) for c in classnames for t in templates]
  emb = ctx.encode_texts(params, texts).reshape(len(classnames), len(templates), -1)
  return l2_normalize(emb.mean(axis=1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- evaluator


class Evaluator:
  """Base of every evaluator: built once per run from (ctx, cfg = config.evals.<NAME>), then `run(params)`.

  Subclasses set NAME and NEEDS (what a data set must hold, for the hint when none is named), and implement
  `setup(name, feature)` (opens one data set entry; called once per entry in `__init__`), `evaluate(params,
  data)` (one entry) and the classmethod `check_config`.
  """
  NAME = ''
  NEEDS = ''

  def __init__(self, ctx: Context, cfg):
    self.ctx, self.cfg = ctx, cfg
    specs = self.specs(cfg, ctx.config, ctx.data_dir)
    if not specs:
      logging.warning('%s: nothing to evaluate: %s', self.NAME, self.skip_reason(cfg, ctx.config))
    self.data = [self.setup(*parse_dataset(spec, self.default_feature(cfg))) for spec in specs]

  @classmethod
  def default_feature(cls, cfg) -> str:
    """The feature of a data set entry 'name' without ':feature'."""
    del cfg
    return ''

  @classmethod
  def specs(cls, cfg, config, data_dir: str | None) -> tuple[str, ...]:
    """The data set entries this evaluator evaluates (data_dir None: all it may evaluate, read nothing)."""
    del config, data_dir
    return tuple(cfg.datasets)

  @classmethod
  def skip_reason(cls, cfg, config) -> str:
    """Why `specs` is empty and how to add an evaluation (one line)."""
    del cfg, config
    return (f'no data sets named; add --config.evals.{cls.NAME}.datasets="(\'NAME\',)" ({cls.NEEDS}).')

  @classmethod
  def datasets(cls, cfg, config) -> list[str]:
    """The data set names this evaluator may read, as configured (generated ones bare)."""
    return [parse_dataset(spec, cls.default_feature(cfg))[0] for spec in cls.specs(cfg, config, None)]

  @classmethod
  def check_config(cls, cfg, config, data_dir: str | None):
    """Raises ConfigError (naming the field and the fix) for settings or data sets this evaluator cannot use;
    reads no record. data_dir None: settings only."""
    raise NotImplementedError

  def setup(self, name: str, feature: str):
    raise NotImplementedError

  def evaluate(self, params, data) -> dict[str, float]:
    raise NotImplementedError

  def run(self, params) -> dict[str, float]:
    """{'<NAME>/<dataset>/<metric>': value} over every data set entry."""
    results = {}
    for data in self.data:
      results.update(self.evaluate(params, data))
    return results


# ---------------------------------------------------------------------------------------- array helpers


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """logits [N, C], labels [N] -> fraction of rows whose label is among the k largest logits."""
  k = min(k, logits.shape[1])
  topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
  return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def jnp_l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
