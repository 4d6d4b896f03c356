"""Per-device memory of the compiled train step from XLA's memory analysis: AOT compile, nothing allocated or run.

  run = run_lib.build(config, None, train=False, check_data=False, with_tokenizer=False)
  memory.train_step_memory(run)   # {'peak': bytes, 'argument', 'output', 'temp', 'alias', ..., 'compile_s'}

Simulated CPU devices stand in for accelerators: the buffer assignment, and so the per-device argument / output /
temp bytes, depend on the sharded program, not on the backend's speed. The device count is fixed when jax starts
its CPU backend, so `set_device_count` must run before anything touches a device: measure in a fresh process
(`benchmarks/memory.py`, `python -m vitclip.sweep --memory_only`).
"""

import os
import re
import time

import jax
import jax.numpy as jnp

FIELDS = ('argument', 'output', 'temp', 'alias', 'peak')


def set_device_count(n: int):
  """`n` simulated CPU devices; must run before jax starts a backend (XLA reads the flag once, at start)."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'xla_force_host_platform_device_count' not in f]
  os.environ['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={n}'])
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  # jax read JAX_PLATFORMS when it was imported; on a host with an accelerator the simulated devices are CPUs.
  jax.config.update('jax_platforms', 'cpu')


def memory_stats(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled executable: {'argument', 'output', 'temp', 'alias', 'peak', ...} (ints).

  Also 'generated_code' and 'xla_peak'. peak = argument + output + temp − alias + generated code: every buffer
  the executable owns or receives, an upper bound on what it holds at once.
  """
  m = compiled.memory_analysis()
  stats = {
      'argument': int(m.argument_size_in_bytes),
      'output': int(m.output_size_in_bytes),
      'temp': int(m.temp_size_in_bytes),
      'alias': int(m.alias_size_in_bytes),
  }
  stats['generated_code'] = int(getattr(m, 'generated_code_size_in_bytes', 0) or 0)
  stats['peak'] = (stats['argument'] + stats['output'] + stats['temp'] - stats['alias']
                   + stats['generated_code'])
  # XLA's own heap-simulation peak where the backend reports one; informational (on CPU it can be below
  # argument + temp, as it does not count every live buffer).
  stats['xla_peak'] = int(getattr(m, 'peak_memory_in_bytes', 0) or 0)
  return stats


def abstract_batch(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The train step's batch as shapes carrying their shardings: image uint8 [B, S, S, 3] (pixels, as
  vitclip/data/pipeline.py makes them; the step normalises them), tokens int32 [B, L] (labels int32 [B] for
  classifier fine-tuning); B = config.batch_size over the batch axes."""
  from vitclip import sharding  # pylint: disable=g-import-not-at-top  (see train_step_memory)
  batch_sh = sharding.batch_sharding(mesh)
  b, size, length = config.batch_size, config.model.image.image_size, config.model.text.max_len
  batch = {'image': jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=batch_sh)}
  if config.get('classifier', {}).get('enabled', False):
    batch['label'] = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sh)
  else:
    batch['tokens'] = jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=batch_sh)
  return batch


def train_step_memory(run) -> dict:
  """AOT-compiles `vitclip.run.compile_train_step(run)` (run: a `vitclip.run.Run`) on the abstract state and an
  abstract batch; returns `memory_stats` of it plus 'devices' (of the mesh) and 'compile_s'."""
  # Imported here: processes that measure a loss alone (benchmarks/memory.py --sweep starts dozens) would pay
  # ~1.5 s each for the run stack.
  from vitclip import run as run_lib  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  compiled = run_lib.compile_train_step(run).lower(run.abstract_state, abstract_batch(run.config, run.mesh))
  compiled = compiled.compile()
  return dict(memory_stats(compiled), devices=run.mesh.size, compile_s=round(time.perf_counter() - start, 2))



# ------------------------------------------------------------------------------------------------ where the peak goes


def dump_flags(directory: str, module: str = 'train_step') -> str:
  """XLA_FLAGS that make the compiler write its buffer assignment and live ranges of `module` to `directory`
  (`peak_breakdown` reads them); set before jax starts a backend, as `set_device_count`."""
  return f'--xla_dump_to={directory} --xla_dump_hlo_module_re=.*{module}.*'


def peak_breakdown(directory: str, module: str = 'train_step', min_fraction: float = 0.005) -> dict:
  """XLA's own account of a compiled program's peak, from the dump `dump_flags` asked for.

  Returns {'peak_bytes': int, 'at_peak': [{'buffer', 'bytes', 'shape'}, ...] (every buffer live at the peak,
  largest first, from the live-range dump with shapes from the buffer assignment), 'by_scope': [{'scope',
  'bytes'}, ...] (the first two levels of XLA's stack-trace breakdown of the peak: which jax scope, e.g.
  transpose(jvp(TwoTower))/TwoTower.encode_image/.../while, holds how much)}, entries under `min_fraction`
  of the peak left out.
  """
  def read(suffix):
    names = [n for n in os.listdir(directory) if module in n and n.endswith(suffix)]
    if not names:
      raise FileNotFoundError(f'no *{module}*{suffix} in {directory}: was the program compiled with dump_flags?')
    with open(os.path.join(directory, sorted(names)[-1])) as f:
      return f.read()

  live = read('cpu_after_optimizations-live-range.txt') if any(
      n.endswith('cpu_after_optimizations-live-range.txt') for n in os.listdir(directory)) else read(
          '-live-range.txt')
  shapes = dict(re.findall(r'from instruction: %(\S+) = (\S+?)(?:\{[\d,]*\})? ', read('-values.txt')))
  peak_section = live[live.index('(peak):'):]
  at_peak = [{'buffer': name, 'bytes': int(size), 'shape': shapes.get(name, '')}
             for name, size in re.findall(r'^\s+(\S+?)\{[^}]*\}: (\d+) bytes', peak_section, re.M)]
  trace = live[live.index('Stack trace breakdown for peak usage:'):]
  peak = int(re.search(r'peak usage: ([\d ]+) bytes', trace).group(1).replace(' ', ''))
  by_scope = []
  for line in trace.splitlines()[1:]:
    m = re.match(r'^(\s*)(?:[│ ]\s*)*[├└]── (.+?) \([\d.]+%, total: ([\d ]+) bytes', line)
    if not m:
      continue
    depth = (len(line) - len(line.lstrip(' │'))) // 4
    if depth <= 2:
      by_scope.append({'scope': m.group(2), 'depth': depth, 'bytes': int(m.group(3).replace(' ', ''))})
  keep = lambda rows: sorted((r for r in rows if r['bytes'] >= min_fraction * peak), key=lambda r: -r['bytes'])
  return {'peak_bytes': peak, 'at_peak': keep(at_peak), 'by_scope': [r for r in by_scope
                                                                      if r['bytes'] >= min_fraction * peak]}
