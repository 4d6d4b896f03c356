r"""Regenerates the README's Quickstart and shapes evaluation tables from scratch, with the commands shown there.

  python benchmarks/readme_numbers.py --out /tmp/readme_numbers [--seeds 0,1] [--losses softmax,sigmoid]

For every (loss, seed): the Quickstart training command (the data set is generated on first use into
OUT/tfds, so the first run's time includes it), then `eval.py --workdir RUN` with zero-shot (shape and
colour), retrieval and dense probing on validation and on test. Training runs in a pseudo-terminal, so
OUT/<loss>_seed<seed>_terminal.txt is what the Quickstart shows a person. Prints a markdown table and writes
OUT/readme_numbers.json. Finished runs are reused (rerun the script to print the tables again); the wall
times are those of the run that trained.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALS = "--config.evals.names=('zeroshot','retrieval','dense')"
ZEROSHOT = "--config.evals.zeroshot.datasets=('shapes','shapes:color')"


def run(cmd, env, log, terminal=False):
  """Runs `cmd` from the repository root; returns wall seconds. Output goes to `log`; with `terminal`, through
  a pseudo-terminal (util-linux `script`), so `log` is what a person at a terminal sees."""
  start = time.perf_counter()
  if terminal:
    # A pseudo-terminal starts 0 columns wide, where progress bars draw nothing: give it a common size.
    cmd = ['script', '-q', '-e', '-c', 'stty cols 100 rows 40; ' + ' '.join(shlex.quote(c) for c in cmd), log]
  with open(os.devnull if terminal else log, 'w') as f:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    sys.exit(f'{" ".join(cmd)} failed with status {proc.returncode}; see {log}')
  return time.perf_counter() - start


def read(path):
  with open(path) as f:
    return json.load(f)


def cell(out, env, loss, seed):
  workdir = os.path.join(out, f'{loss}_seed{seed}')
  record = os.path.join(workdir, 'readme_numbers.json')
  if os.path.exists(record):
    return read(record)
  train = [sys.executable, 'train.py', '--config', f'configs/shapes.py:{loss}', '--workdir', workdir,
           f'--config.seed={seed}']
  seconds = run(train, env, os.path.join(out, f'{loss}_seed{seed}_terminal.txt'), terminal=True)
  result = {'loss': loss, 'seed': seed, 'train_wall_s': round(seconds, 1),
            'train_command': ' '.join(train[1:])}
  for split in ('validation', 'test'):
    evaluate = [sys.executable, 'eval.py', '--workdir', workdir, EVALS, ZEROSHOT,
                f'--config.evals.dense.split={split}', '--config.evals.dense.num_overlays=0']
    run(evaluate, env, os.path.join(out, f'{loss}_seed{seed}_eval_{split}.log'))
    result[split] = read(os.path.join(workdir, 'eval_results.json'))
    result[f'eval_command_{split}'] = ' '.join(evaluate[1:])
  with open(record, 'w') as f:
    json.dump(result, f, indent=1)
  return result


def table(results):
  rows = ['| loss | seed | train wall time | shape top-1 | colour top-1 | i→t R@1/5/10 | t→i R@1/5/10 | dense mIoU '
          'val / test | fg_iou val / test |', '| --- ' * 9 + '|']
  for r in results:
    v, t = r['validation'], r['test']
    recall = lambda d, k: '/'.join(f'{d[f"retrieval/shapes/{k}_r{n}"]:.3f}' for n in (1, 5, 10))
    rows.append(f'| {r["loss"]} | {r["seed"]} | {r["train_wall_s"] / 60:.1f} min | '
                f'{v["zeroshot/shapes/top1"]:.3f} | {v["zeroshot/shapes_color/top1"]:.3f} | '
                f'{recall(v, "i2t")} | {recall(v, "t2i")} | {v["dense/shapes/miou"]:.3f} / '
                f'{t["dense/shapes/miou"]:.3f} | {v["dense/shapes/fg_iou"]:.3f} / {t["dense/shapes/fg_iou"]:.3f} |')
  return '\n'.join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='directory for the runs, their logs and the JSON')
  parser.add_argument('--seeds', default='0', help='comma-separated training seeds')
  parser.add_argument('--losses', default='softmax,sigmoid', help='comma-separated loss kinds')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  env = {**os.environ, 'TFDS_DATA_DIR': os.path.join(args.out, 'tfds')}
  results = [cell(args.out, env, loss, int(seed)) for loss in args.losses.split(',')
             for seed in args.seeds.split(',')]
  with open(os.path.join(args.out, 'readme_numbers.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print(table(results))


if __name__ == '__main__':
  main()
