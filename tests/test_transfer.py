"""vitclip.transfer: one command runs each protocol of a model directory as an ordinary eval.py / train.py run and
reports the numbers those runs wrote; a rerun runs nothing again; mistakes stop it before anything runs.

One transfer (a tiny model directory with initial weights, by colour, the probe and 2 steps of contrastive
fine-tuning) runs once for the module, its driver in this process (`run_transfer`, as `main` calls it; the protocols
are its eval.py / train.py subprocesses, and the fine-tuning run's memory is measured in this process, as on any CPU
run). The fine-tuning settings are those of tests/test_finetune.py's and tests/test_curriculum.py's contrastive runs
(2 steps of 16 of the image tower, lr 1e-3, no warmup): one train-step program, which the session's compilation
cache compiles once for the three. The command line itself runs in a subprocess where it stops at a mistake. The
classifier protocol is a train.py run like the contrastive one: its command is checked, and its report columns on
results written by hand (running it would add as much time as the contrastive run, the larger part of this file's).
"""

import csv
import json
import os
import subprocess
import sys

import pytest

from configs import finetune
from tests import tiny
from vitclip import checkpoint as checkpoint_lib
from vitclip import run as run_lib, sweep, sweep_report, transfer
from vitclip.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRANSFER_CONFIG = '''
from configs import transfer_shapes


def get_config(arg=None):
  c = transfer_shapes.get_config()
  c.features = ('color',)
  c.protocols = ('probe', 'contrastive')
  c.probe.shots, c.probe.draws = (16,), 2
  c.probe.overrides = transfer_shapes.dotted({'evals.linear_probe.l2_grid': (0.01,)})
  # tests/test_finetune.py's and tests/test_curriculum.py's fine-tuning: the same train step and evaluators.
  c.contrastive.update(steps=2, batch=16, warmup=0, lr=1e-3, towers='img')
  c.contrastive.overrides = transfer_shapes.dotted({'ckpt_every': 2, 'evals.batch_size': 32})  # One checkpoint.
  c.classifier.update(steps=2, batch=16, warmup=0, lr=1e-3)
  return c
'''


@pytest.fixture(scope='module')
def model_dir(tiny_data_dir, tmp_path_factory):
  """A model directory in the converted layout: config.json, tokenizer.json and params-only checkpoint 0 (the
  tiny config's initial weights; training it would cost more than everything here). The weights are those of a
  fresh tiny run's state: its init program is every tiny run's, so a session that trained one has it compiled."""
  directory = str(tmp_path_factory.mktemp('model'))
  run = run_lib.build(tiny.tiny_config(tiny_data_dir), directory)  # Writes config.json, trains the tokenizer.
  checkpoint_lib.save_params(directory, run_lib.create_state(run).params)
  return directory


@pytest.fixture(scope='module')
def transfer_config(tmp_path_factory):
  path = tmp_path_factory.mktemp('transfer_config') / 'tiny_transfer.py'
  path.write_text(TRANSFER_CONFIG)
  return str(path)


def run_transfer(config: str, workdir: str, *args: str):
  """`python -m vitclip.transfer` (the command line: flags, the config file, exit status and error output)."""
  cmd = [sys.executable, '-m', 'vitclip.transfer', '--config', config, '--workdir', workdir, *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope='module')
def study(transfer_config, model_dir, tmp_path_factory):
  """(workdir, the transfer's arguments) of the module's transfer: `main`'s call of the driver in this process,
  whose eval.py / train.py commands see this process's devices (the measured memory is of their train step)."""
  workdir = str(tmp_path_factory.mktemp('transfer'))
  models = f'--config.models=tiny={model_dir}'
  args = ['--config', transfer_config, '--workdir', workdir, models]
  code = transfer.run_transfer(load(transfer_config, models=f'tiny={model_dir}'), transfer_config, workdir, args)
  with open(os.path.join(workdir, 'report.md')) as f:
    assert code == 0, f.read()  # Its Problems section: each failed command's exit code and last lines.
  return workdir, args


def load(config: str, **fields):
  tc = sweep.load_config_file(config)
  return tiny.override(tc, **fields)


def read_json(path):
  with open(path) as f:
    return json.load(f)


