r"""Curriculum pseudo-labelling (RS-CLIP's Algorithm 1, Li et al. 2023): a model teaches itself a labelled task
from unlabelled images, round by round, and each round is scored on the labelled test split.

  python -m vitclip.curriculum --config configs/curriculum_shapes.py --workdir OUT --config.model=DIR
  python -m vitclip.curriculum --config configs/curriculum_shapes.py --workdir OUT --config.model=DIR \
      --config.feature=color --config.method=classifier

Round r = 1..R, with CURRENT = DIR in round 1 and round r-1's fine-tuned run after it:
  predict    CURRENT classifies every image of the unlabelled pool (`pool_split` of `dataset`) zero-shot with
             DIR's prompts for the entry: p(c | x) = softmax over classes of t · cos(image, class embedding).
  select     every image goes to its most probable class; per class the K_r most confident images (`select_top_k`;
             K_r from `k_schedule`); a class with fewer candidates gives all it has. The pool's labels are never
             read for this: they only score the selection (pseudo-label precision) in the report.
  write      the selection as a class-folder import `curriculum_r<r>` (vitclip.data.folder, into OUT/data):
             train/<class>/ holds the selected images under their pseudo-labels, test/<class>/ the labelled test
             split (scoring only; written once, in OUT/test_images).
  fine-tune  python train.py --config configs/finetune.py:CURRENT,curriculum_r<r>,method=M,steps=S,...
             --workdir OUT/round_<r>/run: contrastive on the class captions, or a classifier head; its evaluation
             is zero-shot top-1 (and the head's top-1 with method=classifier) on the test split.

Round 0 is DIR's plain zero-shot accuracy on the test split, the baseline of every round. A rerun skips finished
rounds (the run's eval_results.json and its last checkpoint at `steps`) and resumes a stopped run; a round's
selection is kept in OUT/round_<r>/selection.json once written. Everything is validated before round 1: the
settings, DIR, the data set, its splits and class names, and round 1's fine-tuning config (exit status 2 naming
the field). OUT receives results.json, report.md (accuracy per round against round 0, pseudo-label precision) and
curriculum.png.
"""

import dataclasses
import math
import os
import shlex
import shutil
import signal
import sys

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import entry, sweep, sweep_report, transfer
from vitclip import run as run_lib
from vitclip import templates as templates_lib
from vitclip.data import folder, sources
from vitclip.errors import ConfigError, Preempted
from vitclip.evaluators import common, zeroshot
from vitclip.models import logit_params

FIELDS = ('model', 'dataset', 'feature', 'data_dir', 'pool_split', 'pool_max_examples', 'test_split', 'rounds',
          'k_schedule', 'k_first', 'k_growth', 'finetune', 'method', 'batch', 'steps', 'lr', 'warmup',
          'layer_decay', 'towers', 'templates', 'overrides')
METHODS = ('contrastive', 'classifier')
EVAL_DEFAULTS = 'configs/base.py'  # What the model directory's config.json is laid over (as eval.py does).
DATA_NAME = 'curriculum_r{r}'  # Each round's pseudo-labelled data set, in OUT/data.
STATUS_FILE = 'curriculum_job.json'  # In a round's run directory: its status after the curriculum last ran it.
SELECTION_FILE = 'selection.json'
PLOT = 'curriculum.png'


# ------------------------------------------------------------------------------------------- selection


def k_schedule(cc) -> list[int]:
  """K_r for r = 1..R: `cc.k_schedule` as given, else round(k_first · k_growth^(r-1)) (at least 1)."""
  if len(cc.k_schedule):
    return [int(k) for k in cc.k_schedule]
  return [max(1, round(cc.k_first * cc.k_growth ** r)) for r in range(cc.rounds)]


