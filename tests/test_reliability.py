"""A run never ends in a crash, a lost hour or a silent wrong number: each row of the README's fault table.

Divergence stops with nothing non-finite saved; SIGTERM writes a checkpoint and the rerun continues exactly;
an unusable latest checkpoint falls back to the previous one; a full disk is one clear error; a workdir
rerun with another model is refused before anything is written (with other logging it is allowed and
recorded); config mistakes stop before the first step.

Every run here is the tiny config of the session's `tiny_run` (tests/tiny.py), so each compiles nothing new:
its programs are in the persistent compilation cache (tests/conftest.py) after the first.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.tiny import tiny_config as config
from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import trainer
from vitclip.data import pipeline
from vitclip.errors import CheckpointWriteError, ConfigError, Diverged, Preempted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8  # tests/tiny.py: 8 steps, checkpoints at 4 and 8 (the session's `tiny_run`).


def read_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def stored_params_finite(workdir, abstract_params):
  steps = checkpoint_lib.Checkpointer.steps_in(workdir)
  assert steps
  for step in steps:
    params = checkpoint_lib.restore_params(os.path.join(workdir, 'checkpoints', str(step)), abstract_params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params)), step


@pytest.fixture
def data_dir(tiny_data_dir):
  return tiny_data_dir


@pytest.fixture
def reference(tiny_run):
  return tiny_run


@pytest.fixture(scope='module')
def built(tiny_data_dir, tmp_path_factory):
  """The run of the tiny config, built once for the module (its abstract state is every tiny run's)."""
  return trainer.run_lib.build(config(tiny_data_dir), str(tmp_path_factory.mktemp('built')))


@pytest.fixture(scope='module')
def good_state(built, tiny_run):
  """The tiny run's last checkpoint, restored (finite)."""
  return checkpoint_lib.Checkpointer(tiny_run[0]).restore(built.abstract_state)


def copy_of(run_dir, workdir):
  shutil.copytree(run_dir, workdir)
  return workdir


# ------------------------------------------------------------------------------------------- divergence


def test_divergence_stops_the_run_and_saves_nothing_non_finite(data_dir, built, tmp_path, monkeypatch):
  """Non-finite losses from step 2 on: every such step is skipped (nothing applied), the checkpoint of step 4
  holds finite params, and the fifth non-finite step in a row (step 6) stops the run.

  The poison is token ids past the vocabulary (the embedding lookup reads them as NaN): the batch keeps its
  dtypes, so the run compiles the very train step of the tiny run (a float image batch would compile another).
  """
  workdir = str(tmp_path / 'diverged')
  original_next = pipeline.TrainIterator.__next__
  calls = {'n': 0}
  vocab = built.config.model.text.vocab_size

  def poisoned_next(self):
    calls['n'] += 1
    batch = original_next(self)
    if calls['n'] < 2:
      return batch
    tokens = batch['tokens']
    return {**batch, 'tokens': jax.device_put(np.full(tokens.shape, vocab + 7, tokens.dtype), tokens.sharding)}

  monkeypatch.setattr(pipeline.TrainIterator, '__next__', poisoned_next)
  with pytest.raises(Diverged) as e:
    trainer.train(config(data_dir, max_skipped_steps=5), workdir)
  message = str(e.value)
  assert 'steps 2-6' in message and 'config.max_skipped_steps' in message and '--config.optim.lr' in message
  assert 'the last checkpoint is step 4' in message
  assert e.value.exit_code == 3
  losses = read_losses(workdir)
  assert max(losses) == 6  # Stopped at the fifth skip in a row.
  assert np.isfinite(losses[1]) and not any(np.isfinite(losses[s]) for s in range(2, 7))
  assert checkpoint_lib.Checkpointer.steps_in(workdir) == [4]
  stored_params_finite(workdir, built.abstract_state.params)


# --------------------------------------------------------------------------------------------- signals


def test_sigterm_saves_and_the_rerun_continues_exactly(data_dir, reference, tmp_path, monkeypatch):
  ref_dir, ref_results = reference
  workdir = str(tmp_path / 'preempted')
  original_next = pipeline.TrainIterator.__next__
  calls = {'n': 0}

  def next_then_signal(self):
    calls['n'] += 1
    if calls['n'] == 3:  # During step 3: the handler only records it; step 3 finishes, then the run saves.
      os.kill(os.getpid(), signal.SIGTERM)
    return original_next(self)

  monkeypatch.setattr(pipeline.TrainIterator, '__next__', next_then_signal)
  with pytest.raises(Preempted) as e:
    trainer.train(config(data_dir), workdir)
  assert e.value.exit_code == 128 + signal.SIGTERM
  assert 'after step 3' in str(e.value) and 'Rerun the same command' in str(e.value)
  assert checkpoint_lib.Checkpointer.steps_in(workdir) == [3]
  monkeypatch.setattr(pipeline.TrainIterator, '__next__', original_next)
  results = trainer.train(config(data_dir), workdir)
  got, want = read_losses(workdir), read_losses(ref_dir)
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5, atol=1e-6)
  assert results == pytest.approx(ref_results, abs=1e-5)


