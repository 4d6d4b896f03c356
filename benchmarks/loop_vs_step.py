r"""The training loop's throughput against the train step's alone, for one config, side by side in one command.

  python benchmarks/loop_vs_step.py --config configs/shapes.py [--steps 300] [--rounds 2] [--json OUT]

`benchmarks/step.py` times the compiled step on random arrays already on the device; `train.py` runs the same
config for `--steps` steps with everything a real run does (the grain input pipeline reading and augmenting
records, host-to-device transfer, logging, one checkpoint at the end; no evaluation). The loop's samples/s is
the total over its log intervals after the first (which holds compilation): interval samples over interval
seconds, as `metrics.jsonl` records them. step.py times as many steps as those intervals hold (unless
`--step_steps` says otherwise): the best of several short windows would be biased upward against one long one.
The two alternate `--rounds` times, each in a fresh process, and the ratio uses each one's best round, so that
a slow moment of a shared machine does not decide it. Extra `--config.KEY=VALUE` arguments go to both.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_samples_per_s(config: str, overrides: list[str], steps: int) -> float:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'step.json')
    subprocess.run([sys.executable, 'benchmarks/step.py', '--config', config, *overrides, '--steps', str(steps),
                    '--json', out], cwd=ROOT, check=True, capture_output=True)
    with open(out) as f:
      return json.load(f)['samples_per_s']


def loop_samples_per_s(config: str, overrides: list[str], steps: int, log_every: int) -> tuple[float, list]:
  """(samples/s over the log intervals after the first, every interval's samples/s)."""
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run([sys.executable, 'train.py', '--config', config, '--workdir', workdir, *overrides,
                    f'--config.total_steps={steps}', f'--config.log_every={log_every}',
                    f'--config.ckpt_every={steps}', '--config.evals.names=()'], cwd=ROOT, check=True,
                   capture_output=True)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rates = [r['samples_per_s'] for r in map(json.loads, f) if 'samples_per_s' in r]
  if len(rates) < 2:
    raise SystemExit(f'--steps {steps} gives {len(rates)} log interval(s); use at least 2 x --log_every.')
  # Equal samples per interval: the total rate is the harmonic mean of the interval rates.
  timed = rates[1:]
  return len(timed) / sum(1 / r for r in timed), rates


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', required=True, help='config file (and :arg), as for train.py')
  p.add_argument('--steps', type=int, default=300, help='training-loop steps per round')
  p.add_argument('--log_every', type=int, default=50, help="the loop's log interval (its unit of timing)")
  p.add_argument('--step_steps', type=int, default=0,
                 help="timed steps of benchmarks/step.py per round; 0: as many as the loop's timed intervals")
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--json', default='')
  args, overrides = p.parse_known_args(argv)
  step_steps = args.step_steps or args.steps - args.log_every
  step, loop, intervals = [], [], []
  for i in range(args.rounds):
    step.append(step_samples_per_s(args.config, overrides, step_steps))
    rate, rates = loop_samples_per_s(args.config, overrides, args.steps, args.log_every)
    loop.append(rate)
    intervals.append(rates)
    print(f'round {i + 1}: step.py {step[-1]:.1f} samples/s, training loop {loop[-1]:.1f} samples/s', flush=True)
  result = {'config': args.config, 'overrides': overrides, 'loop_steps': args.steps, 'log_every': args.log_every,
            'step_steps': step_steps,
            'step_samples_per_s': step, 'loop_samples_per_s': loop, 'loop_interval_samples_per_s': intervals,
            'best_step': max(step), 'best_loop': max(loop), 'loop_over_step': max(loop) / max(step)}
  print(f"training loop / step.py (best rounds): {result['best_loop']:.1f} / {result['best_step']:.1f} = "
        f"{result['loop_over_step']:.3f}")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
