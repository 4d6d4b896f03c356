"""A study's results (vitclip/sweep.py): each cell's record read from its directory, and the outputs written
from them: results.json, results.csv, report.md, PNG plots.

report.md has a table per metric (rows: method, columns: batch; the mean over seeds, with [min, max] where there
are several), the same for samples/s, step time and per-device peak memory, then one row per cell. The plots put
each against the batch on a log-2 axis, a line per method.
"""

import csv
import json
import os
import statistics

CELL_FILE = 'sweep_cell.json'  # In a cell's workdir: its status after the sweep last ran it.
MEMORY_FILE = 'memory.json'  # In a cell's workdir: the train step's per-device memory (vitclip.memory).
OUTPUT_FILE = 'train.out'  # In a cell's workdir: train.py's terminal output.
CSV_FIELDS = ('name', 'method', 'batch', 'seed', 'steps', 'examples_seen', 'lr', 'warmup_steps', 'status',
              'samples_per_s', 'step_time_s', 'peak_memory_bytes')
# (title, record key, format): the measurements besides the evaluation, in the order report.md shows them.
SPEED = (('samples/s', 'samples_per_s', '{:,.0f}'), ('step time (ms)', 'step_time_ms', '{:.1f}'))
PLOT_COLUMNS = 3


# ------------------------------------------------------------------------------------------------ reading


def throughput(path: str) -> tuple[float | None, int]:
  """Median samples/s over the logged intervals of metrics.jsonl after the first (which includes compiling);
  the only one when there is one. Returns (samples/s or None, intervals used)."""
  rates = [row['samples_per_s'] for row in read_jsonl(path) if 'samples_per_s' in row]
  rates = rates[1:] if len(rates) > 1 else rates
  return (statistics.median(rates) if rates else None), len(rates)


def read_cell(cell, directory: str, *, memory_only: bool, finished: bool, config_diff: dict, command: str) -> dict:
  """The record of a cell (a vitclip.sweep.Cell) from its directory: axes, steps, lr, status (done / failed /
  stopped / not run; memory-only: compiled / failed), metrics, samples/s, step time, memory."""
  record = {'name': cell.name, 'method': cell.method, 'batch': cell.batch, 'seed': cell.seed,
            'steps': cell.steps, 'examples_seen': cell.steps * cell.batch, 'lr': cell.lr,
            'warmup_steps': cell.overrides['optim.warmup_steps'], 'base': cell.base, 'workdir': directory}
  memory = read_json(os.path.join(directory, MEMORY_FILE)) or {}
  record['memory'] = {k: v for k, v in memory.items() if k not in ('digest', 'requested_devices')} or None
  if memory_only:
    record['status'] = 'failed' if 'error' in memory or not memory else 'compiled'
    record['error'] = memory.get('error', '' if memory else 'not measured')
  else:
    state = read_json(os.path.join(directory, CELL_FILE)) or {}
    record['status'] = 'done' if finished else state.get('status', 'not run')
    record['error'] = '' if finished else state.get('error', '')
    record['metrics'] = read_json(os.path.join(directory, 'eval_results.json')) or {}
    record['samples_per_s'], record['timed_intervals'] = throughput(os.path.join(directory, 'metrics.jsonl'))
    record['step_time_s'] = cell.batch / record['samples_per_s'] if record['samples_per_s'] else None
  record['peak_memory_bytes'] = memory.get('peak')
  return dict(record, config_diff=config_diff, command=command)


