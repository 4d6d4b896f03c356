r"""Transfer comparison: several model directories on one labelled data set, each by every class feature, under
the same protocols, and one report over them.

  python -m vitclip.transfer --config configs/transfer_shapes.py --workdir OUT \
      --config.models="softmax=/tmp/shapes_softmax,sigmoid=/tmp/shapes_sigmoid"
  python -m vitclip.transfer --config configs/transfer_shapes.py --workdir OUT --config.models=... --print_commands
  python -m vitclip.transfer --config configs/transfer_shapes.py --workdir OUT --config.models=... --report_only

A transfer config (configs/transfer_shapes.py declares every field) names the models ('name=DIR' pairs: training
workdirs or converted models), the data set, its class features and the protocols. Each model × feature ×
protocol is one ordinary command in its own directory OUT/<model>/<feature>/<protocol>/ (its terminal output in
train.out there, as a sweep cell's):

  probe        python eval.py --workdir D --checkpoint_dir DIR --config.evals.names="('zeroshot','linear_probe')"
               ...: zero-shot (the model's own prompts) and the linear and k-shot probes on frozen features.
  contrastive  python train.py --config configs/finetune.py:DIR,DATASET,feature=F,steps=S,batch=B,lr=LR,...
               --workdir D: fine-tuning with the model's own loss, scored zero-shot.
  classifier   the same with ',method=classifier': the image tower and a head initialised from the zero-shot
               classifier, scored as fine-tuned and as WiSE-FT mixes with the zero-shot model.

Every protocol scores the test split. A rerun skips what has finished (eval_results.json holds the protocol's
keys; a fine-tuning run also has its last checkpoint at its steps, as vitclip.sweep decides for a cell) and resumes
a stopped fine-tuning run; to redo a protocol, delete its directory. Every command's config is built and
validated before the first one runs: a mistake stops everything with exit status 2, naming the field. A command
that fails is recorded (exit code, last lines) and the others still run (exit status 1 at the end); SIGTERM /
SIGINT reach the running command and no further one starts.

Per fine-tuning run the report adds the batch, training samples/s (metrics.jsonl, after the first interval) and
the per-device peak memory of its compiled train step (XLA's memory analysis; measured as vitclip.sweep measures
its cells: in the transfer's own process when it has the devices to measure on, else in a fresh process). OUT
receives results.json, results.csv (a row per model × feature), report.md (accuracy table, k-shot and WiSE-FT
tables, fine-tuning cost, the commands) and transfer.png.
"""

import csv
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from vitclip import config as config_lib
from vitclip import entry, sweep, sweep_report
from vitclip.errors import ConfigError, Preempted
from vitclip.evaluators import common

EVAL_PY = os.path.join(sweep.REPO_ROOT, 'eval.py')
EVAL_DEFAULTS = 'configs/base.py'  # What eval.py lays a model's config.json over (its default --config).
FIELDS = ('models', 'dataset', 'features', 'data_dir', 'protocols', 'finetune', 'probe', 'contrastive',
          'classifier', 'wise_alpha', 'memory_devices')
PROBE = 'probe'
# Fine-tuning protocol -> configs/finetune.py's method knob ('': not given, its default: contrastive).
FINE_TUNING = {'contrastive': '', 'classifier': 'classifier'}
PROTOCOLS = (PROBE, *FINE_TUNING)
# Config fields that the transfer config sets, for error messages: field -> its --config field ({p}: protocol).
SET_BY = {'total_steps': '{p}.steps', 'batch_size': '{p}.batch', 'optim.lr': '{p}.lr',
          'optim.warmup_steps': '{p}.warmup', 'data.data_dir': 'data_dir'}
NAME = r'[A-Za-z0-9_-]+'  # Model names and features name directories.
STATUS_FILE = 'transfer_job.json'  # In a protocol's directory: its status after the transfer last ran it.
OUTPUT_FILE, MEMORY_FILE = sweep_report.OUTPUT_FILE, sweep_report.MEMORY_FILE
PLOT = 'transfer.png'