def test_report_holds_the_numbers_each_protocol_wrote(study, model_dir):
  workdir, _ = study
  probe_dir, tuned_dir = (os.path.join(workdir, 'tiny', 'color', p) for p in ('probe', 'contrastive'))
  probe, tuned = (read_json(os.path.join(d, 'eval_results.json')) for d in (probe_dir, tuned_dir))
  # The runs had the settings of the transfer config: 16-shot only, 2 steps of 16 from the model, by colour.
  assert [k for k in probe if k.endswith('shot/top1')] == ['linear_probe/shapes_color/16shot/top1']
  saved = run_lib.flat(read_json(os.path.join(tuned_dir, 'config.json')))
  assert (saved['total_steps'], saved['batch_size'], saved['data.label_feature'], saved['init_from'],
          saved['ckpt_every']) == (2, 16, 'color', model_dir, 2)
  samples_per_s, _ = sweep_report.throughput(os.path.join(tuned_dir, 'metrics.jsonl'))
  peak = read_json(os.path.join(tuned_dir, 'memory.json'))['peak']
  assert samples_per_s > 0 and peak > 0

  results = read_json(os.path.join(workdir, 'results.json'))
  (row,) = results['rows']
  want = {'model': 'tiny', 'feature': 'color', 'zeroshot': probe['zeroshot/shapes_color/top1'],
          'linear_probe': probe['linear_probe/shapes_color/top1'],
          '16shot': probe['linear_probe/shapes_color/16shot/top1'],
          '16shot_std': probe['linear_probe/shapes_color/16shot/top1_std'],
          'contrastive': tuned['zeroshot/shapes_color/top1'], 'contrastive_batch': 16,
          'contrastive_samples_per_s': samples_per_s, 'contrastive_peak_memory_bytes': peak}
  assert row == want
  assert [(r['name'], r['status']) for r in results['protocols']] == [('tiny/color/probe', 'done'),
                                                                     ('tiny/color/contrastive', 'done')]
  with open(os.path.join(workdir, 'results.csv')) as f:
    (csv_row,) = csv.DictReader(f)
  assert {k: csv_row[k] for k in want} == {k: str(v) for k, v in want.items()}

  with open(os.path.join(workdir, 'report.md')) as f:
    report = f.read()
  assert (f'| tiny | color | {want["zeroshot"]:.4f} | {want["linear_probe"]:.4f} | {want["16shot"]:.4f} ± '
          f'{want["16shot_std"]:.4f} | {want["contrastive"]:.4f} |') in report
  assert f'| tiny | color | contrastive | 16 | 2 | {samples_per_s:,.0f} | {peak / 2**20:.2f} |' in report
  for r in results['protocols']:  # The report names the commands, and they are the ones that ran.
    assert f'`{r["command"]}`' in report
  assert f'--workdir {tuned_dir}' in results['protocols'][1]['command']
  assert results['protocols'][0]['command'].startswith(f'python eval.py --workdir {probe_dir} --checkpoint_dir '
                                                       f'{model_dir} ')
  with open(os.path.join(workdir, 'transfer.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_rerun_runs_nothing_again_and_rewrites_the_same_report(study, transfer_config, monkeypatch, capsys):
  workdir, args = study
  runs = os.path.join(workdir, 'tiny')
  mtimes = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(runs) for f in fs}
  reports = {n: open(os.path.join(workdir, n)).read() for n in ('report.md', 'results.json', 'results.csv')}

  def no_subprocess(*args, **kwargs):
    raise AssertionError(f'a command was started: {args}')
  monkeypatch.setattr(subprocess, 'Popen', no_subprocess)
  monkeypatch.setattr(subprocess, 'run', no_subprocess)
  tc = load(transfer_config, models=args[-1].split('=', 1)[1])
  assert transfer.run_transfer(tc, transfer_config, workdir, args) == 0
  assert capsys.readouterr().out.count('finished before: skipped') == 2
  assert {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, fs in os.walk(runs) for f in fs} == mtimes
  assert {n: open(os.path.join(workdir, n)).read() for n in reports} == reports


def test_classifier_commands_and_columns(model_dir, transfer_config, tmp_path, capsys):
  tc = load(transfer_config, models=f'tiny={model_dir}', protocols=('classifier',))
  workdir = str(tmp_path)
  if 'method' in finetune.KNOBS:  # configs/finetune.py:...,method=classifier exists (else its config cannot build).
    assert transfer.run_transfer(tc, transfer_config, workdir, [], print_commands=True) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f'python train.py --config configs/finetune.py:{model_dir},shapes,feature=color,')
    assert line.endswith(f',method=classifier --workdir {tmp_path}/tiny/color/classifier')
    assert all(f',{knob},' in line for knob in ('batch=16', 'lr=0.001', 'steps=2'))
    assert os.listdir(workdir) == []
  # What the classifier run writes (vitclip/evaluators/classifier.py's keys), by hand.
  directory = tmp_path / 'tiny' / 'color' / 'classifier'
  os.makedirs(directory / 'checkpoints' / '2' / 'state')
  (directory / 'eval_results.json').write_text(json.dumps({
      'classifier/shapes_color/top1': 0.75, 'classifier/shapes_color/wise_0/top1': 0.25,
      'classifier/shapes_color/wise_0.5/top1': 0.625}))
  (directory / 'metrics.jsonl').write_text('{"samples_per_s": 100}\n{"samples_per_s": 300}\n{"samples_per_s": 200}\n')
  (directory / 'memory.json').write_text(json.dumps({'peak': 3 * 2**20, 'devices': 1}))
  assert transfer.run_transfer(tc, transfer_config, workdir, [], report_only=True) == 0
  with open(tmp_path / 'report.md') as f:
    report = f.read()
  assert '| model | feature | classifier FT | classifier WiSE-FT (α = 0.5) |\n|---|---|---|---|\n' \
         '| tiny | color | 0.7500 | 0.6250 |' in report
  assert '| model | feature | α = 0 | α = 0.5 |\n|---|---|---|---|\n| tiny | color | 0.2500 | 0.6250 |' in report
  assert '| tiny | color | classifier | 16 | 2 | 250 | 3.00 |' in report