def select_top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-K per class: each row is a candidate of its most probable class (the first on ties), and per class the
  k candidates with the highest probability are kept (the lower row first on ties).

  Args:
    probs: float [N, C] class probabilities of the unlabelled images.
    k: int >= 1, pseudo-labels per class; a class with fewer candidates gives all of them.
  Returns:
    (rows int64 [M], labels int64 [M]): the selected rows and their pseudo-labels, by class, then by confidence
    from the highest; M <= k · C and no row twice.
  """
  predicted = probs.argmax(axis=1)
  confidence = probs[np.arange(len(probs)), predicted]
  rows = []
  for c in range(probs.shape[1]):
    members = np.flatnonzero(predicted == c)  # Ascending, so a stable sort breaks ties by row.
    rows.append(members[np.argsort(-confidence[members], kind='stable')][:k])
  rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
  return rows, predicted[rows].astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
  """float [N, C] -> float64 [N, C], rows summing to 1 (shifted by the row max for finite exponentials)."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Round:
  """One round's fine-tuning run: `base` (its configs/finetune.py spec) with `overrides`; `steps` is what
  vitclip.sweep.is_finished reads."""
  r: int
  k: int
  base: str
  overrides: dict
  steps: int


def check_settings(cc, where: str):
  """Raises one ConfigError listing the curriculum config's own mistakes (each naming its --config field)."""
  missing, unknown = [f for f in FIELDS if f not in cc], [f for f in cc if f not in FIELDS]
  if missing or unknown:
    raise ConfigError(f'{where}: ' + '; '.join([f'missing field {f!r}' for f in missing] + [
        f'unknown field {f!r}' for f in unknown]) + f'. The fields are {", ".join(FIELDS)} '
                      '(configs/curriculum_shapes.py declares each).')
  problems = []
  if not cc.model:
    problems.append('--config.model is empty; name the model directory of round 0 (a training workdir or a '
                    'python -m vitclip.convert output).')
  if not cc.dataset:
    problems.append('--config.dataset is empty; name a classification data set (shapes, or a python -m '
                    'vitclip.data.folder --classes_from_subdirs import).')
  positive = {'rounds': cc.rounds, 'k_first': cc.k_first, 'batch': cc.batch, 'steps': cc.steps}
  problems += [f'--config.{f}={v!r} must be an integer >= 1.' for f, v in positive.items() if not _is_int(v, 1)]
  if not _is_int(cc.pool_max_examples, 0):
    problems.append(f'--config.pool_max_examples={cc.pool_max_examples!r} must be an integer >= 0 (0: the whole '
                    'pool split).')
  if not (isinstance(cc.k_growth, (int, float)) and math.isfinite(cc.k_growth) and cc.k_growth >= 1):
    problems.append(f'--config.k_growth={cc.k_growth!r} must be a number >= 1 (K grows, or stays, per round).')
  if len(cc.k_schedule) and (len(cc.k_schedule) != cc.rounds or not all(_is_int(k, 1) for k in cc.k_schedule)):
    problems.append(f'--config.k_schedule={tuple(cc.k_schedule)!r} must hold one integer >= 1 per round '
                    f'({cc.rounds} rounds), or be empty to use k_first and k_growth.')
  if cc.method not in METHODS:
    problems.append(f'--config.method={cc.method!r} is unknown; use one of {METHODS}.')
  if problems:
    raise ConfigError('\n'.join(problems))