@dataclasses.dataclass(frozen=True)
class Column:
  """A column of the accuracy table: a result key of one protocol's eval_results.json ({key}: the data set
  entry's, {k}: a k-shot, {a}: the WiSE-FT alpha). `required`: the protocol has finished once it is written."""
  field: str
  title: str
  protocol: str
  result: str
  required: bool = True


ACCURACY = (
    Column('zeroshot', 'zero-shot', PROBE, 'zeroshot/{key}/top1'),
    Column('linear_probe', 'linear probe', PROBE, 'linear_probe/{key}/top1'),
    Column('{k}shot', '{k}-shot', PROBE, 'linear_probe/{key}/{k}shot/top1'),  # The table: the largest k.
    Column('contrastive', 'contrastive FT', 'contrastive', 'zeroshot/{key}/top1'),
    Column('classifier', 'classifier FT', 'classifier', 'classifier/{key}/top1'),
    Column('wise_{a}', 'classifier WiSE-FT (α = {a})', 'classifier', 'classifier/{key}/wise_{a}/top1', False),
)


@dataclasses.dataclass(frozen=True)
class Job:
  """One protocol of one model on one feature. A fine-tuning job is the train.py run of `base` (its
  configs/finetune.py spec) with `overrides` for `steps`: what vitclip.sweep's cell helpers read (is_finished,
  memory_config, needs_memory). A probe's `overrides` are its eval.py --config.KEY=VALUE."""
  model: str
  model_dir: str
  feature: str
  key: str  # The data set entry's result key: 'shapes' (by label), 'shapes_color'.
  protocol: str
  base: str  # Fine-tuning: 'configs/finetune.py:DIR,DATASET,knobs'; probe: ''.
  overrides: dict
  steps: int = 0
  batch: int = 0
  shots: tuple = ()

  @property
  def name(self) -> str:
    return f'{self.model}/{self.feature}/{self.protocol}'


# ------------------------------------------------------------------------------------------------ jobs


def check_settings(tc, where: str):
  """Raises one ConfigError listing the transfer config's own mistakes (each naming its --config field)."""
  missing, unknown = [f for f in FIELDS if f not in tc], [f for f in tc if f not in FIELDS]
  if missing or unknown:
    raise ConfigError(f'{where}: ' + '; '.join([f'missing field {f!r}' for f in missing] + [
        f'unknown field {f!r}' for f in unknown]) + f'. The fields are {", ".join(FIELDS)} '
                      '(configs/transfer_shapes.py declares each).')
  problems = [f'--config.protocols: {p!r} is not a protocol; use some of {PROTOCOLS}.' for p in tc.protocols
              if p not in PROTOCOLS]
  problems += [] if tc.protocols else [f'--config.protocols is empty; use some of {PROTOCOLS}.']
  problems += [f'--config.features: {f!r}: use letters, digits, - and _ (a ClassLabel feature of the data set; '
               'it names a directory).' for f in tc.features if not re.fullmatch(NAME, f)]
  problems += [] if tc.features else ["--config.features is empty; name the data set's class features, e.g. "
                                      "--config.features=\"('label',)\"."]
  problems += [] if tc.dataset else ['--config.dataset is empty; name a classification data set (shapes, or a '
                                     'python -m vitclip.data.folder --classes_from_subdirs import).']
  if not 0 <= tc.wise_alpha <= 1:
    problems.append(f'--config.wise_alpha={tc.wise_alpha!r} must be in [0, 1].')
  if not isinstance(tc.memory_devices, int) or tc.memory_devices < 0:
    problems.append(f'--config.memory_devices={tc.memory_devices!r} must be an integer >= 0 (0: the devices '
                    'the runs train on).')
  if problems:
    raise ConfigError('\n'.join(problems))


