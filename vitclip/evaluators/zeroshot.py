"""Zero-shot classification: class names x prompt templates -> ensembled text classifier -> top-1/top-5.

Protocol of CLIP: per class, embed every template, L2-normalize each, average, renormalize
(`common.build_classifier`). Data set entries are 'name' (classes in the ClassLabel feature 'label') or
'name:feature'; the prompts are `cfg.templates`, or `cfg.templates_for[<result key>]` for one entry.
"""

import dataclasses
import json
import os

import jax
import numpy as np

from vitclip import templates as templates_lib
from vitclip.data import sources
from vitclip.evaluators import common

PREFIX = 'config.evals.zeroshot'


@dataclasses.dataclass
class _Data:
  """One data set entry, opened once per run."""
  key: str  # <dataset> of the metric keys.
  feature: str
  source: object
  classnames: list[str]
  templates: tuple[str, ...]


def templates_for(cfg, key: str) -> tuple[str, ...]:
  """The prompts of result key `key`: `cfg.templates_for[key]` where given, else `cfg.templates`."""
  if key in cfg.templates_for:
    return templates_lib.get_templates(cfg.templates_for[key], f'{PREFIX}.templates_for.{key}')
  return templates_lib.get_templates(cfg.templates, f'{PREFIX}.templates')


class Zeroshot(common.Evaluator):
  """top1 / top5 / mean_per_class of each data set entry; per-class accuracies to
  `<workdir>/zeroshot_<key>_per_class.json`."""
  NAME = 'zeroshot'
  NEEDS = ('a classification data set, e.g. a class-folder import: python -m vitclip.data.folder --images DIR '
           '--classes_from_subdirs --name NAME')

  @classmethod
  def default_feature(cls, cfg) -> str:
    del cfg
    return 'label'

  @classmethod
  def check_config(cls, cfg, config, data_dir):
    common.check_split(PREFIX, cfg.split)
    templates_lib.get_templates(cfg.templates, f'{PREFIX}.templates')
    for key in cfg.templates_for:  # Prompts may wait for an entry not named yet ('shapes:color').
      templates_for(cfg, key)
    for spec in cfg.datasets:
      name, feature = common.parse_dataset(spec, 'label')
      info = common.check_dataset(f'{PREFIX}.datasets', name, f'{PREFIX}.split', cfg.split, config, data_dir)
      common.check_class_names(PREFIX, cfg, info, name, feature, f'{PREFIX}.datasets entry {spec!r}')

  def setup(self, name: str, feature: str) -> _Data:
    source, info = common.load_source(self.ctx, name, self.cfg.split)
    key = common.dataset_key(name, feature)
    return _Data(key, feature, source, common.classnames_for(self.cfg, info, name, feature),
                 templates_for(self.cfg, key))

  def evaluate(self, params, data: _Data) -> dict[str, float]:
    ctx = self.ctx
    classifier = common.build_classifier(ctx, params, data.classnames, data.templates)
    logits, labels, _ = predict(ctx, params, data.source, data.feature, classifier)
    correct = logits.argmax(1) == labels
    per_class = {n: float(correct[labels == c].mean()) for c, n in enumerate(data.classnames)
                 if np.any(labels == c)}
    _write_per_class(ctx.workdir, data.key, per_class)
    return {
        f'zeroshot/{data.key}/top1': float(correct.mean()),
        f'zeroshot/{data.key}/top5': common.topk_accuracy(logits, labels, 5),
        f'zeroshot/{data.key}/mean_per_class': float(np.mean(list(per_class.values()))),
    }


def predict(ctx: common.Context, params, source, feature: str,
            classifier: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cosine logits of every readable record of `source` against `classifier` (float32 [C, D], from
  `common.build_classifier`).

  Returns:
    (logits float32 [N, C], labels int32 [N] from the ClassLabel `feature`, index int32 [N] of each row's record
    in `source`); unreadable records are left out.
  """
  image_spec = ctx.image_spec()
  convert = lambda r: {'image': image_spec.eval_view(sources.decode_image(r)), 'label': np.int32(r[feature])}
  logits, labels, index = [], [], []
  for batch, valid in common.indexed_batches(source, convert, ctx):
    emb = ctx.encode_image_batch(params, batch['image'])
    logits.append((emb @ classifier.T)[valid])
    labels.append(np.asarray(common.gather(batch['label']))[valid])
    index.append(common.gather_index(batch)[valid])
  return np.concatenate(logits), np.concatenate(labels), np.concatenate(index)


def _write_per_class(workdir: str, key: str, per_class: dict[str, float]):
  if workdir and jax.process_index() == 0:
    with open(os.path.join(workdir, f'zeroshot_{key}_per_class.json'), 'w') as f:
      json.dump(per_class, f, indent=1)