def _is_int(value, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def make_round(cc, workdir: str, r: int, current: str) -> Round:
  """Round r's fine-tuning run of `current` on its pseudo-labelled data set, with DIR's prompts for the entry."""
  knobs = {'method': cc.method, 'steps': cc.steps, 'batch': cc.batch, 'lr': cc.lr, 'warmup': cc.warmup,
           'layer_decay': cc.layer_decay, 'towers': cc.towers}
  arg = ','.join([current, DATA_NAME.format(r=r)] + [f'{k}={v}' for k, v in knobs.items() if v != ''])
  templates = templates_spec(cc)
  overrides = {'data.data_dir': data_dir(workdir), 'data.caption_templates': templates,
               'evals.zeroshot.templates': templates}
  if cc.method == 'classifier':  # The fine-tuned model scored zero-shot too, as the contrastive runs are.
    overrides['evals.names'] = ('classifier', 'zeroshot')
  finetune = sweep.config_path(cc.finetune, '--config.finetune')
  return Round(r, k_schedule(cc)[r - 1], f'{finetune}:{arg}', {**overrides, **cc.overrides}, cc.steps)


def templates_spec(cc) -> str:
  """The prompts as a config string: `cc.templates`, else DIR's zero-shot prompts for the entry."""
  if cc.templates:
    return cc.templates
  source = config_lib.load_model_dir(cc.model, sweep.load_config_file(EVAL_DEFAULTS)).evals.zeroshot
  return source.templates_for.get(common.dataset_key(cc.dataset, cc.feature), source.templates)


def round_config(rnd: Round):
  """The config round `rnd`'s train.py builds."""
  return sweep.override(sweep.load_config_file(rnd.base), rnd.overrides, f'round {rnd.r}')


def data_dir(workdir: str) -> str:
  return os.path.join(workdir, 'data')


def round_dir(workdir: str, r: int) -> str:
  return os.path.join(workdir, f'round_{r}')


def run_dir(workdir: str, r: int) -> str:
  return os.path.join(round_dir(workdir, r), 'run')


def command(rnd: Round, workdir: str, executable: str | None = None) -> list[str]:
  """Round `rnd`'s train.py command line: as printed (`python train.py ...`), or as run by `executable`."""
  head = [executable, sweep.TRAIN_PY] if executable else ['python', os.path.relpath(sweep.TRAIN_PY)]
  return head + ['--config', rnd.base, '--workdir', run_dir(workdir, rnd.r)] + [
      f'--config.{k}={transfer._literal(v)}' for k, v in rnd.overrides.items()]  # pylint: disable=protected-access


# ------------------------------------------------------------------------------------------- predictions


class Scorer:
  """DIR's model, tokenizer and mesh, built once (as eval.py builds a model directory's run): zero-shot class
  probabilities of the pool and the test split under any round's params (every round keeps DIR's architecture,
  so one set of jitted encoders serves them all)."""

  def __init__(self, cc):
    self.cc = cc
    spec = cc.dataset if cc.feature == 'label' else f'{cc.dataset}:{cc.feature}'
    overrides = {'evals.names': ('zeroshot',), 'evals.zeroshot.datasets': (spec,),
                 'evals.zeroshot.split': cc.pool_split, **({'data.data_dir': cc.data_dir} if cc.data_dir else {})}
    try:
      config = run_lib.model_dir_config(cc.model, sweep.load_config_file(EVAL_DEFAULTS), overrides=overrides)
      self.run = run_lib.build(config, None, train=False)  # Validates, and builds a generated data set if needed.
      info = common.check_dataset('--config.dataset', cc.dataset, '--config.test_split', cc.test_split,
                                  self.run.config, self.run.data_dir)
    except ConfigError as e:
      raise ConfigError('\n'.join(_hint(line) for line in str(e).splitlines())) from None
    self.ctx = common.Context(self.run.config, self.run.model, self.run.tokenizer, self.run.mesh, '',
                              self.run.data_dir)
    self.classnames = common.classnames_for(self.run.config.evals.zeroshot, info, cc.dataset, cc.feature)
    check_folder_names(self.classnames)
    self.templates = templates_lib.get_templates(templates_spec(cc), '--config.templates')
    self.pool, _ = common.load_source(self.ctx, cc.dataset, cc.pool_split, cc.pool_max_examples)
    self.test, _ = common.load_source(self.ctx, cc.dataset, cc.test_split)

  def params(self, model_dir: str):
    return checkpoint_lib.restore_params(model_dir, self.run.abstract_state.params,
                                         fix=f'{model_dir} does not hold a model of {self.cc.model}\'s architecture.')

  def predict(self, params, source) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs float64 [N, C], labels int32 [N], index int32 [N]) of the readable records of `source`: the softmax
    over classes of t · cosine logits, the records' labels (for scores only) and their record indices."""
    classifier = common.build_classifier(self.ctx, params, self.classnames, self.templates)
    logits, labels, index = zeroshot.predict(self.ctx, params, source, self.cc.feature, classifier)
    return softmax(float(logit_params(params)[0]) * logits), labels, index


# Config fields of the scoring run -> the curriculum's field that sets them, named instead in error messages.
SET_BY = {'evals.zeroshot.split': 'pool_split', 'evals.zeroshot.datasets': 'dataset (with --config.feature)',
          'data.data_dir': 'data_dir'}