def parse_models(spec: str, check: bool = True) -> dict[str, str]:
  """'name=DIR,name=DIR' -> {name: absolute DIR}; with `check`, each DIR must be a model directory."""
  if not spec.strip():
    raise ConfigError('--config.models is empty; name the model directories to compare as name=DIR pairs, e.g. '
                      '--config.models="softmax=/tmp/shapes_softmax,sigmoid=/tmp/shapes_sigmoid" (training '
                      'workdirs or python -m vitclip.convert outputs).')
  models, problems = {}, []
  for item in spec.split(','):
    name, sep, directory = (s.strip() for s in item.partition('='))
    if not sep or not directory or not re.fullmatch(NAME, name):
      problems.append(f'--config.models: {item.strip()!r} is not name=DIR (a name of letters, digits, - and _, '
                      'which labels the rows and names OUT/<name>/).')
    elif name in models:
      problems.append(f'--config.models: the name {name!r} is given twice; give each model its own name.')
    else:
      models[name] = os.path.abspath(os.path.expanduser(directory))
  if check:
    problems += [p for name, d in models.items() for p in model_dir_problems(name, d)]
  if problems:
    raise ConfigError('\n'.join(problems))
  return models


def model_dir_problems(name: str, directory: str) -> list[str]:
  from vitclip.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top  (orbax, once needed)
  where = f'--config.models: {name}={directory}'
  if not os.path.isdir(directory):
    return [f'{where} does not exist; give a training workdir or the --out of python -m vitclip.convert.']
  if not os.path.isfile(os.path.join(directory, config_lib.CONFIG_FILE)):
    return [f'{where} has no {config_lib.CONFIG_FILE}, so it is not a model directory; give a training workdir '
            'or the --out of python -m vitclip.convert.']
  if not Checkpointer.steps_in(directory):
    return [f'{where} has no checkpoint (checkpoints/<step>/state); train it first or give another directory.']
  return []


def make_jobs(tc, models: dict[str, str]) -> list[Job]:
  """models × tc.features × tc.protocols, in that order."""
  finetune = sweep.config_path(tc.finetune, '--config.finetune')
  data_dir = {'data.data_dir': tc.data_dir} if tc.data_dir else {}  # Every command's, where set.
  jobs = []
  for model, directory in models.items():
    for feature in tc.features:
      head = dict(model=model, model_dir=directory, feature=feature, key=common.dataset_key(tc.dataset, feature))
      for protocol in tc.protocols:
        if protocol == PROBE:
          jobs.append(Job(**head, protocol=protocol, base='', shots=tuple(tc.probe.shots),
                          overrides={**probe_overrides(tc, feature), **data_dir, **tc.probe.overrides}))
        else:
          settings = tc[protocol]
          knobs = {'feature': feature, **{k: v for k, v in settings.items() if k != 'overrides'},
                   'method': FINE_TUNING[protocol]}
          arg = ','.join([directory, tc.dataset] + [f'{k}={v}' for k, v in knobs.items() if v != ''])
          jobs.append(Job(**head, protocol=protocol, base=f'{finetune}:{arg}', steps=settings.steps,
                          batch=settings.batch, overrides={**data_dir, **settings.overrides}))
  return jobs


def probe_overrides(tc, feature: str) -> dict:
  """eval.py's --config.KEY=VALUE of a probe: zero-shot and the linear probes of one data set entry, on test."""
  spec = (tc.dataset if feature == 'label' else f'{tc.dataset}:{feature}',)
  return {'evals.names': ('zeroshot', 'linear_probe'), 'evals.zeroshot.datasets': spec,
          'evals.zeroshot.split': 'test', 'evals.linear_probe.datasets': spec,
          'evals.linear_probe.train_split': 'train', 'evals.linear_probe.val_split': tc.probe.val_split,
          'evals.linear_probe.test_split': 'test', 'evals.linear_probe.shots': tuple(tc.probe.shots),
          'evals.linear_probe.draws': tc.probe.draws, 'evals.linear_probe.max_examples': tc.probe.max_examples}


