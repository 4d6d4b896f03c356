"""A classifier fine-tuning run's own evaluation: its head on `config.data.name` by `config.data.label_feature`.

Reports top-1 of the fine-tuned params θ_ft and of each WiSE-FT mix θ_α = (1 - α) θ_0 + α θ_ft
(`vitclip.classifier.wise`) with the zero-shot model θ_0: the image tower of `config.init_from` and the
zero-shot head of the run's own (frozen) text tower, `zero_shot_head`, which is also the head a run starts from.
α = 0 is θ_0 itself, i.e. zero-shot classification with the run's prompts. Result keys
`classifier/<dataset>/top1` and `classifier/<dataset>/wise_<α>/top1`, with <dataset> as zero-shot's ('shapes',
'shapes_color').
"""

import dataclasses
import functools

import jax
import numpy as np

from vitclip import classifier as classifier_lib
from vitclip import sharding
from vitclip import templates as templates_lib
from vitclip.data import pipeline, sources
from vitclip.errors import ConfigError
from vitclip.evaluators import common

PREFIX = 'config.evals.classifier'


def head_templates(config) -> tuple[str, ...]:
  """The prompts of the zero-shot head: classifier.templates, else data.caption_templates, else zero-shot's."""
  for field in ('classifier.templates', 'data.caption_templates', 'evals.zeroshot.templates'):
    section, name = field.rsplit('.', 1)
    node = config
    for part in section.split('.'):
      node = node[part]
    if node[name]:
      return templates_lib.get_templates(node[name], f'config.{field}')
  return templates_lib.get_templates('none', 'config.evals.zeroshot.templates')


def class_names(config, info) -> list[str]:
  """The head's classes: the ClassLabel `data.label_feature` of the training data set (names as zero-shot
  prompts them: evals.zeroshot's class-name files and aliases apply)."""
  return common.classnames_for(config.evals.zeroshot, info, config.data.name, config.data.label_feature)


def zero_shot_head(ctx: common.Context, params, info) -> dict:
  """The head that classifies as zero-shot does, from the text tower in `params` (vitclip.classifier)."""
  embeddings = common.build_classifier(ctx, params, class_names(ctx.config, info), head_templates(ctx.config))
  return classifier_lib.zero_shot_head(embeddings, params)


@dataclasses.dataclass
class _Data:
  key: str
  source: object
  info: object


class Classifier(common.Evaluator):
  NAME = 'classifier'
  NEEDS = 'a classifier fine-tuning run: config.classifier.enabled, e.g. configs/finetune.py:DIR,DATA,method=classifier'

  @classmethod
  def specs(cls, cfg, config, data_dir):
    del cfg, data_dir
    return (config.data.name,) if config.classifier.enabled else ()

  @classmethod
  def skip_reason(cls, cfg, config) -> str:
    del cfg, config
    return f'the run has no classifier head ({cls.NEEDS}).'

  @classmethod
  def check_config(cls, cfg, config, data_dir):
    if not config.classifier.enabled:
      raise ConfigError(f'config.evals.names includes "classifier" but config.classifier.enabled is False; drop it '
                        f'from config.evals.names or train a classifier ({cls.NEEDS}).')
    common.check_split(PREFIX, cfg.split)
    bad = [a for a in cfg.wise_alphas if not 0 <= a <= 1]
    if bad:
      raise ConfigError(f'{PREFIX}.wise_alphas={tuple(cfg.wise_alphas)!r}: {bad} are outside [0, 1] (0 = the '
                        'zero-shot model, 1 = the fine-tuned one).')
    common.check_dataset('config.data.name', config.data.name, f'{PREFIX}.split', cfg.split, config, data_dir)

  def setup(self, name: str, feature: str) -> _Data:
    del feature
    source, info = common.load_source(self.ctx, name, self.cfg.split)
    return _Data(common.dataset_key(name, self.ctx.config.data.label_feature), source, info)

  @functools.cached_property
  def _logits(self):
    model = self.ctx.model
    return jax.jit(lambda p, x: classifier_lib.logits(model, p, x), out_shardings=sharding.batch_sharding(
        self.ctx.mesh))

  @functools.cached_property
  def _zero_shot_image_tower(self):
    """The image tower of config.init_from, read once."""
    if self.ctx.init_from_params is None:
      raise ConfigError(f'{PREFIX}.wise_alphas needs the starting model (config.init_from); evaluate through '
                        'train.py or eval.py, or set --config.evals.classifier.wise_alphas="()".')
    return self.ctx.init_from_params()['img']

  def evaluate(self, params, data: _Data) -> dict[str, float]:
    results = {f'classifier/{data.key}/top1': self._top1(params, data)}
    alphas = [a for a in self.cfg.wise_alphas if a != 1]
    if alphas:
      zero_shot = {**params, 'img': self._zero_shot_image_tower,
                   classifier_lib.HEAD: zero_shot_head(self.ctx, params, data.info)}
      for alpha in alphas:
        mixed = classifier_lib.wise(zero_shot, params, alpha)
        results[f'classifier/{data.key}/wise_{alpha:g}/top1'] = self._top1(mixed, data)
    return results

  def _top1(self, params, data: _Data) -> float:
    image_spec, feature = self.ctx.image_spec(), self.ctx.config.data.label_feature
    convert = lambda r: {'image': image_spec.eval_view(sources.decode_image(r)), 'label': np.int32(r[feature])}
    correct = []
    for batch, valid in pipeline.eval_batches(data.source, convert, self.ctx.batch_size, self.ctx.mesh):
      predicted = np.asarray(common.gather(self._logits(params, batch['image']))).argmax(1)
      correct.append((predicted == np.asarray(common.gather(batch['label'])))[valid])
    return float(np.concatenate(correct).mean())
