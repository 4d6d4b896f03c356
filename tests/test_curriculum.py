"""vitclip.curriculum: the top-K per class selection against hand-made cases, the K schedule, the settings'
checks, and one round end to end on the tiny run (predict the pool, select, import, fine-tune 2 steps, report),
whose rerun runs nothing again.
"""

import json
import os
import subprocess

import numpy as np
import pytest

from configs import curriculum_shapes
from vitclip import curriculum, sweep
from vitclip.data import sources
from vitclip.errors import ConfigError


def settings(**fields):
  cc = curriculum_shapes.get_config()
  cc.update(fields)
  return cc


# ------------------------------------------------------------------------------------------- selection


def test_select_top_k_by_hand():
  probs = np.array([
      [0.7, 0.2, 0.1],   # 0 -> class 0 (0.7)
      [0.9, 0.05, 0.05],  # 1 -> class 0 (0.9)
      [0.7, 0.3, 0.0],   # 2 -> class 0 (0.7, ties with row 0: row 0 first)
      [0.2, 0.6, 0.2],   # 3 -> class 1 (0.6)
      [0.5, 0.5, 0.0],   # 4 -> class 0 (argmax ties: the first class), 0.5
      [0.1, 0.1, 0.8],   # 5 -> class 2 (0.8)
  ])
  rows, labels = curriculum.select_top_k(probs, 2)
  assert rows.tolist() == [1, 0, 3, 5] and labels.tolist() == [0, 0, 1, 2]
  rows, labels = curriculum.select_top_k(probs, 3)  # Class 0's tie: rows 0 and 2, in that order.
  assert rows.tolist() == [1, 0, 2, 3, 5] and labels.tolist() == [0, 0, 0, 1, 2]
  rows, labels = curriculum.select_top_k(probs, 10)  # Fewer candidates than K: each class gives all it has.
  assert rows.tolist() == [1, 0, 2, 4, 3, 5] and labels.tolist() == [0, 0, 0, 0, 1, 2]
  # A class that no row predicts gives nothing; no row is selected twice.
  rows, labels = curriculum.select_top_k(np.array([[0.1, 0.9], [0.3, 0.7]]), 5)
  assert rows.tolist() == [0, 1] and labels.tolist() == [1, 1]


def test_select_top_k_matches_a_brute_force_reference():
  rng = np.random.default_rng(0)
  probs = curriculum.softmax(rng.normal(size=(200, 7)) * 3)
  np.testing.assert_allclose(probs.sum(1), 1.0)
  rows, labels = curriculum.select_top_k(probs, 9)
  want = []
  for c in range(7):  # Every row of class c ranked by (-confidence, row), the first 9.
    members = [i for i in range(200) if probs[i].argmax() == c]
    want += sorted(members, key=lambda i: (-probs[i, c], i))[:9]
  assert rows.tolist() == want
  assert labels.tolist() == [int(probs[i].argmax()) for i in want]


def test_k_schedule_geometric_or_given():
  assert curriculum.k_schedule(settings(rounds=4, k_first=10, k_growth=2.0)) == [10, 20, 40, 80]
  assert curriculum.k_schedule(settings(rounds=3, k_first=5, k_growth=1.5)) == [5, 8, 11]  # round(7.5), round(11.25)
  assert curriculum.k_schedule(settings(rounds=3, k_schedule=(4, 4, 100))) == [4, 4, 100]


@pytest.mark.parametrize('fields, message', [
    (dict(model=''), '--config.model is empty'),
    (dict(rounds=0), '--config.rounds=0 must be an integer >= 1'),
    (dict(k_growth=0.5), '--config.k_growth=0.5 must be a number >= 1'),
    (dict(rounds=3, k_schedule=(8, 16)), 'must hold one integer >= 1 per round'),
    (dict(method='linear'), "--config.method='linear' is unknown"),
    (dict(pool_max_examples=-1), '--config.pool_max_examples=-1'),
])
def test_settings_name_their_field(fields, message):
  cc = settings(**{'model': '/m', **fields})
  with pytest.raises(ConfigError, match=message.replace('+', r'\+').replace('(', r'\(').replace(')', r'\)')):
    curriculum.check_settings(cc, 'configs/curriculum_shapes.py')


def test_mistakes_stop_before_anything_runs(tiny_run, tmp_path):
  workdir, _ = tiny_run
  with pytest.raises(ConfigError, match=r'--config.model=.*has no config.json'):
    curriculum.run_curriculum(settings(model=str(tmp_path)), 'c.py', str(tmp_path / 'out'), [])
  with pytest.raises(ConfigError, match=r"--config.pool_split='nope'.* Set --config.pool_split=<one of those>"):
    curriculum.run_curriculum(settings(model=workdir, pool_split='nope'), 'c.py', str(tmp_path / 'out'), [])
  with pytest.raises(ConfigError, match=r'round 1 .*--config.lr=-1.0 must be positive'):  # Round 1's run's config.
    curriculum.run_curriculum(settings(model=workdir, lr=-1.0), 'c.py', str(tmp_path / 'out'), [])
  assert not os.path.exists(tmp_path / 'out' / 'round_1')


# ------------------------------------------------------------------------------------------- one round


