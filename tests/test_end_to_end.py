"""Train -> crash -> resume -> evaluate on a tiny shapes run: the resumed run is the uninterrupted run."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny import tiny_config
from vitclip import run as run_lib
from vitclip import trainer
from vitclip.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Crash(Exception):
  """Stands in for a kill: training stops between steps, an async checkpoint save may still be in flight."""


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['step']: r for r in rows if 'loss' in r}


@pytest.fixture
def data_dir(tiny_data_dir):
  return tiny_data_dir


@pytest.fixture
def uninterrupted(tiny_run):
  return tiny_run


def test_outputs_of_a_run(uninterrupted):
  workdir, results = uninterrupted
  metrics = read_metrics(workdir)
  assert sorted(metrics) == list(range(1, 9))
  for row in metrics.values():
    assert {'loss', 'lr', 'samples_per_s', 'train/t', 'train/grad_norm'} <= set(row)
    assert np.isfinite(row['loss'])
  assert 0.0 <= results['zeroshot/shapes/top1'] <= 1.0
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    assert json.load(f) == pytest.approx(results)
  for name in ('tokenizer.json', 'config.json', 'tensorboard'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']


def test_resume_after_crash_replays_the_same_losses(uninterrupted, data_dir, tmp_path, monkeypatch):
  ref_dir, ref_results = uninterrupted
  workdir = str(tmp_path / 'crashed')
  original_next = pipeline.TrainIterator.__next__
  calls = {'n': 0}

  def crashing_next(self):
    calls['n'] += 1
    if calls['n'] > 6:  # steps 1-6 run; the checkpoint of step 4 exists, steps 5-6 are lost.
      raise Crash()
    return original_next(self)

  monkeypatch.setattr(pipeline.TrainIterator, '__next__', crashing_next)
  with pytest.raises(Crash):
    trainer.train(tiny_config(data_dir), workdir)
  assert max(read_metrics(workdir)) == 6
  monkeypatch.setattr(pipeline.TrainIterator, '__next__', original_next)

  results = trainer.train(tiny_config(data_dir), workdir)  # the same command again: resumes from step 4
  got, want = read_metrics(workdir), read_metrics(ref_dir)
  assert sorted(got) == sorted(want)
  for step in want:
    np.testing.assert_allclose(got[step]['loss'], want[step]['loss'], rtol=1e-5, atol=1e-6, err_msg=f'step {step}')
  assert results == pytest.approx(ref_results, abs=1e-5)


def test_eval_restores_the_trained_model(uninterrupted, data_dir, tmp_path):
  """What `eval.py --config tests/tiny.py:DATA --workdir RUN` evaluates (the run's config.json under the given
  evaluation settings; in process, where the run's encoders are already compiled): the run's own numbers, written
  to RUN/eval_results.json. The command line itself: test_eval_cli_takes_the_run_from_its_own_config. RUN is a
  copy: the session's run is read by other tests meanwhile."""
  workdir, results = uninterrupted
  workdir = str(shutil.copytree(workdir, tmp_path / 'run'))
  given = tiny_config(data_dir)
  again = trainer.evaluate(run_lib.model_dir_config(workdir, given, evals_from=given), workdir)
  assert again == pytest.approx(results, abs=1e-5)
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    assert json.load(f) == pytest.approx(results, abs=1e-5)


def test_missing_checkpoint_is_a_clear_error(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    trainer.evaluate(tiny_config(data_dir), str(tmp_path / 'empty'))


def test_python_api_reproduces_the_runs_zero_shot(uninterrupted, data_dir):
  """vitclip.load(RUN) -> preprocess, encode_image, zero_shot_classifier: shape top-1 on the test split equals
  the run's own evaluation."""
  import vitclip
  from configs import shapes as shapes_config
  from vitclip.data import generated, shapes, sources
  workdir, results = uninterrupted
  model, params, tokenizer, preprocess = vitclip.load(workdir)
  assert model.img.image_size == 32 and tokenizer.vocab_size == model.txt.vocab_size
  config = tiny_config(data_dir)
  source, _ = generated.load_source('shapes', config.evals.zeroshot.split, config.data, data_dir)
  records = [source[i] for i in range(len(source))]
  images = np.stack([preprocess(sources.decode_image(r)) for r in records])
  labels = np.array([r['label'] for r in records])
  classifier = vitclip.zero_shot_classifier(model, params, tokenizer, list(shapes.SHAPE_NAMES),
                                            shapes_config.TEMPLATES)
  predicted = np.asarray(vitclip.encode_image(model, params, images) @ classifier.T).argmax(-1)
  assert np.mean(predicted == labels) == pytest.approx(results['zeroshot/shapes/top1'], abs=1e-6)
  text = vitclip.encode_text(model, params, tokenizer, ['a red circle.', 'a star.'])
  assert text.shape == (2, model.img.embed_dim) and np.allclose(np.linalg.norm(text, axis=-1), 1, atol=1e-5)


def test_eval_cli_takes_the_run_from_its_own_config(uninterrupted, data_dir, tmp_path):
  """`eval.py --workdir OUT --checkpoint_dir RUN` with no --config: the run's 32 px model, its tokenizer and data
  settings (tests/tiny.py differs from configs/base.py in all of them) give the run's own numbers, printed and
  written to OUT; with `--config FILE:ARG`, a conflicting model override is refused with both values (status 2,
  one error, no traceback) before anything compiles."""
  workdir, results = uninterrupted
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  out = str(tmp_path / 'out')
  proc = subprocess.run([sys.executable, 'eval.py', '--workdir', out, '--checkpoint_dir', workdir], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r'^zeroshot/shapes/top1 +{:.4f}$'.format(results['zeroshot/shapes/top1']), proc.stdout, re.M)
  with open(os.path.join(out, 'eval_results.json')) as f:
    assert json.load(f) == pytest.approx(results, abs=1e-5)
  proc = subprocess.run([sys.executable, 'eval.py', '--config', f'tests/tiny.py:{data_dir}', '--workdir', out,
                         '--checkpoint_dir', workdir, '--config.model.image.image_size=48'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert '--config.model.image.image_size=48 conflicts with model.image.image_size=32' in proc.stderr
