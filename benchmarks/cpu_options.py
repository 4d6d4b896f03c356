r"""XLA:CPU compile options against the default, for the train step of one config, side by side in one process.

  python benchmarks/cpu_options.py --config configs/shapes.py [--config.key=value ...] [--peer] \
      --option xla_cpu_enable_fast_math=true --option 'A=1;B=2' [--rounds 6] [--steps 5] [--json OUT]

Each `--option NAME=VALUE` is one variant: the step compiled with that XLA option (`compiler_options`, the
names of XLA's DebugOptions; true/false and integers are parsed) and nothing else changed; `--option
'A=1;B=2'` is one variant with both (e.g. `xla_cpu_experimental_ynn_fusion_type=` turns the YNNPACK fusions
off, which XNNPACK and oneDNN fusions need to take effect). Options are checked on a trivial program before
anything else: XLA's message and exit 2 for a name or value it refuses. `--peer` applies the architecture of
`benchmarks/peer_torch.py` at batch 256. Every variant is compiled from the same lowering and warmed up from the
same initial state; then the rounds time each one for `--steps` steps, in an order reversed every round, so
that a variant is compared with the default a few seconds apart. The report per variant: the median over rounds
of its samples/s over the default's in the same round, and its final loss (an option that changes the numbers
shows here). On a shared 2-core machine a single window varies by about ±10%, so only medians over several
rounds mean anything.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitclip import host_malloc  # noqa: E402

if __name__ == '__main__':  # As in step.py: the re-exec restarts the interpreter before the heavy imports.
  host_malloc.reexec_if_needed()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_torch  # noqa: E402
import step as step_bench  # noqa: E402

from vitclip import run as run_lib, sweep  # noqa: E402

# --config, --steps (per variant per round), --warmup and --json are step.py's flags.
# pylint: disable=protected-access
_CONFIG, _STEPS, _WARMUP, _JSON = step_bench._CONFIG, step_bench._STEPS, step_bench._WARMUP, step_bench._JSON
# pylint: enable=protected-access
_OPTIONS = flags.DEFINE_multi_string('option', [], "NAME=VALUE or 'A=1;B=2': one variant compiled with these "
                                     'XLA options.')
_PEER = flags.DEFINE_bool('peer', False, "The architecture of benchmarks/peer_torch.py at batch 256.")
_ROUNDS = flags.DEFINE_integer('rounds', 6, 'Timed rounds; each times every variant once.', lower_bound=1)

DEFAULT = 'default'


def parse_option(text: str) -> tuple[str, bool | int | str]:
  """'name=value' -> (name, value) with 'true'/'false' as bools and integers as ints."""
  name, sep, value = text.partition('=')
  if not sep or not name:
    raise app.UsageError(f'--option {text!r}: write NAME=VALUE, e.g. xla_cpu_use_onednn=true.', exitcode=2)
  if value.lower() in ('true', 'false'):
    return name, value.lower() == 'true'
  try:
    return name, int(value)
  except ValueError:
    return name, value


def check_options(variants: dict) -> None:
  """Every variant's options compile a trivial program, before the step is built: a misspelt name or a wrong
  value stops the run at once (exit 2) instead of after the first variants' compilation."""
  trivial = jax.jit(lambda x: x + 1).lower(np.float32(0))
  for name, options in variants.items():
    try:
      trivial.compile(compiler_options=options)
    except Exception as e:  # pylint: disable=broad-except  # XLA raises its own runtime error types.
      raise app.UsageError(f'--option {name}: XLA refused it: {str(e).splitlines()[0]}', exitcode=2) from None


def main(argv):
  del argv
  config = _CONFIG.value
  if _PEER.value:
    sweep.override(config, {**peer_torch.VITCLIP_OVERRIDES, 'batch_size': 256}, '--peer')
  variants = {DEFAULT: None, **{text: dict(map(parse_option, text.split(';'))) for text in _OPTIONS.value}}
  check_options(variants)
  run = step_bench.build_benchmark_run(config)
  step = run_lib.compile_train_step(run)
  batch = step_bench.random_batch(run.config, run.mesh)
  lowered = step.lower(run_lib.create_state(run), batch)
  compiled, states = {}, {}
  for name, options in variants.items():
    t0 = time.perf_counter()
    compiled[name] = lowered.compile(compiler_options=options)
    state = run_lib.create_state(run)  # The step donates its state: one per variant.
    for _ in range(_WARMUP.value):
      state, _ = compiled[name](state, batch)
    states[name] = jax.block_until_ready(state)
    print(f'{name}: compiled and warmed up in {time.perf_counter() - t0:.1f} s', flush=True)

  rates = {name: [] for name in variants}
  losses = {}
  for r in range(_ROUNDS.value):
    for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
      state = states[name]
      t0 = time.perf_counter()
      for _ in range(_STEPS.value):
        state, metrics = compiled[name](state, batch)
      jax.block_until_ready(state)
      rates[name].append(config.batch_size * _STEPS.value / (time.perf_counter() - t0))
      states[name], losses[name] = state, float(metrics['loss'])
    print(f'round {r + 1}: ' + ', '.join(f'{n} {rates[n][-1]:.1f}' for n in variants), flush=True)

  result = {'config': config.to_dict(), 'peer_architecture': _PEER.value, 'rounds': _ROUNDS.value,
            'steps_per_round': _STEPS.value, 'variants': {}}
  for name in variants:
    ratios = [a / b for a, b in zip(rates[name], rates[DEFAULT])]
    result['variants'][name] = {
        'options': variants[name] or {}, 'samples_per_s': rates[name],
        'median_samples_per_s': float(np.median(rates[name])),
        'median_ratio_to_default': float(np.median(ratios)), 'final_loss': losses[name]}
    print(f'{name:>60}: median {np.median(rates[name]):6.1f} samples/s, median ratio to default '
          f'{np.median(ratios):.3f}, final loss {losses[name]:.6f}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=1, default=str)


if __name__ == '__main__':
  app.run(main)