def test_mistakes_stop_before_anything_runs(model_dir, transfer_config, tmp_path):
  proc = run_transfer(transfer_config, str(tmp_path / 'out'))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'Error: --config.models is empty; name the model directories to compare as name=DIR pairs, e.g. '
      '--config.models="softmax=/tmp/shapes_softmax,sigmoid=/tmp/shapes_sigmoid" (training workdirs or python -m '
      'vitclip.convert outputs).']
  assert os.listdir(tmp_path / 'out') == ['transfer.log']

  def error(**fields):
    with pytest.raises(ConfigError) as e:
      transfer.run_transfer(load(transfer_config, **fields), transfer_config, str(tmp_path / 'out'), [])
    return str(e.value)

  os.makedirs(tmp_path / 'untrained' / 'checkpoints')
  with open(os.path.join(model_dir, 'config.json')) as f:
    (tmp_path / 'untrained' / 'config.json').write_text(f.read())
  assert error(models=f'tiny={tmp_path}/none,other={tmp_path / "untrained"}').splitlines() == [
      f'--config.models: tiny={tmp_path}/none does not exist; give a training workdir or the --out of python -m '
      'vitclip.convert.',
      f'--config.models: other={tmp_path}/untrained has no checkpoint (checkpoints/<step>/state); train it first or '
      'give another directory.']
  assert error(models=f'tiny={tmp_path}').endswith('has no config.json, so it is not a model directory; give a '
                                                   'training workdir or the --out of python -m vitclip.convert.')
  models = f'tiny={model_dir}'
  assert error(models=models, features=('colour',)).startswith(
      "tiny/colour/probe: config.evals.zeroshot.datasets entry 'shapes:colour': data set 'shapes' has no class "
      "feature 'colour'")
  assert error(models=models, dataset='nope').startswith(
      "tiny/color/probe: config.evals.zeroshot.datasets names 'nope', which is not prepared")
  assert error(models=models, **{'contrastive.lr': -1.0}) == (
      'tiny/color/contrastive: config.optim.lr=-1.0 must be positive (--config.contrastive.lr sets it).')
  assert error(models=models, protocols=('probe', 'classifer')) == (
      "--config.protocols: 'classifer' is not a protocol; use some of ('probe', 'contrastive', 'classifier').")
  assert os.listdir(tmp_path / 'out') == ['transfer.log']