def job_config(job: Job):
  """The config the job's command builds: eval.py's from the model directory (its own evaluation settings but
  those overridden), or train.py's from the fine-tuning spec. An override that is not a config field, or of a
  field the weights were made with (eval.py refuses those), is an error."""
  if job.protocol == PROBE:
    from vitclip import run as run_lib  # pylint: disable=g-import-not-at-top  (the model stack, once needed)
    defaults = sweep.load_config_file(EVAL_DEFAULTS, 'eval.py')
    run_lib.model_dir_config(job.model_dir, defaults, overrides=job.overrides)  # Its check against config.json.
    config = run_lib.model_dir_config(job.model_dir, defaults)
  else:
    config = sweep.load_config_file(job.base, job.name)
  return sweep.override(config, job.overrides, job.name)


def validate_jobs(jobs: list[Job], num_devices: int):
  """Builds and validates every job's config as its command will (`vitclip.config.validate`, as
  vitclip.sweep.validate_cells); raises the ConfigError of the first job with a problem, each line naming the
  job (and the field of the transfer config that sets the config field it names)."""
  for job in jobs:
    try:
      config_lib.validate(config_lib.resolve(job_config(job)), None, num_devices=num_devices, check_data=True,
                          train=job.protocol != PROBE)
    except (ConfigError, OSError) as e:
      lines = [line.removeprefix(f'{job.name}: ') for line in str(e).splitlines()]
      raise ConfigError('\n'.join(f'{job.name}: {_hint(job, line)}' for line in lines)) from None


def _hint(job: Job, line: str) -> str:
  """`line`, and the --config field of the transfer config that sets the config field it names."""
  for field, knob in SET_BY.items():
    if re.search(rf'config\.{re.escape(field)}\b', line) and (job.protocol in FINE_TUNING or '{p}' not in knob):
      return f'{line.rstrip(".")} (--config.{knob.format(p=job.protocol)} sets it).'
  return line


def job_dir(workdir: str, job: Job) -> str:
  return os.path.join(workdir, job.model, job.feature, job.protocol)


def command(job: Job, workdir: str, executable: str | None = None) -> list[str]:
  """The job's command line: as printed (`python eval.py ...`, paths from the working directory), or as run by
  `executable`."""
  directory = job_dir(workdir, job)
  if job.protocol == PROBE:
    program, args = EVAL_PY, ['--workdir', directory, '--checkpoint_dir', job.model_dir]
  else:
    program, args = sweep.TRAIN_PY, ['--config', job.base, '--workdir', directory]
  head = [executable, program] if executable else ['python', os.path.relpath(program)]
  return head + args + [f'--config.{k}={_literal(v)}' for k, v in job.overrides.items()]


def _literal(value) -> str:
  """A --config.KEY= value: strings as they are, tuples with double-quoted strings (readable once the shell
  quotes the argument), the rest as Python literals."""
  if isinstance(value, str):
    return value
  if isinstance(value, tuple):
    items = [json.dumps(v) if isinstance(v, str) else repr(v) for v in value]
    return f'({",".join(items)}{"," if len(items) == 1 else ""})'
  return repr(value)


def required_keys(job: Job) -> list[str]:
  """The result keys the job's eval_results.json holds once it has finished (a k-shot key per k)."""
  return [c.result.format(key=job.key, k=k) for c in ACCURACY if c.protocol == job.protocol and c.required
          for k in (job.shots if '{k}' in c.result else (None,))]


def is_finished(job: Job, directory: str) -> bool:
  results = sweep_report.read_json(os.path.join(directory, 'eval_results.json')) or {}
  done = all(k in results for k in required_keys(job))
  return done and (job.protocol == PROBE or sweep.is_finished(job, directory))


# ------------------------------------------------------------------------------------------------ running


def run_job(job: Job, workdir: str, signals: sweep.ForwardSignals) -> dict:
  """Runs the job's command (output appended to OUTPUT_FILE; signals passed on, as vitclip.sweep runs a cell);
  returns and writes its STATUS_FILE record."""
  directory = job_dir(workdir, job)
  return sweep.run_command(command(job, workdir, sys.executable), directory, signals,
                           lambda: is_finished(job, directory), STATUS_FILE)


