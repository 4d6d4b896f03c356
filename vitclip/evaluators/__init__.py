"""Evaluators by name, and the suite a run builds once from `config.evals`.

  check_config(config, data_dir)   before anything is built: every evaluation setting and data set (fast)
  datasets(config)                 the data sets the evaluators read (the trainer builds generated ones first)
  suite = Suite(config, model, tokenizer, mesh, workdir, data_dir[, init_from_params])   once per run
  suite.run(params)                -> {'<evaluator>/<dataset>/<metric>': float}, every time, without retracing

An evaluator is one module with one `common.Evaluator` subclass (configured by `config.evals.<name>`) and one
entry in `EVALUATORS`.
"""

from typing import Sequence

from absl import logging

from vitclip.errors import ConfigError
from vitclip.evaluators import classifier, common, dense, detection, linear_probe, retrieval, zeroshot

EVALUATORS = {
    'zeroshot': zeroshot.Zeroshot,
    'retrieval': retrieval.Retrieval,
    'dense': dense.Dense,
    'linear_probe': linear_probe.LinearProbe,
    'classifier': classifier.Classifier,
    'detection': detection.Detection,
}


def _check_names(field: str, names: Sequence[str]):
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ConfigError(f'{field}={tuple(names)!r} has unknown evaluators {unknown}; use some of '
                      f'{sorted(EVALUATORS)}, e.g. --config.evals.names="(\'retrieval\',)".')


def check_config(config, data_dir: str | None):
  """Validates `config.evals` before the first step, reading only dataset_info files.

  Checks the evaluator names, every named evaluator's own settings and each of its data sets: prepared (a
  generated one is built before the first step, so only its settings must resolve), with the split, the
  features it needs and class names. data_dir None: settings only.

  Raises:
    ConfigError: one line per problem, each naming the config field and the fix.
  """
  problems = []
  try:
    _check_names('config.evals.names', config.evals.names)
  except ConfigError as e:
    problems.append(str(e))
  if config.evals.batch_size <= 0:
    problems.append(f'config.evals.batch_size={config.evals.batch_size} must be positive.')
  for name in config.evals.names:
    if name in EVALUATORS:
      try:
        EVALUATORS[name].check_config(config.evals[name], config, data_dir)
      except ConfigError as e:
        problems.append(str(e))
  if problems:
    raise ConfigError('\n'.join(problems))


def datasets(config) -> list[str]:
  """The data set names the configured evaluators read (generated ones bare, as configured), each once."""
  names = []
  for name in config.evals.names:
    if name in EVALUATORS:
      names += EVALUATORS[name].datasets(config.evals[name], config)
  return list(dict.fromkeys(names))


class Suite:
  """The configured evaluators of a run, built once: data sets opened, jitted functions created.

  Every `run` reuses the same jitted encoders and dense batch functions, so evaluating new params compiles
  nothing new. Build it after the generated data sets exist (`datasets(config)`).
  """

  def __init__(self, config, model, tokenizer, mesh, workdir: str, data_dir: str, init_from_params=None):
    """init_from_params: () -> the params of config.init_from as the run loads them (vitclip.run), for
    evaluators that compare with the starting model (classifier's WiSE-FT)."""
    _check_names('config.evals.names', config.evals.names)
    self.ctx = common.Context(config, model, tokenizer, mesh, workdir, data_dir, init_from_params)
    self.evaluators = {name: EVALUATORS[name](self.ctx, config.evals[name]) for name in config.evals.names}
    for name, evaluator in EVALUATORS.items():
      if name not in self.evaluators:
        names = tuple(config.evals.names) + (name,)
        named = evaluator.datasets(config.evals[name], config) or 'datasets' not in config.evals[name]
        data = '' if named else (
            f' and --config.evals.{name}.datasets="(\'NAME\',)" ({evaluator.NEEDS})')
        logging.info('%s: not run; add it with --config.evals.names="%s"%s.', name, names, data)

  def run(self, params, names: Sequence[str] | None = None) -> dict[str, float]:
    """Evaluates `params` with the evaluators `names` (default: all configured).

    Returns:
      {'<evaluator>/<dataset>/<metric>': float}.
    """
    names = tuple(self.evaluators) if names is None else tuple(names)
    missing = [n for n in names if n not in self.evaluators]
    if missing:
      raise ConfigError(f'evaluators {missing} are not in config.evals.names={tuple(self.evaluators)!r}; add '
                        'them there to build them with the run.')
    results = {}
    for name in names:
      results.update(self.evaluators[name].run(params))
    return results