# Config fields of a round's run -> the curriculum's knob that sets them.
ROUND_SET_BY = {'total_steps': 'steps', 'batch_size': 'batch', 'optim.lr': 'lr', 'optim.warmup_steps': 'warmup',
                'optim.layer_decay': 'layer_decay'}


def _hint(line: str, set_by: dict = SET_BY) -> str:
  for field, knob in set_by.items():
    line = line.replace(f'--config.{field}', f'--config.{knob}').replace(f'config.{field}', f'--config.{knob}')
  return line


def check_folder_names(classnames: list[str]):
  """Class names become the folders of the pseudo-labelled import: each a distinct, plain file name."""
  bad = [n for n in classnames if not n or n.startswith('.') or os.sep in n]
  if bad or len(set(classnames)) != len(classnames):
    raise ConfigError(f'the class names {bad or classnames} cannot name one folder each (empty, starting with ".", '
                      f'holding "{os.sep}" or repeated); rename them with --config.overrides or a class-names file '
                      '(evals.zeroshot.classnames_files / aliases of the model directory).')


# ------------------------------------------------------------------------------------------- data sets


def write_images(source, rows: np.ndarray, labels: np.ndarray, classnames: list[str], root: str):
  """Writes record rows[i] of `source` as root/<classnames[labels[i]]>/<rows[i]>.png (PNG: the pixels stay
  exact, so the copy scores as the original does)."""
  for row, label in zip(rows, labels):
    folder = os.path.join(root, classnames[int(label)])
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(sources.decode_image(source[int(row)])).save(os.path.join(folder, f'{int(row):07d}.png'))


def write_test_images(scorer: Scorer, index: np.ndarray, labels: np.ndarray, workdir: str) -> str:
  """The labelled test split as class folders OUT/test_images/test/<class>/ (once; a rerun keeps them)."""
  final = os.path.join(workdir, 'test_images')
  if not os.path.isdir(final):
    tmp = final + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    write_images(scorer.test, index, labels, scorer.classnames, os.path.join(tmp, 'test'))
    os.replace(tmp, final)
  return os.path.join(final, 'test')


def import_round(scorer: Scorer, r: int, rows: np.ndarray, labels: np.ndarray, test_folder: str, workdir: str):
  """Round r's data set DATA_NAME: train/ the selected pool records under their pseudo-labels, test/ the labelled
  test split (a link to `test_folder`), imported with vitclip.data.folder into OUT/data."""
  images = os.path.join(round_dir(workdir, r), 'images')
  shutil.rmtree(images, ignore_errors=True)  # Left by a round stopped while writing.
  write_images(scorer.pool, rows, labels, scorer.classnames, os.path.join(images, 'train'))
  os.symlink(test_folder, os.path.join(images, 'test'))
  report = folder.import_folder(images, DATA_NAME.format(r=r), data_dir(workdir), classes_from_subdirs=True)
  missing = sorted(set(scorer.classnames) - set(report.class_names))
  if missing or sum(report.skipped.values()):
    raise ValueError(f'round {r}: the import of {images} lost classes {missing} or images:\n{report.summary()}')


# ------------------------------------------------------------------------------------------- rounds


def baseline(scorer: Scorer, workdir: str, cache: dict) -> dict:
  """Round 0: DIR's zero-shot top-1 on the test split (OUT/round_0.json once computed); writes the test images."""
  path = os.path.join(workdir, 'round_0.json')
  record = sweep_report.read_json(path)
  if record is None or not os.path.isdir(os.path.join(workdir, 'test_images')):
    probs, labels, index = predictions(scorer, scorer.cc.model, 'test', cache)
    write_test_images(scorer, index, labels, workdir)
    record = {'round': 0, 'model': scorer.cc.model, 'test_zeroshot_top1': float(np.mean(probs.argmax(1) == labels)),
              'test_examples': int(len(labels))}
    sweep.write_json(path, record)
  return record


