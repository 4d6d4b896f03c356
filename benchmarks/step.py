r"""Train-step throughput: compile once, time N steps after warm-up; samples/s, model FLOPs and MFU.

  python benchmarks/step.py --config configs/shapes.py [--config.key=value ...] [--steps 20] [--json OUT]

Inputs are random arrays of the configured shapes already on device, so the number measures the step alone
(no input pipeline, no data set needed). Model FLOPs are the matrix products and convolutions of the step traced
without rematerialisation (vitclip/flops.py); MFU is reported when the device's peak is known (--peak_tflops
overrides). XLA's cost analysis of the compiled step is printed beside it for reference: it counts recomputed
activations, and on GPU it leaves out the matmuls handed to cuBLAS.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitclip import host_malloc  # noqa: E402

if __name__ == '__main__':  # First: the re-exec restarts the interpreter, so nothing heavy is imported before it.
  host_malloc.reexec_if_needed()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vitclip import flops, run as run_lib, sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=False)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps.', lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.', lower_bound=0)
_JSON = flags.DEFINE_string('json', '', 'Write the results here as JSON.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'Per-device peak (dense bf16) TFLOP/s for MFU; 0: from a table.')
flags.mark_flags_as_required(['config'])

# Dense bf16 peak per device, TFLOP/s (vendor data sheets).
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0, 'TPU v4': 275.0, 'TPU v5e': 197.0,
               'TPU v5p': 459.0, 'TPU v6': 918.0}


def device_peak_tflops(device) -> float | None:
  kind = getattr(device, 'device_kind', '')
  return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()), None)


def build_benchmark_run(config) -> run_lib.Run:
  """A Run without data set or tokenizer: vocab comes from config.model.text.vocab_size."""
  return run_lib.build(config, None, train=False, check_data=False, with_tokenizer=False)


def xla_flops(compiled) -> float:
  """FLOPs per device of the compiled step by XLA's cost analysis; 0 when XLA gives none."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def model_flops(run: run_lib.Run, state, batch) -> int:
  """Global FLOPs of one step as the model defines it: the step traced with remat off, never compiled."""
  if run.config.model.remat_policy != 'none':
    config = ml_collections.ConfigDict(run.config.to_dict())
    config.model.remat_policy = 'none'
    run = build_benchmark_run(config)
  return flops.count_matmul_flops(run_lib.compile_train_step(run),
                                  *jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch)))


def random_batch(config, mesh):
  size, length, b = config.model.image.image_size, config.model.text.max_len, config.batch_size
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (b, size, size, 3), np.uint8),  # Pixels, as the pipeline feeds them.
           'tokens': rng.integers(1, config.model.text.vocab_size, (b, length)).astype(np.int32)}
  return jax.device_put(batch, sharding.batch_sharding(mesh))


def main(argv):
  del argv
  run = build_benchmark_run(_CONFIG.value)
  cfg = run.config
  step = run_lib.compile_train_step(run)
  batch = random_batch(cfg, run.mesh)
  state = run_lib.create_state(run)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  xla_flops_per_device = xla_flops(compiled)  # Per device for SPMD programs.
  flops_per_device = model_flops(run, state, batch) / jax.device_count()
  for _ in range(_WARMUP.value):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - t0) / _STEPS.value
  device = jax.devices()[0]
  peak = _PEAK.value or device_peak_tflops(device)
  achieved = flops_per_device / seconds / 1e12
  result = {
      'device': getattr(device, 'device_kind', str(device)), 'num_devices': jax.device_count(),
      'image_variant': cfg.model.image.variant, 'text_variant': cfg.model.text.variant,
      'batch_size': cfg.batch_size, 'loss': f'{cfg.loss.kind}/{cfg.loss.impl}', 'dtype': cfg.model.dtype,
      'remat': cfg.model.remat_policy, 'grad_cache_microbatch': cfg.grad_cache.microbatch,
      'compile_s': round(compile_s, 2), 'step_s': seconds, 'samples_per_s': cfg.batch_size / seconds,
      'model_tflops_per_device_per_step': flops_per_device / 1e12, 'achieved_tflops_per_device': achieved,
      'xla_cost_analysis_tflops_per_device_per_step': xla_flops_per_device / 1e12,
      'peak_tflops_per_device': peak, 'mfu': achieved / peak if peak else None,
      'final_loss': float(metrics['loss']),
  }
  print(json.dumps(result, indent=1))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