def run_jobs(jobs: list[Job], workdir: str, signals: sweep.ForwardSignals):
  """Runs the unfinished jobs one after another, a progress line each, until done or stopped."""
  for i, job in enumerate(jobs):
    directory = job_dir(workdir, job)
    head = f'[{i + 1:>{len(str(len(jobs)))}}/{len(jobs)}] {job.name:<32s}'
    if is_finished(job, directory):
      print(f'{head} finished before: skipped', flush=True)
      continue
    if signals.signum:
      return
    print(f'{head} ...', end=' ', flush=True)
    record = run_job(job, workdir, signals)
    if record['status'] == 'done':
      results = sweep_report.read_json(os.path.join(directory, 'eval_results.json'))
      shown = ', '.join(f'{k} {results[k]:.4f}' for k in required_keys(job)[:2])
      print(f'done in {record["seconds"] / 60:.1f} min: {shown}', flush=True)
    else:
      print(f'{record["status"].upper()} ({record["error"]}); output: {os.path.join(directory, OUTPUT_FILE)}',
            flush=True)


def measure(jobs: list[Job], workdir: str, devices: int):
  """(In a process with the devices to measure on: see `measure_memory`.) Compiles each fine-tuning run's train
  step and writes its MEMORY_FILE, as vitclip.sweep.measure_cells does for a cell (the same record, so
  sweep.needs_memory reads it)."""
  for job in jobs:
    directory = job_dir(workdir, job)
    line = sweep.measure_into(sweep.memory_config(job, directory), devices, directory, job.name)
    print(f'memory {job.name:<32s} {line}', flush=True)


def measure_memory(argv: list[str], jobs: list[Job], workdir: str, devices: int):
  """Measures `jobs` (their MEMORY_FILEs) on `devices` devices (0: a run's own): in this process when it has them
  (`sweep.measures_here`: no second jax and model stack to start), else in a fresh process (`memory_subprocess`),
  as vitclip.sweep.measure_memory does."""
  if sweep.measures_here(devices):
    measure(jobs, workdir, devices)
  else:
    memory_subprocess(argv, jobs, workdir, devices)


def memory_subprocess(argv: list[str], jobs: list[Job], workdir: str, devices: int):
  """Measures `jobs` in one fresh process (`--measure`): a simulated device count must be set before jax starts,
  and the transfer's own process stays off the accelerator."""
  if not jobs:
    return
  cmd = [sys.executable, '-m', 'vitclip.transfer', *argv, f'--measure={",".join(j.name for j in jobs)}']
  code = subprocess.run(cmd, check=False).returncode
  for job in jobs if code else ():
    if sweep.needs_memory(job, job_dir(workdir, job), devices):
      sweep.write_json(os.path.join(job_dir(workdir, job), MEMORY_FILE),
                       {'error': f'the measuring process exited with {code}'})


def run_transfer(tc, where: str, workdir: str, argv: list[str], *, print_commands=False, report_only=False) -> int:
  """Validates, runs every unfinished job, measures the fine-tuning runs' memory, writes the outputs; returns the
  exit status (1 when a job failed)."""
  check_settings(tc, where)
  jobs = make_jobs(tc, parse_models(tc.models, check=not report_only))
  invocation = shlex.join(['python', '-m', 'vitclip.transfer', *argv])
  if report_only:
    print(write_report([collect(j, workdir) for j in jobs], tc, invocation, workdir))
    return 0
  validate_jobs(jobs, sweep.device_count(os.environ))
  if print_commands:
    print('\n'.join(shlex.join(command(j, workdir)) for j in jobs))
    return 0
  print(f'vitclip transfer: {len(jobs)} protocol runs of {where} in {workdir}; log '
        f'{os.path.join(workdir, "transfer.log")}', flush=True)
  with sweep.ForwardSignals() as signals:
    run_jobs(jobs, workdir, signals)
  if not signals.signum:
    measure_memory(argv, [j for j in jobs if j.protocol in FINE_TUNING and os.path.isdir(job_dir(workdir, j))
                          and sweep.needs_memory(j, job_dir(workdir, j), tc.memory_devices)],
                   workdir, tc.memory_devices)
  records = [collect(j, workdir) for j in jobs]
  print(write_report(records, tc, invocation, workdir), flush=True)
  if signals.signum:
    raise Preempted(f'Stopped by {signal.Signals(signals.signum).name}: the running command was stopped. Rerun '
                    'the same command to continue.', signals.signum)
  return int(any(r['status'] != 'done' for r in records))


