"""Per-device memory of compiled programs from XLA's memory analysis (AOT compile, nothing executed).

Simulated CPU devices stand in for accelerators: the buffer assignment, and so the per-device argument /
output / temp bytes, depend on the sharded program, not on the backend's speed.

  # one configuration (loss + gradient w.r.t. zimg, ztxt, t, b)
  python benchmarks/memory.py --loss_only --batch 32768 --dim 768 --devices 8 --kind sigmoid --impl ring
  # batch × kind × impl × devices grid, one fresh process per configuration → sweep.json, sweep.md, sweep.png
  python benchmarks/memory.py --sweep --out benchmarks/results/
  # acceptance: ring temp flat in the device count at a fixed per-device batch; gather grows
  python benchmarks/memory.py --check
  # the full train step (forward, backward, optimizer update) of a model config
  python benchmarks/memory.py --model B/16 --text_variant B --batch 32768 --devices 32 --kind sigmoid \
      --impl ring --dtype bfloat16 --remat full
  # ... with XLA's account of where the peak goes (--breakdown) and any config field (--set)
  python benchmarks/memory.py --model B/16 --text_variant B --batch 32768 --devices 32 --kind sigmoid \
      --impl ring --dtype bfloat16 --remat full --scan --set model.attention_chunk=64 --set model.mlp_chunk=64 \
      --breakdown
  python benchmarks/memory.py --model B/16 --batch 32768 --devices 1 --kind sigmoid --impl dense \
      --dtype bfloat16 --remat full --grad_cache_microbatch 512

The device count is fixed when jax initializes, so XLA_FLAGS is set from --devices before jax starts a backend,
and the sweep runs every configuration in its own subprocess.
"""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # Run as a script, only benchmarks/ is on the path.
  sys.path.insert(0, REPO_ROOT)
# Importing jax starts no backend, so set_device_count still takes effect after this import.
from vitclip import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from vitclip.memory import (  # pylint: disable=wrong-import-position
    FIELDS, dump_flags, memory_stats, peak_breakdown, set_device_count, train_step_memory)

SWEEP_BATCHES = (1024, 4096, 16384, 32768)
SWEEP_DEVICES = (8, 32, 64)
# Acceptance: ring temp at 64 devices may exceed that at 8 devices (same per-device batch) by at most this.
RING_FLAT_TOLERANCE = 1.1
# (devices, global batch) pairs with the same per-device batch b = 512 used by --check.
CHECK_POINTS = ((8, 4096), (32, 16384), (64, 32768))
MIB = 2.0**20


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  mode = p.add_mutually_exclusive_group(required=True)
  mode.add_argument('--loss_only', action='store_true', help='measure the loss + gradient program')
  mode.add_argument('--model', default=None, help='measure the full train step with this image variant, e.g. B/16')
  mode.add_argument('--sweep', action='store_true', help='loss-only grid, one subprocess per configuration')
  mode.add_argument('--check', action='store_true', help='ring-flat / gather-grows acceptance check')
  p.add_argument('--batch', type=int, default=32768, help='global batch B')
  p.add_argument('--dim', type=int, default=768, help='embedding width D')
  p.add_argument('--devices', type=int, default=8, help='simulated CPU devices (1-D mesh "data")')
  p.add_argument('--kind', default='sigmoid', choices=list(losses.KINDS))
  p.add_argument('--impl', default='ring', choices=losses.IMPLS)
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help='embedding dtype (--loss_only) or matmul dtype (--model)')
  p.add_argument('--text_variant', default='B', help='--model: text tower variant')
  p.add_argument('--image_size', type=int, default=224, help='--model: image resolution')
  p.add_argument('--text_len', type=int, default=64, help='--model: text length in tokens')
  p.add_argument('--vocab_size', type=int, default=32000, help='--model: text vocabulary')
  p.add_argument('--embed_dim', type=int, default=768, help='--model: joint embedding width')
  p.add_argument('--remat', default='full', choices=('none', 'full', 'dots'), help='--model: remat policy')
  p.add_argument('--scan', action='store_true', help='--model: scan over layers')
  p.add_argument('--grad_cache_microbatch', type=int, default=0, help='--model: GradCache microbatch (0: off)')
  p.add_argument('--breakdown', action='store_true',
                 help="--model: also XLA's account of the peak (buffers live at it, by jax scope) in the JSON")
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='--model: any other config field, as --config.KEY=VALUE of train.py (repeatable), e.g. '
                      '--set model.attention_chunk=64')
  p.add_argument('--param_sharding', default='replicate', choices=('replicate', 'fsdp'),
                 help="--model: 'fsdp' shards params over the devices (mesh data=1 × fsdp=N)")
  p.add_argument('--json', default=None, help='write the result of --loss_only to this file')
  p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'),
                 help='output folder of --sweep / --check')
  p.add_argument('--timeout', type=int, default=600, help='seconds per configuration subprocess')
  return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ measuring