# --------------------------------------------------------------------------------------------- checkpoints


def test_truncated_latest_checkpoint_falls_back_and_other_logging_is_allowed(data_dir, reference, tmp_path, capsys):
  """A copy of the finished tiny run whose latest checkpoint (8) is truncated and whose recorded config logs
  otherwise, rerun: the settings change is allowed and recorded, checkpoint 8 is set aside, the run resumes from 4,
  redoes 5-8 and ends where the uninterrupted run did.

  The logging settings are changed in the copy's config.json rather than in the rerun's config: the rerun is then
  the tiny config itself, whose train step the session has traced already (another config traces it again)."""
  ref_dir, ref_results = reference
  workdir = copy_of(ref_dir, str(tmp_path / 'corrupt'))
  # The array data of the checkpoint: orbax's merged OCDBT store keeps it in state/d/ (the per-process stores
  # under ocdbt.process_*/ are not read once merged).
  data_dir_ = os.path.join(workdir, 'checkpoints', str(STEPS), 'state', 'd')
  biggest = max((os.path.join(data_dir_, f) for f in os.listdir(data_dir_)), key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)
  config_path = os.path.join(workdir, config_lib.CONFIG_FILE)
  with open(config_path) as f:
    recorded = json.load(f)
  with open(config_path, 'w') as f:
    json.dump({**recorded, 'log_every': 2, 'keep_ckpts': 5}, f)
  results = trainer.train(config(data_dir), workdir)  # Resumes from step 4, redoes 5-8.
  err = capsys.readouterr().err
  assert f'checkpoint {STEPS} of' in err and 'is unusable' in err and 'previous checkpoint is used' in err
  assert os.path.isdir(os.path.join(workdir, checkpoint_lib.UNUSABLE, str(STEPS)))  # Kept for inspection.
  assert results == pytest.approx(ref_results, abs=1e-5)
  np.testing.assert_allclose(read_losses(workdir)[STEPS], read_losses(ref_dir)[STEPS], rtol=1e-5)
  with open(os.path.join(workdir, 'config_changes.jsonl')) as f:
    change = json.loads(f.readline())
  assert change == {'keep_ckpts': [5, 3], 'log_every': [2, 1]}
  with open(config_path) as f:
    assert json.load(f)['log_every'] == 1


@pytest.fixture(scope='module')
def nan_checkpoint(good_state, tmp_path_factory):
  """checkpoints/8 of the tiny run with non-finite params: the tiny run's last state times NaN, saved once for the
  module (the tests copy it)."""
  workdir = str(tmp_path_factory.mktemp('nan'))
  target = checkpoint_lib.Checkpointer(workdir)
  target.save(STEPS, good_state.replace(params=jax.tree.map(lambda x: x * np.nan, good_state.params)), force=True)
  target.wait()
  target.close()
  return os.path.join(workdir, 'checkpoints', str(STEPS))


def test_non_finite_checkpoint_is_not_restored(built, reference, nan_checkpoint, tmp_path):
  """A copy of the tiny run whose latest checkpoint (8) holds non-finite params resumes from checkpoint 4."""
  workdir = copy_of(reference[0], str(tmp_path / 'nan'))
  latest = os.path.join(workdir, 'checkpoints', str(STEPS))
  shutil.rmtree(latest)
  shutil.copytree(nan_checkpoint, latest)
  restored = checkpoint_lib.Checkpointer(workdir).restore(built.abstract_state)
  assert int(restored.step) == 4
  assert checkpoint_lib.Checkpointer.steps_in(workdir) == [4]


def test_when_no_checkpoint_restores_nothing_is_moved(built, nan_checkpoint, tmp_path):
  """Every checkpoint failing (here: all non-finite; in practice, code that no longer matches them) is one
  ConfigError, and the checkpoints stay where they are."""
  workdir = str(tmp_path / 'all_bad')
  shutil.copytree(nan_checkpoint, os.path.join(workdir, 'checkpoints', str(STEPS)))
  with pytest.raises(ConfigError, match=f'step {STEPS}: ValueError: it holds non-finite values.*nothing was moved'):
    checkpoint_lib.Checkpointer(workdir).restore(built.abstract_state)
  assert checkpoint_lib.Checkpointer.steps_in(workdir) == [STEPS]