def predictions(scorer: Scorer, model_dir: str, which: str, cache: dict):
  """(probs, labels, index) of the pool or the test split under `model_dir`'s params; the pool and the test split
  are one prediction when they are the same records (the transductive setting)."""
  cc = scorer.cc
  same = cc.pool_split == cc.test_split and not cc.pool_max_examples
  key = (model_dir, 'test' if same else which)
  if key not in cache:
    cache.clear()  # One model's predictions at a time: a round moves on to the next model.
    cache[key] = scorer.predict(scorer.params(model_dir), scorer.test if key[1] == 'test' else scorer.pool)
  return cache[key]


def select_round(scorer: Scorer, rnd: Round, current: str, test_folder: str, workdir: str, cache: dict) -> dict:
  """Predicts the pool with `current`, selects the top-K_r per class, writes and imports round r's data set;
  returns (and keeps in SELECTION_FILE) the selection's record. The pool's labels only score it."""
  probs, labels, index = predictions(scorer, current, 'pool', cache)
  rows, pseudo = select_top_k(probs, rnd.k)
  import_round(scorer, rnd.r, index[rows], pseudo, test_folder, workdir)
  correct = labels[rows] == pseudo
  record = {'round': rnd.r, 'k': rnd.k, 'model': current, 'pool_examples': int(len(labels)),
            'pool_zeroshot_top1': float(np.mean(probs.argmax(1) == labels)), 'selected': int(len(rows)),
            'precision': float(correct.mean()) if len(rows) else None,
            'per_class': {name: {'selected': int(np.sum(pseudo == c)),
                                 'precision': float(correct[pseudo == c].mean()) if np.any(pseudo == c) else None}
                          for c, name in enumerate(scorer.classnames)},
            'records': index[rows].tolist(), 'pseudo_labels': pseudo.tolist()}  # Pool record indices, class ids.
  sweep.write_json(os.path.join(round_dir(workdir, rnd.r), SELECTION_FILE), record)
  return record


def is_finished(rnd: Round, workdir: str) -> bool:
  return sweep.is_finished(rnd, run_dir(workdir, rnd.r))


def validate(cc, workdir: str) -> Scorer:
  """Everything a curriculum needs, before round 1: its settings, DIR, the data set, its splits and class names
  (building the scorer), and round 1's fine-tuning config (as train.py will validate it; its data set does not
  exist yet). Raises ConfigError."""
  problems = [p.replace('--config.models: model=', '--config.model=')
              for p in transfer.model_dir_problems('model', cc.model)]
  if problems:
    raise ConfigError('\n'.join(problems))
  scorer = Scorer(cc)
  rnd = make_round(cc, workdir, 1, cc.model)
  try:
    config_lib.validate(config_lib.resolve(round_config(rnd)), None, num_devices=jax.device_count(),
                        check_data=False, train=True)
  except ConfigError as e:
    raise ConfigError('\n'.join(f'round 1 ({rnd.base}): {_hint(line, ROUND_SET_BY)}'
                                 for line in str(e).splitlines())) from None
  return scorer