def measure_loss(batch, dim, devices, kind, impl, dtype='float32'):
  """AOT-compiles value_and_grad of the loss w.r.t. (zimg, ztxt, t, b) on a 1-D mesh; returns a result dict."""
  import jax  # pylint: disable=g-import-not-at-top  (after set_device_count)
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  if jax.device_count() < devices:
    raise ValueError(f'{jax.device_count()} devices available, --devices={devices}; run this script in a '
                     'fresh process (it sets XLA_FLAGS before jax starts a backend).')
  mesh = Mesh(np.array(jax.devices()[:devices]), ('data',))
  rows, scalar = NamedSharding(mesh, P('data', None)), NamedSharding(mesh, P())

  def loss(zimg, ztxt, t, b):
    return losses.contrastive_loss(zimg, ztxt, t, b, kind=kind, impl=impl, mesh=mesh)

  # Gradients leave sharded like their inputs (as in a train step); unconstrained, GSPMD may replicate them.
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), in_shardings=(rows, rows, scalar, scalar),
                 out_shardings=(scalar, (rows, rows, scalar, scalar)))
  emb = jax.ShapeDtypeStruct((batch, dim), jnp.dtype(dtype))
  one = jax.ShapeDtypeStruct((), jnp.float32)
  start = time.perf_counter()
  compiled = step.lower(emb, emb, one, one).compile()
  seconds = time.perf_counter() - start
  config = dict(program='loss', batch=batch, dim=dim, devices=devices, per_device_batch=batch // devices,
                kind=kind, impl=impl, dtype=dtype)
  return dict(config, **memory_stats(compiled), compile_s=round(seconds, 2), jax=jax.__version__)


def step_config(args):
  """The train-step config measured by --model: base config + the command-line model/batch/loss."""
  from configs import base  # pylint: disable=g-import-not-at-top
  from vitclip import sweep
  c = base.get_config()
  c.batch_size = args.batch
  c.loss.kind, c.loss.impl = args.kind, args.impl
  c.model.embed_dim = args.embed_dim
  c.model.dtype = args.dtype
  c.model.remat_policy = args.remat
  c.model.scan = args.scan
  c.model.image.variant, c.model.image.image_size = args.model, args.image_size
  c.model.text.variant, c.model.text.max_len, c.model.text.vocab_size = args.text_variant, args.text_len, \
      args.vocab_size
  c.grad_cache.microbatch = args.grad_cache_microbatch
  c.sharding.params = args.param_sharding
  c.mesh = [('fsdp', -1)] if args.param_sharding == 'fsdp' else [('data', -1)]
  return sweep.override(c, parse_overrides(args.set), '--set')


def parse_overrides(items: list[str]) -> dict:
  """['model.attention_chunk=64', ...] -> {'model.attention_chunk': 64, ...}: Python literals, else strings."""
  overrides = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'--set {item!r}: use KEY=VALUE, e.g. --set model.attention_chunk=64')
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return overrides


def measure_step(args):
  """AOT-compiles the full train step (abstract state and batch; nothing is allocated or run)."""
  import jax  # pylint: disable=g-import-not-at-top  (after set_device_count)

  from vitclip import run as run_lib
  from vitclip.models import count_params

  run = run_lib.build(step_config(args), None, devices=jax.devices()[:args.devices], train=False,
                      check_data=False, with_tokenizer=False)
  stats = train_step_memory(run)  # Also 'devices' and 'compile_s'.
  params = run.abstract_state.params
  result = dict(program='train_step', model=args.model, text_variant=args.text_variant, batch=args.batch,
                devices=args.devices, per_device_batch=args.batch // args.devices, kind=args.kind, impl=args.impl,
                dtype=args.dtype, remat=args.remat, scan=args.scan, image_size=args.image_size,
                text_len=args.text_len, grad_cache_microbatch=args.grad_cache_microbatch,
                param_sharding=args.param_sharding, overrides=parse_overrides(args.set),
                image_params=count_params(params['img']),
                text_params=count_params(params['txt']))
  return dict(result, **stats, jax=jax.__version__)


