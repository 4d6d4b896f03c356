"""Evaluators by name. Each is `fn(ctx: EvalContext, cfg) -> {'<evaluator>/<dataset>/<metric>': float}`."""

from vitclip.evaluators import dense, retrieval, zeroshot
from vitclip.evaluators.common import EvalContext

EVALUATORS = {
    'zeroshot': zeroshot.evaluate,
    'retrieval': retrieval.evaluate,
    'dense': dense.evaluate,
}


def run_all(ctx: EvalContext, names) -> dict[str, float]:
  """Runs the evaluators `names` (each configured by `ctx.config.evals.<name>`)."""
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f'config.evals.names has unknown evaluators {unknown}; available: {sorted(EVALUATORS)}.')
  results = {}
  for name in names:
    results.update(EVALUATORS[name](ctx, ctx.config.evals[name]))
  return results
