r"""Cost of image token masking, side by side in one process: CLIP, FLIP at r = 0.5 / 0.75, A-CLIP (and -eff).

  python benchmarks/masking.py --config configs/shapes.py [--config.key=value ...] [--steps 20] [--rounds 5] \
      [--json benchmarks/results/masking_shapes.json]

Every method's train step is built from the same config plus its overrides (METHODS) and compiled first; then
the methods are timed in `--rounds` interleaved rounds of `--steps` steps each (so a machine that slows down
mid-run slows every method alike) and the median round is reported. Per method: samples/s and its ratio to
CLIP, step time, model FLOPs per step (vitclip/flops.py: the matmuls and convolutions the step traces, A-CLIP's
EMA forward included), and the per-device peak memory of the compiled step (XLA's memory analysis). Inputs are
random arrays already on device (as benchmarks/step.py, whose flags this script shares).
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vitclip import host_malloc  # noqa: E402

if __name__ == '__main__':  # First: the re-exec restarts the interpreter, so nothing heavy is imported before it.
  host_malloc.reexec_if_needed()

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

import step as step_bench  # noqa: E402  (benchmarks/step.py: its flags --config, --steps, --warmup, --json)
from vitclip import memory, run as run_lib  # noqa: E402

_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds of --steps steps per method.',
                               lower_bound=1)
_METHODS = flags.DEFINE_list('methods', ['clip', 'flip_0.5', 'flip_0.75', 'aclip', 'aclip_eff'],
                             'Methods to compare (keys of METHODS); the first is the reference of the ratios.')

METHODS = {
    'clip': {},
    'flip_0.5': {'flip.mask_ratio': 0.5},
    'flip_0.75': {'flip.mask_ratio': 0.75},
    'aclip': {'aclip.enabled': True},
    'aclip_eff': {'aclip.enabled': True, 'aclip.score_scale': 0.5},
}


def with_overrides(config, overrides: dict):
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def prepare(name: str, base_config):
  """(compiled step, state, batch, facts) of one method, compiled and warmed up."""
  run = step_bench.build_benchmark_run(with_overrides(base_config, METHODS[name]))
  batch = step_bench.random_batch(run.config, run.mesh)
  state = run_lib.create_state(run)
  start = time.perf_counter()
  compiled = run_lib.compile_train_step(run).lower(state, batch).compile()
  facts = {'method': name, 'overrides': METHODS[name], 'compile_s': round(time.perf_counter() - start, 2),
           'model_gflops_per_step': step_bench.model_flops(run, state, batch) / 1e9,
           'peak_bytes_per_device': memory.memory_stats(compiled)['peak']}
  for _ in range(step_bench._WARMUP.value):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  return compiled, state, batch, facts


def main(argv):
  del argv
  base = step_bench._CONFIG.value
  names = _METHODS.value
  unknown = [n for n in names if n not in METHODS]
  if unknown:
    raise app.UsageError(f'--methods: unknown {unknown}; use some of {sorted(METHODS)}.')
  prepared = {n: prepare(n, base) for n in names}
  states = {n: p[1] for n, p in prepared.items()}
  times = {n: [] for n in names}
  for _ in range(_ROUNDS.value):
    for n in names:
      compiled, _, batch, _ = prepared[n]
      t0 = time.perf_counter()
      for _ in range(step_bench._STEPS.value):
        states[n], metrics = compiled(states[n], batch)
      jax.block_until_ready(metrics)
      times[n].append((time.perf_counter() - t0) / step_bench._STEPS.value)
  batch_size = base.batch_size
  rows = []
  for n in names:
    step_s = statistics.median(times[n])
    rows.append({**prepared[n][3], 'step_s': step_s, 'samples_per_s': batch_size / step_s,
                 'step_s_rounds': times[n]})
  ref = rows[0]
  for r in rows:
    r['samples_per_s_ratio'] = r['samples_per_s'] / ref['samples_per_s']
    r['flops_ratio'] = r['model_gflops_per_step'] / ref['model_gflops_per_step']
    r['peak_ratio'] = r['peak_bytes_per_device'] / ref['peak_bytes_per_device']
  device = jax.devices()[0]
  result = {'device': getattr(device, 'device_kind', str(device)), 'num_devices': jax.device_count(),
            'batch_size': batch_size, 'image_size': base.model.image.image_size,
            'image_variant': base.model.image.variant, 'steps_per_round': step_bench._STEPS.value,
            'rounds': _ROUNDS.value, 'methods': rows}
  print(f"{'method':10s} {'samples/s':>10s} {'ratio':>6s} {'GFLOP/step':>11s} {'ratio':>6s} {'peak MiB':>9s} "
        f"{'ratio':>6s}")
  for r in rows:
    print(f"{r['method']:10s} {r['samples_per_s']:10.1f} {r['samples_per_s_ratio']:6.2f} "
          f"{r['model_gflops_per_step']:11.2f} {r['flops_ratio']:6.2f} {r['peak_bytes_per_device'] / 2**20:9.1f} "
          f"{r['peak_ratio']:6.2f}")
  if step_bench._JSON.value:
    with open(step_bench._JSON.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