# ------------------------------------------------------------------------------------------------ the report


def collect(job: Job, workdir: str) -> dict:
  """The results.json record of a job, from its directory."""
  directory = job_dir(workdir, job)
  finished = is_finished(job, directory)
  state = sweep_report.read_json(os.path.join(directory, STATUS_FILE)) or {}
  record = {'name': job.name, 'model': job.model, 'model_dir': job.model_dir, 'feature': job.feature,
            'key': job.key, 'protocol': job.protocol, 'directory': directory,
            'status': 'done' if finished else state.get('status', 'not run'),
            'error': '' if finished else state.get('error', ''),
            'metrics': sweep_report.read_json(os.path.join(directory, 'eval_results.json')) or {},
            'command': shlex.join(command(job, workdir))}
  if job.protocol in FINE_TUNING:
    memory = sweep_report.read_json(os.path.join(directory, MEMORY_FILE)) or {}
    record.update(steps=job.steps, batch=job.batch,
                  samples_per_s=sweep_report.throughput(os.path.join(directory, 'metrics.jsonl'))[0],
                  memory={k: v for k, v in memory.items() if k not in ('digest', 'requested_devices')} or None,
                  peak_memory_bytes=memory.get('peak'))
  return record


def columns(tc) -> list[Column]:
  """The accuracy table's columns for `tc`: those of the protocols it runs, {k} (the largest k-shot) and {a} (the
  WiSE-FT alpha) filled in."""
  k = max(tc.probe.shots, default=0)
  fill = {'k': k, 'a': f'{tc.wise_alpha:g}', 'key': '{key}'}
  return [dataclasses.replace(c, field=c.field.format(**fill), title=c.title.format(**fill),
                              result=c.result.format(**fill))
          for c in ACCURACY if c.protocol in tc.protocols and (k or '{k}' not in c.field)]


def make_rows(records: list[dict], tc) -> list[dict]:
  """A row per model × feature: its accuracy columns (None where the protocol has not finished), every k-shot
  probe (± std) and WiSE-FT mix, and each fine-tuning run's batch, samples/s and peak memory."""
  rows = {}
  for r in records:
    row = rows.setdefault((r['model'], r['feature']), {
        'model': r['model'], 'feature': r['feature'], **{c.field: None for c in columns(tc)}})
    metrics, key = r['metrics'] if r['status'] == 'done' else {}, r['key']
    row.update({c.field: metrics.get(c.result.format(key=key)) for c in columns(tc) if c.protocol == r['protocol']})
    if r['protocol'] == PROBE:
      for k in tc.probe.shots:
        result = f'linear_probe/{key}/{k}shot/top1'
        row.update({f'{k}shot': metrics.get(result), f'{k}shot_std': metrics.get(f'{result}_std')})
    if r['protocol'] == 'classifier':
      row.update({f'wise_{a:g}': v for a, v in wise_results(r).items()})
    if r['protocol'] in FINE_TUNING:
      row.update({f'{r["protocol"]}_{k}': r[k] for k in ('batch', 'samples_per_s', 'peak_memory_bytes')})
  return list(rows.values())