def run_curriculum(cc, where: str, workdir: str, argv: list[str], *, print_commands: bool = False) -> int:
  """Validates, runs every unfinished round, writes the report; returns the exit status (1 when a round failed)."""
  check_settings(cc, where)
  cc.model = os.path.abspath(os.path.expanduser(cc.model))
  os.makedirs(workdir, exist_ok=True)
  scorer = validate(cc, workdir)
  if print_commands:  # Round r > 1 starts from round r - 1's run: the commands as they will run.
    print('\n'.join(shlex.join(command(make_round(cc, workdir, r, cc.model if r == 1 else run_dir(workdir, r - 1)),
                                       workdir)) for r in range(1, cc.rounds + 1)))
    return 0
  print(f'vitclip curriculum: {cc.rounds} rounds of {where} in {workdir}', flush=True)
  cache, failed = {}, False
  zero = baseline(scorer, workdir, cache)
  print(f'round 0: zero-shot top-1 {zero["test_zeroshot_top1"]:.4f} on {zero["test_examples"]} test images',
        flush=True)
  test_folder = os.path.join(workdir, 'test_images', 'test')
  current = cc.model
  with sweep.ForwardSignals() as signals:
    for r in range(1, cc.rounds + 1):
      rnd, start, current = make_round(cc, workdir, r, current), current, run_dir(workdir, r)
      if is_finished(rnd, workdir):
        print(f'round {r}: finished before: skipped', flush=True)
        continue
      if signals.signum:
        break
      selection = (sweep_report.read_json(os.path.join(round_dir(workdir, r), SELECTION_FILE))
                   or select_round(scorer, rnd, start, test_folder, workdir, cache))
      print(f'round {r}: K {rnd.k}, {selection["selected"]} pseudo-labels, precision '
            f'{_fmt(selection["precision"])}; fine-tuning ...', end=' ', flush=True)
      record = sweep.run_command(command(rnd, workdir, sys.executable), current, signals,
                                 lambda rnd=rnd: is_finished(rnd, workdir), STATUS_FILE)
      if record['status'] != 'done':
        print(f'{record["status"].upper()} ({record["error"]}); output: '
              f'{os.path.join(current, sweep_report.OUTPUT_FILE)}', flush=True)
        failed = True
        break
      shown = round_results(r, workdir, cc.method)
      print(f'done in {record["seconds"] / 60:.1f} min: test zero-shot top-1 {_fmt(shown["test_zeroshot_top1"])}'
            + (f', classifier top-1 {_fmt(shown["test_classifier_top1"])}' if cc.method == 'classifier' else ''),
            flush=True)
  print(write_report(cc, workdir, shlex.join(['python', '-m', 'vitclip.curriculum', *argv])), flush=True)
  if signals.signum:
    raise Preempted(f'Stopped by {signal.Signals(signals.signum).name}: the running round was stopped. Rerun the '
                    'same command to continue.', signals.signum)
  return int(failed)


def round_results(r: int, workdir: str, method: str) -> dict:
  """Round r's test top-1 from its run's eval_results.json (None where not written)."""
  results = sweep_report.read_json(os.path.join(run_dir(workdir, r), 'eval_results.json')) or {}
  key = common.metric_name(DATA_NAME.format(r=r))
  out = {'test_zeroshot_top1': results.get(f'zeroshot/{key}/top1')}
  if method == 'classifier':
    out['test_classifier_top1'] = results.get(f'classifier/{key}/top1')
  return out


# ------------------------------------------------------------------------------------------- the report


def collect(cc, workdir: str) -> list[dict]:
  """A record per round, 0..R: its selection, test accuracies and run status (as far as it got)."""
  records = [dict(sweep_report.read_json(os.path.join(workdir, 'round_0.json')) or {'round': 0}, status='done')]
  for r in range(1, cc.rounds + 1):
    selection = sweep_report.read_json(os.path.join(round_dir(workdir, r), SELECTION_FILE)) or {'round': r}
    state = sweep_report.read_json(os.path.join(run_dir(workdir, r), STATUS_FILE)) or {}
    done = os.path.isfile(os.path.join(run_dir(workdir, r), 'eval_results.json')) and state.get('status') == 'done'
    records.append({**selection, 'k': k_schedule(cc)[r - 1], 'run': run_dir(workdir, r),
                    'status': 'done' if done else state.get('status', 'not run'), 'error': state.get('error', ''),
                    **round_results(r, workdir, cc.method)})
  return records


def write_report(cc, workdir: str, invocation: str) -> str:
  """Writes results.json, report.md and the plot; returns a line naming them."""
  records = collect(cc, workdir)
  sweep.write_json(os.path.join(workdir, 'results.json'), {'command': invocation, 'settings': cc.to_dict(),
                                                           'rounds': records})
  plots = [PLOT] if plot(records, cc, os.path.join(workdir, PLOT)) else []
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(markdown(records, cc, invocation, plots) + '\n')
  return f'wrote {", ".join(os.path.join(workdir, n) for n in ["report.md", "results.json", *plots])}'