def read_json(path: str):
  """The file's JSON value, None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_jsonl(path: str) -> list[dict]:
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError:
    return []
  rows = []
  for line in lines:
    try:
      rows.append(json.loads(line))
    except ValueError:  # A line cut short by a kill.
      pass
  return rows


# ------------------------------------------------------------------------------------------------ writing


def write(records: list[dict], sc, where: str, workdir: str) -> str:
  """Writes every output from the cell records (vitclip.sweep.collect); returns a line naming them."""
  for r in records:
    r['step_time_ms'] = r['step_time_s'] * 1e3 if r.get('step_time_s') else None
  fixed = held_fixed(sc)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'sweep': where, 'held_fixed': fixed,
               'cells': [{k: v for k, v in r.items() if k != 'step_time_ms'} for r in records]},
              f, indent=1, default=str)
  metric_keys = sorted({k for r in records for k in r.get('metrics', {})})
  write_csv(records, metric_keys, os.path.join(workdir, 'results.csv'))
  plots = write_plots(records, metric_keys, workdir)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(markdown(records, metric_keys, where, fixed, plots) + '\n')
  return f'wrote {", ".join(os.path.join(workdir, n) for n in ["report.md", "results.json", "results.csv", *plots])}'


def held_fixed(sc) -> dict:
  """What every cell shares, as the report states it."""
  out = {'base': sc.base, 'base_for': dict(sc.base_for), 'overrides': dict(sc.overrides.items()),
         'methods': {m: dict(sc.methods[m].items()) for m in sc.axes.method}}
  if sc.memory_only:
    return dict(out, memory_devices=sc.memory_devices)
  return dict(out, examples_seen=sc.examples_seen, lr_rule=sc.lr_rule, lr_reference_batch=sc.lr_reference_batch,
              warmup_fraction=sc.warmup_fraction, logs_per_cell=sc.logs_per_cell, ckpts_per_cell=sc.ckpts_per_cell,
              memory_devices=sc.memory_devices)


def write_csv(records: list[dict], metric_keys: list[str], path: str):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(CSV_FIELDS + tuple(metric_keys) + ('error',))
    for r in records:
      metrics = r.get('metrics', {})
      writer.writerow([_csv(r.get(k)) for k in CSV_FIELDS] + [_csv(metrics.get(k)) for k in metric_keys]
                      + [r.get('error', '')])


def _csv(value):
  return '' if value is None else value


# ------------------------------------------------------------------------------------------------ tables


def by_method_and_batch(records: list[dict], value) -> dict[str, dict[int, list[float]]]:
  """{method: {batch: [value of each seed's cell]}}; `value(record)` is None where there is nothing."""
  out = {}
  for r in records:
    v = value(r)
    row = out.setdefault(r['method'], {})
    if v is not None:
      row.setdefault(r['batch'], []).append(v)
  return out


def grid_table(records: list[dict], value, fmt: str) -> str:
  """Markdown: a row per method, a column per batch; mean over seeds, [min, max] where there are several."""
  grid = by_method_and_batch(records, value)
  batches = sorted({r['batch'] for r in records})
  lines = ['| method | ' + ' | '.join(f'{b:,}' for b in batches) + ' |', '|---' * (len(batches) + 1) + '|']
  for method, row in grid.items():
    lines.append(f'| {method} | ' + ' | '.join(_cell(row.get(b), fmt) for b in batches) + ' |')
  return '\n'.join(lines)


def _cell(values: list[float] | None, fmt: str) -> str:
  if not values:
    return '–'
  mean = fmt.format(statistics.fmean(values))
  return mean if len(values) == 1 else f'{mean} [{fmt.format(min(values))}, {fmt.format(max(values))}]'


def _done(key: str):
  """Value of a finished cell's `key` (not of failed or unfinished cells)."""
  return lambda r: r.get(key) if r['status'] == 'done' else None


def _metric(key: str):
  return lambda r: r.get('metrics', {}).get(key) if r['status'] == 'done' else None


def memory_unit(records: list[dict]) -> tuple[str, float]:
  peaks = [r['peak_memory_bytes'] for r in records if r.get('peak_memory_bytes')]
  return ('GiB', 2.0**30) if peaks and max(peaks) >= 2**30 else ('MiB', 2.0**20)


def markdown(records: list[dict], metric_keys: list[str], where: str, fixed: dict, plots: list[str]) -> str:
  counts = {}
  for r in records:
    counts[r['status']] = counts.get(r['status'], 0) + 1
  seeds = sorted({r['seed'] for r in records})
  out = [f'# Sweep {where}', '',
         f'{len(records)} cells ({", ".join(f"{n} {s}" for s, n in counts.items())}); seeds {seeds}. Tables: the '
         'mean over seeds, [min, max] where there are several; – where no cell finished.', '',
         '## Held fixed', ''] + [f'- `{k}`: {json.dumps(v)}' for k, v in fixed.items()]
  unit, scale = memory_unit(records)
  devices = sorted({r['memory']['devices'] for r in records if r.get('memory') and 'devices' in r['memory']})
  sections = [(key, _metric(key), '{:.4f}') for key in metric_keys]
  sections += [(title, _done(key), fmt) for title, key, fmt in SPEED if any(r.get(key) for r in records)]
  sections.append((f'peak memory per device ({unit}; {", ".join(map(str, devices)) or "?"} devices)',
                   lambda r: r['peak_memory_bytes'] / scale if r.get('peak_memory_bytes') else None, '{:.2f}'))
  for title, value, fmt in sections:
    out += ['', f'## {title}', '', grid_table(records, value, fmt)]
  out += ['', '## Cells', '', cell_table(records, metric_keys, unit, scale)]
  failed = [r for r in records if r.get('error')]
  if failed:
    out += ['', '## Problems', ''] + [f'- {r["name"]} ({r["status"]}): {r["error"]}' for r in failed]
  if plots:
    out += [''] + [f'![{os.path.splitext(p)[0]}]({p})' for p in plots]
  return '\n'.join(out)


def cell_table(records: list[dict], metric_keys: list[str], unit: str, scale: float) -> str:
  head = ['cell', 'status', 'steps', 'lr', 'samples/s', 'step ms', f'peak {unit}'] + metric_keys
  lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
  for r in records:
    row = [r['name'], r['status'], str(r['steps']), f'{r["lr"]:.3g}', _fmt(r.get('samples_per_s'), '{:,.0f}'),
           _fmt(r.get('step_time_ms'), '{:.1f}'),
           _fmt(r['peak_memory_bytes'] / scale if r.get('peak_memory_bytes') else None, '{:.2f}')]
    row += [_fmt(r.get('metrics', {}).get(k), '{:.4f}') for k in metric_keys]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def _fmt(value, fmt: str) -> str:
  return '–' if value is None else fmt.format(value)


# ------------------------------------------------------------------------------------------------ plots


def write_plots(records: list[dict], metric_keys: list[str], workdir: str) -> list[str]:
  """metrics.png (a panel per evaluation metric), throughput.png, memory.png: file names of those written."""
  unit, scale = memory_unit(records)
  plots = {
      'metrics.png': [(k, _metric(k)) for k in metric_keys],
      'throughput.png': [('samples/s', _done('samples_per_s'))],
      'memory.png': [(f'peak memory per device ({unit})',
                      lambda r: r['peak_memory_bytes'] / scale if r.get('peak_memory_bytes') else None)],
  }
  written = []
  for name, panels in plots.items():
    panels = [(title, by_method_and_batch(records, value)) for title, value in panels]
    panels = [(title, grid) for title, grid in panels if any(grid.values())]
    if panels:
      plot_panels(panels, os.path.join(workdir, name))
      written.append(name)
  return written


def plot_panels(panels: list[tuple[str, dict]], path: str):
  """One panel per (title, {method: {batch: values}}): mean vs batch (log-2 axis), min–max bars over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  cols = min(PLOT_COLUMNS, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
  for ax, (title, grid) in zip(axes.flat, panels):
    batches = sorted({b for row in grid.values() for b in row})
    for method, row in grid.items():
      xs = sorted(row)
      if not xs:
        continue
      means = [statistics.fmean(row[b]) for b in xs]
      spread = [[m - min(row[b]) for b, m in zip(xs, means)], [max(row[b]) - m for b, m in zip(xs, means)]]
      ax.errorbar(xs, means, yerr=spread, marker='o', capsize=3, label=method)
    ax.set_xscale('log', base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set(title=title, xlabel='batch')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