def wise_results(record: dict) -> dict[float, float]:
  """{alpha: top-1} of every WiSE-FT mix a finished classifier run evaluated."""
  pattern = re.compile(rf'classifier/{re.escape(record["key"])}/wise_([^/]+)/top1')
  matches = [(pattern.fullmatch(k), v) for k, v in record['metrics'].items()] if record['status'] == 'done' else []
  return {float(m.group(1)): v for m, v in matches if m}


def write_report(records: list[dict], tc, invocation: str, workdir: str) -> str:
  """Writes results.json, results.csv, report.md and the plot; returns a line naming them."""
  rows = make_rows(records, tc)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'command': invocation, 'settings': tc.to_dict(), 'rows': rows, 'protocols': records}, f, indent=1,
              default=str)
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, list(dict.fromkeys(k for row in rows for k in row)), restval='')
    writer.writeheader()
    writer.writerows({k: '' if v is None else v for k, v in row.items()} for row in rows)
  plots = [PLOT] if plot(rows, columns(tc), f'Transfer on {tc.dataset}', os.path.join(workdir, PLOT)) else []
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(markdown(records, rows, tc, invocation, plots) + '\n')
  return f'wrote {", ".join(os.path.join(workdir, n) for n in ["report.md", "results.json", "results.csv", *plots])}'


def markdown(records: list[dict], rows: list[dict], tc, invocation: str, plots: list[str]) -> str:
  """report.md: the accuracy table, the k-shot and WiSE-FT tables, the fine-tuning cost, the commands."""
  models = {r['model']: r['model_dir'] for r in records}
  tuning = '; '.join(f'{p} {tc[p].steps} steps of {tc[p].batch} at lr {tc[p].lr:g}' for p in FINE_TUNING
                     if p in tc.protocols)
  out = [f'# Transfer on {tc.dataset}', '', f'`{invocation}`', '',
         'Models: ' + '; '.join(f'`{m}` = {d}' for m, d in models.items()) + '. Top-1 accuracy on the test split, '
         'a row per model and class feature; zero-shot and probes on the model as it is (its own prompts)' +
         (f', fine-tuning: {tuning}' if tuning else '') + '. – where a protocol has not finished.', '',
         '## Accuracy', '', table(['model', 'feature'] + [c.title for c in columns(tc)], [
             [row['model'], row['feature']] + [_fmt(row[c.field], std=row.get(f'{c.field}_std'))
                                               for c in columns(tc)] for row in rows])]
  if PROBE in tc.protocols and tc.probe.shots:
    out += ['', f'## k-shot linear probes (mean ± std over {tc.probe.draws} draws)', '', table(
        ['model', 'feature'] + [f'{k}-shot' for k in tc.probe.shots],
        [[row['model'], row['feature']] + [_fmt(row[f'{k}shot'], std=row[f'{k}shot_std']) for k in tc.probe.shots]
         for row in rows])]
  alphas = sorted({a for r in records if r['protocol'] == 'classifier' for a in wise_results(r)})
  if alphas:
    out += ['', '## WiSE-FT: (1 - α) · zero-shot + α · fine-tuned classifier weights', '', table(
        ['model', 'feature'] + [f'α = {a:g}' for a in alphas],
        [[row['model'], row['feature']] + [_fmt(row.get(f'wise_{a:g}')) for a in alphas] for row in rows])]
  tuned = [r for r in records if r['protocol'] in FINE_TUNING]
  if tuned:
    unit, scale = sweep_report.memory_unit(tuned)
    devices = sorted({r['memory']['devices'] for r in tuned if r['memory'] and 'devices' in r['memory']})
    out += ['', '## Fine-tuning cost', '', table(
        ['model', 'feature', 'protocol', 'batch', 'steps', 'samples/s',
         f'peak memory per device ({unit}; devices: {", ".join(map(str, devices)) or "?"})'],
        [[r['model'], r['feature'], r['protocol'], str(r['batch']), str(r['steps']),
          _fmt(r['samples_per_s'], '{:,.0f}'),
          _fmt(r['peak_memory_bytes'] / scale if r['peak_memory_bytes'] else None, '{:.2f}')] for r in tuned])]
  out += ['', '## Commands', ''] + [f'- {r["name"]} ({r["status"]}): `{r["command"]}`' for r in records]
  failed = [r for r in records if r['error']]
  if failed:
    out += ['', '## Problems', ''] + [f'- {r["name"]} ({r["status"]}): {r["error"]}' for r in failed]
  return '\n'.join(out + [f'\n![transfer]({p})' for p in plots])