def markdown(records: list[dict], cc, invocation: str, plots: list[str]) -> str:
  zero = records[0].get('test_zeroshot_top1')
  head = ['round', 'K', 'pseudo-labels', 'precision', 'pool zero-shot (selecting model)', 'test zero-shot top-1',
          'vs round 0'] + (['test classifier top-1'] if cc.method == 'classifier' else []) + ['status']
  lines = []
  for rec in records:
    acc = rec.get('test_zeroshot_top1')
    delta = f'{acc - zero:+.4f}' if acc is not None and zero is not None and rec['round'] else ''
    lines.append([str(rec['round']), str(rec.get('k', '')), str(rec.get('selected', '')),
                  _fmt(rec.get('precision')) if rec['round'] else '', _fmt(rec.get('pool_zeroshot_top1')),
                  _fmt(acc), delta] + ([_fmt(rec.get('test_classifier_top1'))] if cc.method == 'classifier' else [])
                 + [rec['status']])
  feature = 'label (shape)' if cc.dataset == 'shapes' and cc.feature == 'label' else cc.feature
  out = [f'# Curriculum pseudo-labelling on {cc.dataset} by {feature}', '', f'`{invocation}`', '',
         f'Model `{cc.model}` (round 0: its plain zero-shot). Unlabelled pool: the `{cc.pool_split}` split'
         + (f' (first {cc.pool_max_examples})' if cc.pool_max_examples else '') + ', labels hidden from the '
         f'selection; scored on the labelled `{cc.test_split}` split. Per round: top-K per class of the predicted '
         f'class, then {cc.method} fine-tuning, {cc.steps} steps of {cc.batch} at lr {cc.lr:g}, from the previous '
         "round's model. Precision: the fraction of the round's pseudo-labels that are the hidden labels.", '',
         transfer.table(head, lines)]
  failed = [r for r in records if r.get('error')]
  if failed:
    out += ['', '## Problems', ''] + [f'- round {r["round"]} ({r["status"]}): {r["error"]}' for r in failed]
  return '\n'.join(out + [f'\n![curriculum]({p})' for p in plots])


def _fmt(value) -> str:
  return '–' if value is None else f'{value:.4f}'


def plot(records: list[dict], cc, path: str) -> bool:
  """Test top-1 and pseudo-label precision per round, round 0's zero-shot as a line. False (nothing written)
  when no round has a number yet."""
  series = {'test zero-shot top-1': 'test_zeroshot_top1', 'pseudo-label precision': 'precision'}
  if cc.method == 'classifier':
    series['test classifier top-1'] = 'test_classifier_top1'
  if not any(r.get(k) is not None for r in records[1:] for k in series.values()):
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, key in series.items():
    points = [(r['round'], r[key]) for r in records if r.get(key) is not None]
    ax.plot(*zip(*points), marker='o', label=label)
  if records[0].get('test_zeroshot_top1') is not None:
    ax.axhline(records[0]['test_zeroshot_top1'], color='grey', linestyle='--', label='round 0 zero-shot')
  ax.set(title=f'Curriculum pseudo-labelling: {cc.dataset} by {cc.feature}, {cc.method}', xlabel='round',
         ylabel='fraction', ylim=(0, 1.05), xticks=range(cc.rounds + 1))
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ------------------------------------------------------------------------------------------- command line


def define_flags():
  """The command line's flags, defined only when this module runs as the program (as vitclip.sweep's)."""
  global _CONFIG, _WORKDIR, _PRINT
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Curriculum config file (configs/curriculum_shapes.py).',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory: round_<r>/, data/, the report.')
  _PRINT = flags.DEFINE_bool('print_commands', False, 'Validate, print the fine-tuning commands and run nothing.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  # Leave the accelerator's memory to the fine-tuning runs: this process only scores between them.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  # Every round compiles the same train step and evaluators: XLA's persistent cache (inherited by the runs)
  # compiles them once.
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(workdir, 'jax_cache'))
  with entry.reported_errors(workdir, 'curriculum'):
    cc, where = _CONFIG.value, config_flags.get_config_filename(flags.FLAGS['config'])
    argv = [a for a in sys.argv[1:] if not a.startswith('--print_commands')]
    code = run_curriculum(cc, where, workdir, argv, print_commands=_PRINT.value)
  sys.exit(code)


if __name__ == '__main__':
  define_flags()
  if sweep.REPO_ROOT not in sys.path:  # configs/ is a top-level package next to vitclip/ (the fine-tuning config).
    sys.path.insert(0, sweep.REPO_ROOT)
  app.run(main, flags_parser=entry.parse_flags)
