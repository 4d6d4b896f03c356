"""The table of data sets that vitclip generates locally instead of reading a prepared one.

A generated data set is named by its bare name in a config (`config.data.name='shapes'`); its settings live in
`config.data.<settings_field>`, and the name resolves to the TFDS config those settings describe
('shapes' -> 'shapes/s48_n50000_v2000_t2000_seed0'), so training and every evaluator read exactly the data the
config describes, and changing a setting builds a new data set next to the old one.

Adding a generated data set: write its builder module (as `shapes.py`: `full_name(**settings)` and
`prepare(data_dir, **settings)`), add one `Generated` record here and a settings section to configs/base.py.
"""

import dataclasses
from typing import Callable

from vitclip.data import shapes, sources


@dataclasses.dataclass(frozen=True)
class Generated:
  full_name: Callable[..., str]  # **settings -> 'name/config'
  prepare: Callable[..., str]  # (data_dir, **settings) -> builder dir; builds on first use
  settings_field: str  # config.data.<settings_field> holds the settings


GENERATED = {
    'shapes': Generated(shapes.full_name, shapes.prepare, 'shapes'),
}


def _record(name: str) -> Generated | None:
  dataset, config, _ = sources.parse_name(name)
  return GENERATED.get(dataset) if config is None else None


def is_generated(name: str) -> bool:
  """True for a bare generated name ('shapes'); a name with an explicit config is read as it is."""
  return _record(name) is not None


def resolve(name: str, data_config) -> str:
  """The full name to read for `name` under the data settings `config.data` (other names pass through)."""
  record = _record(name)
  if record is None:
    return name
  version = sources.parse_name(name)[2]
  full = record.full_name(**data_config[record.settings_field].to_dict())
  return f'{full}:{version}' if version else full


def load_source(name: str, split: str, data_config, data_dir: str):
  """`sources.load_source` of `resolve(name, data_config)`; a generated data set that is not built yet says
  how it gets built."""
  try:
    return sources.load_source(resolve(name, data_config), split, data_dir)
  except FileNotFoundError as e:
    if not is_generated(name):
      raise
    raise FileNotFoundError(f'{e} It is built automatically by train.py / eval.py (config.data.name={name!r} or '
                            f'an evaluation naming it), or by vitclip.data.generated.prepare({name!r}, '
                            'config.data, data_dir).') from None


def prepare(name: str, data_config, data_dir: str) -> str:
  """Builds the generated data set `name` with the settings of `config.data` unless it exists; returns the
  resolved name. Other names are returned unchanged (they must already be prepared)."""
  record = _record(name)
  if record is not None:
    record.prepare(data_dir, **data_config[record.settings_field].to_dict())
  return resolve(name, data_config)