def table(head: list[str], lines: list[list[str]]) -> str:
  return '\n'.join(['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|'] +
                   ['| ' + ' | '.join(line) + ' |' for line in lines])


def _fmt(value, fmt: str = '{:.4f}', std=None) -> str:
  if value is None:
    return '–'
  return fmt.format(value) + ('' if std is None else f' ± {fmt.format(std)}')


def plot(rows: list[dict], cols: list[Column], title: str, path: str) -> bool:
  """Grouped bars: a group per model × feature, a bar per accuracy column (± std where there is one). Returns
  False (and writes nothing) when there is no number yet."""
  cols = [c for c in cols if any(row[c.field] is not None for row in rows)]
  if not cols:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  width = 0.8 / len(cols)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) * len(cols) + 2), 4))
  for i, c in enumerate(cols):
    xs = [j + (i - (len(cols) - 1) / 2) * width for j in range(len(rows))]
    values = [float('nan') if row[c.field] is None else row[c.field] for row in rows]
    errors = [row.get(f'{c.field}_std') for row in rows]
    ax.bar(xs, values, width, label=c.title, capsize=3,
           yerr=[e or 0.0 for e in errors] if any(e is not None for e in errors) else None)
  ax.set_xticks(range(len(rows)), [f'{row["model"]}\n{row["feature"]}' for row in rows])
  ax.set(title=title, ylabel='top-1 (test split)', ylim=(0, 1.05))
  ax.grid(True, axis='y', alpha=0.3)
  ax.legend(fontsize=8, ncol=min(3, len(cols)), loc='upper center', bbox_to_anchor=(0.5, -0.15))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ------------------------------------------------------------------------------------------------ command line


def define_flags():
  """The command line's flags, defined only when this module runs as the program (as vitclip.sweep's)."""
  global _CONFIG, _WORKDIR, _PRINT, _REPORT_ONLY, _MEASURE
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Transfer config file (configs/transfer_shapes.py).',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory: <model>/<feature>/<protocol>/ and the report.')
  _PRINT = flags.DEFINE_bool('print_commands', False, 'Print one command per protocol run and run nothing.')
  _REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Rewrite the report from the protocol directories.')
  _MEASURE = flags.DEFINE_list('measure', None, 'Internal: measure these fine-tuning runs in this process.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  workdir = _WORKDIR.value
  with entry.reported_errors(workdir, 'transfer'):
    tc, where = _CONFIG.value, config_flags.get_config_filename(flags.FLAGS['config'])
    if _MEASURE.value is not None:
      if tc.memory_devices:
        from vitclip import memory  # pylint: disable=g-import-not-at-top
        memory.set_device_count(tc.memory_devices)
      wanted = set(_MEASURE.value)
      measure([j for j in make_jobs(tc, parse_models(tc.models, check=False)) if j.name in wanted], workdir,
              tc.memory_devices)
      return
    # The transfer reads configs and validates on CPU; only the commands (and memory measurements) use accelerators.
    jax.config.update('jax_platforms', 'cpu')
    argv = [a for a in sys.argv[1:] if not a.startswith(('--measure', '--print_commands', '--report_only'))]
    code = run_transfer(tc, where, workdir, argv, print_commands=_PRINT.value, report_only=_REPORT_ONLY.value)
  sys.exit(code)


if __name__ == '__main__':
  define_flags()
  if sweep.REPO_ROOT not in sys.path:  # configs/ is a top-level package next to vitclip/ (the fine-tuning config).
    sys.path.insert(0, sweep.REPO_ROOT)
  app.run(main, flags_parser=entry.parse_flags)
