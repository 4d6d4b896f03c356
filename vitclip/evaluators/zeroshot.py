"""Zero-shot classification: class names x prompt templates -> ensembled text classifier -> top-1/top-5.

Protocol of CLIP: per class, embed every template, L2-normalize each, average, renormalize.
"""

import json
import os
from typing import Sequence

import numpy as np

from vitclip.data import pipeline, sources
from vitclip.evaluators import common, retrieval, templates as templates_lib


def build_classifier(ctx: common.EvalContext, classnames: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """Returns float32 [C, D]: one L2-normalized ensembled text embedding per class (all texts in one batched,
  sharded pass)."""
  texts = [t.format(c) for c in classnames for t in templates]
  emb = ctx.encode_texts(texts).reshape(len(classnames), len(templates), -1)
  return common.l2_normalize(emb.mean(axis=1)).astype(np.float32)


def parse_dataset(spec: str) -> tuple[str, str]:
  """'name' -> (name, 'label'); 'name:feature' -> (name, feature): which integer feature holds the class."""
  name, _, feature = spec.partition(':')
  return name, feature or 'label'


def classnames_for(cfg, info, name: str, feature: str) -> list[str]:
  """Class names: a text file (one per line) named in the config, else the data set's ClassLabel names;
  then `cfg.aliases` ('name=alias,...') replaces individual names."""
  path = cfg.classnames_files.get(name, '') if 'classnames_files' in cfg else ''
  if path:
    with open(path, encoding='utf-8') as f:
      names = [line.strip() for line in f if line.strip()]
  else:
    names = sources.class_names(info, feature)
  aliases = dict(kv.split('=', 1) for kv in cfg.aliases.split(',') if '=' in kv) if 'aliases' in cfg else {}
  return [aliases.get(n, n).replace('_', ' ') for n in names]


def evaluate_dataset(ctx: common.EvalContext, cfg, spec: str) -> dict[str, float]:
  name, feature = parse_dataset(spec)
  source, info = retrieval.load_source(ctx, name, cfg.split)
  names = classnames_for(cfg, info, name, feature)
  classifier = build_classifier(ctx, names, templates_lib.get_templates(cfg.templates, feature))
  image_spec = ctx.image_spec()
  convert = lambda r: {'image': image_spec.eval_view(sources.decode_image(r)),
                       'label': np.int32(r[feature])}
  logits, labels = [], []
  for batch, valid in pipeline.eval_batches(source, convert, ctx.batch_size, ctx.mesh):
    emb = ctx.encode_image_batch(batch['image'])
    logits.append((emb @ classifier.T)[valid])
    labels.append(np.asarray(common._gather(batch['label']))[valid])
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  correct = logits.argmax(1) == labels
  per_class = {n: float(correct[labels == c].mean()) for c, n in enumerate(names) if np.any(labels == c)}
  key = name if feature == 'label' else f'{name}_{feature}'
  _write_per_class(ctx.workdir, key, per_class)
  return {
      f'zeroshot/{key}/top1': float(correct.mean()),
      f'zeroshot/{key}/top5': common.topk_accuracy(logits, labels, 5),
      f'zeroshot/{key}/mean_per_class': float(np.mean(list(per_class.values()))),
  }


def _write_per_class(workdir: str, key: str, per_class: dict[str, float]):
  import jax
  if workdir and jax.process_index() == 0:
    with open(os.path.join(workdir, f'zeroshot_{key}_per_class.json'), 'w') as f:
      json.dump(per_class, f, indent=1)


def evaluate(ctx: common.EvalContext, cfg) -> dict[str, float]:
  """Runs every data set of `cfg.datasets` (entries 'name' or 'name:feature')."""
  results = {}
  for spec in cfg.datasets:
    results.update(evaluate_dataset(ctx, cfg, spec))
  return results