def test_checkpoint_of_an_example_counting_pipeline_is_refused(built, reference, tmp_path):
  """A checkpoint whose data position counts examples (step x batch, as the per-record pipeline saved it)
  would resume at the wrong place in the data: it is refused with the reason, and nothing is moved."""
  workdir = copy_of(reference[0], str(tmp_path / 'examples'))
  for step in (4, STEPS):
    with open(os.path.join(workdir, 'checkpoints', str(step), 'data', 'process_0-of-1.json'), 'w') as f:
      json.dump({'next_index': step * built.config.batch_size}, f)
  data = pipeline.make_train_iterator(built.config, built.tokenizer.encode, built.mesh)
  with pytest.raises(ConfigError, match=r'step 8: ValueError: its data position \(128 batches read\) is not its '
                     r'step.*step 4: .*\(64 batches read\).*nothing was moved'):
    checkpoint_lib.Checkpointer(workdir).restore(built.abstract_state, data.grain_iterator)
  assert checkpoint_lib.Checkpointer.steps_in(workdir) == [4, STEPS]


def test_disk_full_during_a_save_is_one_clear_error(data_dir, tmp_path, monkeypatch):
  def full(self, step, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', full)
  with pytest.raises(CheckpointWriteError) as e:
    trainer.train(config(data_dir), str(tmp_path / 'full'))
  assert e.value.exit_code == 4
  assert 'Could not write checkpoint 4' in str(e.value) and 'No space left on device' in str(e.value)
  assert 'no earlier checkpoint exists' in str(e.value)


# ---------------------------------------------------------------------------------------- workdir contract


def test_workdir_rerun_with_another_model_is_refused_before_writing(data_dir, reference):
  ref_dir, _ = reference
  path = os.path.join(ref_dir, config_lib.CONFIG_FILE)
  before = open(path).read()
  for overrides, fields in (({'model.embed_dim': 64}, ['model.embed_dim: 32 in', '64 now']),
                            ({'tokenizer.vocab_size': 500}, ['tokenizer.vocab_size: 300 in', '500 now']),
                            ({'data.shapes.seed': 1}, ['data.shapes.seed'])):
    with pytest.raises(ConfigError) as e:
      trainer.train(config(data_dir, **overrides), ref_dir)
    for field in fields:
      assert field in str(e.value)
    assert open(path).read() == before  # config.json untouched.


# ------------------------------------------------------------------------------------------ fail early


@pytest.mark.parametrize('overrides, fragment', [
    ({'ckpt_every': 0}, 'config.ckpt_every=0 must be an integer >= 1'),
    ({'log_every': 0}, 'config.log_every=0'),
    ({'total_steps': -5}, 'config.total_steps=-5'),
    ({'model.image.variant': 'tiny'}, "config.model.image.variant='tiny' has no patch size"),
    ({'model.dtype': 'float17'}, "config.model.dtype='float17' is unknown"),
    ({'optim.schedule': 'linear'}, "config.optim.schedule='linear' is unknown"),
    ({'evals.names': ('zeroshot', 'nope')}, 'nope'),
    ({'evals.dense.method': 'magic', 'evals.names': ('dense',)}, 'magic'),
    ({'evals.zeroshot.datasets': ('no_such_set',)}, 'no_such_set'),
    ({'tokenizer.path': '/no/such/tokenizer.json'}, "config.tokenizer.path='/no/such/tokenizer.json'"),
    ({'init_from': '/no/such/run'}, "config.init_from='/no/such/run'"),
])
def test_mistakes_stop_before_anything_is_built(data_dir, tmp_path, overrides, fragment):
  workdir = tmp_path / 'w'
  with pytest.raises(ConfigError) as e:
    trainer.train(config(data_dir, **overrides), str(workdir))
  assert fragment in str(e.value)
  assert not (workdir / 'checkpoints').exists() and not (workdir / config_lib.CONFIG_FILE).exists()


def test_cli_unknown_evaluator_fails_fast_with_one_line(data_dir, tmp_path):
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, 'train.py', '--config', f'tests/tiny.py:{data_dir}', '--workdir', str(tmp_path / 'w'),
       "--config.evals.names=('zeroshot','zeroshoot')"], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'zeroshoot' in proc.stderr and 'Traceback' not in proc.stderr
  assert time.perf_counter() - start < 30
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')