def read_json(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def curriculum_run(tiny_run, tmp_path_factory):
  """(settings, workdir, the tiny run's final evaluation) of one round: K=3 from the tiny run, 2 steps of 16 of the
  image tower (tests/test_finetune.py's and tests/test_transfer.py's fine-tuning: one train-step program)."""
  model, evaluation = tiny_run
  workdir = str(tmp_path_factory.mktemp('curriculum'))
  cc = settings(model=model, feature='label', rounds=1, k_first=3, steps=2, batch=16, warmup=0, lr=1e-3,
                towers='img', overrides=curriculum_shapes.dotted({'ckpt_every': 2, 'evals.batch_size': 32}))
  assert curriculum.run_curriculum(cc, 'c.py', workdir, ['--config', 'c.py']) == 0
  return cc, workdir, evaluation


def test_one_round_selects_imports_fine_tunes_and_reports(curriculum_run, tiny_data_dir):
  cc, workdir, evaluation = curriculum_run
  results = read_json(os.path.join(workdir, 'results.json'))
  zero, first = results['rounds']
  # Round 0 is the model's zero-shot accuracy on the test split, as its own evaluation measured it.
  assert zero['test_zeroshot_top1'] == pytest.approx(evaluation['zeroshot/shapes/top1'], abs=1e-6)

  # The selection: at most K per predicted class, stored with its records; the pseudo-labelled import's train
  # split holds exactly those pool images under those labels, and its test split the labelled test images.
  selection = read_json(os.path.join(workdir, 'round_1', 'selection.json'))
  names = list(selection['per_class'])
  records, pseudo = selection['records'], selection['pseudo_labels']
  assert len(records) == len(set(records)) == selection['selected'] == first['selected'] > 0
  assert all(np.bincount(pseudo, minlength=len(names)) <= 3)
  pool, _ = sources.load_source(f'shapes/s32_n512_v64_t64_seed0', 'test', tiny_data_dir)
  hidden = np.array([pool[i]['label'] for i in records])
  assert selection['precision'] == pytest.approx(float(np.mean(hidden == np.array(pseudo))))
  imported, info = sources.load_source('curriculum_r1', 'train', os.path.join(workdir, 'data'))
  imported_names = info.features['label'].names
  got = sorted((int(os.path.basename(r['filename'])[:-4]), imported_names[r['label']]) for r in
               (imported[i] for i in range(len(imported))))
  assert got == sorted((i, names[c]) for i, c in zip(records, pseudo))
  row = imported[0]
  np.testing.assert_array_equal(sources.decode_image(row),
                                sources.decode_image(pool[int(os.path.basename(row['filename'])[:-4])]))
  test, _ = sources.load_source('curriculum_r1', 'test', os.path.join(workdir, 'data'))
  assert len(test) == len(pool) == zero['test_examples']

  # The round's run fine-tuned from the model on that data set, and its test accuracy is in the report.
  run = os.path.join(workdir, 'round_1', 'run')
  saved = read_json(os.path.join(run, 'config.json'))
  assert (saved['init_from'], saved['data']['name'], saved['total_steps']) == (cc.model, 'curriculum_r1', 2)
  tuned = read_json(os.path.join(run, 'eval_results.json'))['zeroshot/curriculum_r1/top1']
  assert first['test_zeroshot_top1'] == tuned and first['status'] == 'done'
  with open(os.path.join(workdir, 'report.md')) as f:
    report = f.read()
  assert (f'| 1 | 3 | {first["selected"]} | {selection["precision"]:.4f} | {selection["pool_zeroshot_top1"]:.4f} | '
          f'{tuned:.4f} | {tuned - zero["test_zeroshot_top1"]:+.4f} | done |') in report
  with open(os.path.join(workdir, 'curriculum.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_rerun_runs_nothing_again(curriculum_run, monkeypatch):
  cc, workdir, _ = curriculum_run
  before = read_json(os.path.join(workdir, 'results.json'))

  def no_subprocess(*args, **kwargs):
    raise AssertionError(f'a finished round ran again: {args}')
  monkeypatch.setattr(subprocess, 'Popen', no_subprocess)
  monkeypatch.setattr(curriculum, 'select_round', no_subprocess)
  assert curriculum.run_curriculum(cc, 'c.py', workdir, ['--config', 'c.py']) == 0
  assert read_json(os.path.join(workdir, 'results.json')) == before


def test_classifier_rounds_also_score_zero_shot(curriculum_run, capsys):
  cc, workdir, _ = curriculum_run
  cc = settings(**{**cc.to_dict(), 'method': 'classifier', 'rounds': 2, 'towers': '', 'overrides': cc.overrides})
  assert curriculum.run_curriculum(cc, 'c.py', workdir, [], print_commands=True) == 0
  first, second = capsys.readouterr().out.strip().splitlines()[-2:]
  assert f'configs/finetune.py:{cc.model},curriculum_r1,method=classifier,steps=2' in first
  assert "--config.evals.names=(classifier,zeroshot)" in first.replace('"', '')
  assert f'finetune.py:{os.path.join(workdir, "round_1", "run")},curriculum_r2,method=classifier' in second
  assert sweep.split_spec(curriculum.make_round(cc, workdir, 2, 'D').base)[1].startswith('D,curriculum_r2,')