# ------------------------------------------------------------------------------------------------ sweep


def run_in_subprocess(batch, dim, devices, kind, impl, dtype, timeout):
  """Runs `--loss_only` for one configuration in a fresh process; returns its result dict (or an error)."""
  cmd = [sys.executable, os.path.abspath(__file__), '--loss_only', f'--batch={batch}', f'--dim={dim}',
         f'--devices={devices}', f'--kind={kind}', f'--impl={impl}', f'--dtype={dtype}', '--json=-']
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
  config = dict(program='loss', batch=batch, dim=dim, devices=devices, per_device_batch=batch // devices,
                kind=kind, impl=impl, dtype=dtype)
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
  except subprocess.TimeoutExpired:
    return dict(config, error=f'compile exceeded {timeout}s')
  if proc.returncode:
    return dict(config, error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run_sweep(args):
  configs = [(b, k, i, n) for n in SWEEP_DEVICES for b in SWEEP_BATCHES for k in losses.KINDS
             for i in losses.IMPLS]
  results = []
  for batch, kind, impl, devices in configs:
    r = run_in_subprocess(batch, args.dim, devices, kind, impl, args.dtype, args.timeout)
    results.append(r)
    print(format_row(r), flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'sweep.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.out, 'sweep.md'), 'w') as f:
    f.write(markdown_table(results) + '\n\n' + '\n'.join(check_lines(results)[0]) + '\n')
  plot_sweep(results, os.path.join(args.out, 'sweep.png'))
  lines, ok = check_lines(results)
  print('\n'.join(lines))
  print(f'wrote {args.out}/sweep.json, sweep.md, sweep.png')
  return 0 if ok else 1


def plot_sweep(results, path):
  """Temp bytes vs global batch, one panel per kind, a line per (impl, devices)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, panels = plt.subplots(1, len(losses.KINDS), figsize=(12, 4.5), sharey=True)
  styles = {'dense': 'o-', 'gather': 's--', 'ring': '^-'}
  for ax, kind in zip(panels, losses.KINDS):
    for impl in losses.IMPLS:
      for devices in SWEEP_DEVICES:
        pts = sorted((r['batch'], r['temp'] / MIB) for r in results
                     if r['kind'] == kind and r['impl'] == impl and r['devices'] == devices and 'temp' in r)
        if pts:
          ax.plot(*zip(*pts), styles[impl], label=f'{impl} ×{devices}', alpha=0.8)
    ax.set(xscale='log', yscale='log', title=f'{kind}: loss + grad, per-device temp', xlabel='global batch B')
    ax.set_xticks(SWEEP_BATCHES, [str(b) for b in SWEEP_BATCHES])
    ax.grid(True, which='both', alpha=0.3)
  panels[0].set_ylabel('temp MiB per device')
  panels[-1].legend(fontsize=7, ncol=3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------ check


def check_lines(results):
  """Acceptance at per-device batch 512: ring temp(64)/temp(8) ≤ 1.1 and gather temp(64) > temp(8)."""
  lines, ok = ['check (per-device batch 512: B=4096 on 8, B=32768 on 64 devices):'], True
  for kind in losses.KINDS:
    for impl in ('ring', 'gather'):
      temps = {n: r['temp'] for r in results for n, b in CHECK_POINTS
               if (r['devices'], r['batch'], r['kind'], r['impl']) == (n, b, kind, impl) and 'temp' in r}
      if 8 not in temps or 64 not in temps:
        lines.append(f'  {kind:7s} {impl:6s} MISSING')
        ok = False
        continue
      ratio = temps[64] / max(temps[8], 1)
      passed = ratio <= RING_FLAT_TOLERANCE if impl == 'ring' else temps[64] > temps[8]
      ok &= passed
      want = f'<= {RING_FLAT_TOLERANCE}' if impl == 'ring' else '> 1 (grows)'
      lines.append(f'  {kind:7s} {impl:6s} temp 8 dev {temps[8] / MIB:9.2f} MiB, 64 dev {temps[64] / MIB:9.2f} '
                   f'MiB, ratio {ratio:6.2f} (want {want}) {"PASS" if passed else "FAIL"}')
  return lines, ok


def run_check(args):
  results = []
  for kind in losses.KINDS:
    for impl in ('ring', 'gather'):
      for devices, batch in CHECK_POINTS:
        r = run_in_subprocess(batch, args.dim, devices, kind, impl, args.dtype, args.timeout)
        results.append(r)
        print(format_row(r), flush=True)
  lines, ok = check_lines(results)
  print('\n'.join(lines))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'check.json'), 'w') as f:
    json.dump({'results': results, 'pass': ok}, f, indent=1)
  return 0 if ok else 1


# ------------------------------------------------------------------------------------------------ output


HEADER = ('program', 'kind', 'impl', 'devices', 'batch', 'per_device_batch', *FIELDS)


def format_breakdown(b, rows: int = 12) -> str:
  """The largest buffers live at the peak and the scopes holding it, as text."""
  lines = [f"XLA's peak: {b['peak_bytes'] / 2**30:.2f} GiB; buffers live at it:"]
  lines += [f"  {r['bytes'] / 2**30:6.2f} GiB  {r['shape']:28s} {r['buffer']}" for r in b['at_peak'][:rows]]
  lines.append('by scope:')
  lines += [f"  {'  ' * (r['depth'] - 1)}{r['bytes'] / 2**30:6.2f} GiB  {r['scope'][-110:]}"
            for r in b['by_scope'][:rows]]
  return '\n'.join(lines)


def format_row(r):
  if r.get('program') == 'train_step':
    mib = '  '.join(f'{f}={r[f] / 2**30:7.2f}' for f in FIELDS)
    return (f"train step {r['model']} + text {r['text_variant']}  {r['kind']}/{r['impl']} dev={r['devices']} "
            f"B={r['batch']} {r['dtype']} remat={r['remat']} grad_cache={r['grad_cache_microbatch']} "
            f"{' '.join(f'{k}={v}' for k, v in r.get('overrides', {}).items())}  {mib} GiB "
            f"({r['compile_s']:.1f}s compile)")
  if 'error' in r:
    return f"{r['kind']:7s} {r['impl']:6s} dev={r['devices']:3d} B={r['batch']:6d}  ERROR {r['error']}"
  mib = '  '.join(f'{f}={r[f] / MIB:9.2f}' for f in FIELDS)
  return (f"{r['kind']:7s} {r['impl']:6s} dev={r['devices']:3d} B={r['batch']:6d} b={r['per_device_batch']:5d}  "
          f"{mib} MiB  ({r['compile_s']:.1f}s compile)")


def markdown_table(results):
  rows = ['| ' + ' | '.join(HEADER[1:6] + tuple(f'{f} MiB' for f in FIELDS)) + ' |',
          '|' + '---|' * (len(HEADER) - 1)]
  for r in results:
    cells = [str(r[k]) for k in HEADER[1:6]]
    cells += [r['error']] + [''] * (len(FIELDS) - 1) if 'error' in r else [f'{r[f] / MIB:.2f}' for f in FIELDS]
    rows.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows)


def main(argv=None):
  args = parse_args(argv)
  if args.sweep:
    return run_sweep(args)
  if args.check:
    return run_check(args)
  set_device_count(args.devices)
  if args.model:
    dump = tempfile.mkdtemp(prefix='vitclip_memory_dump_') if args.breakdown else None
    if dump:  # Before jax starts its backend, as the device count.
      os.environ['XLA_FLAGS'] += ' ' + dump_flags(dump)
    result = measure_step(args)
    if dump:
      result['breakdown'] = peak_breakdown(dump)
      shutil.rmtree(dump, ignore_errors=True)
      print(format_breakdown(result['breakdown']))
    print(format_row(result))
    print(json.dumps(result))
    if args.json:
      with open(args.json, 'w') as f:
        json.dump(result, f, indent=1)
    return 0
  result = measure_loss(args.batch, args.dim, args.devices, args.kind, args.impl, args.dtype)
  if args.json == '-':
    print(json.dumps(result))
    return 0
  print(markdown_table([result]))
  print(json.dumps(result))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
