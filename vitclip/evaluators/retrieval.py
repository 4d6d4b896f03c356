"""Image <-> text retrieval: recall@{1, 5, 10} over a split with several captions per image.

Every image of the split is embedded (padded, sharded batches; no example dropped) and every caption of every
image (batched through `ctx.encode_texts`); the similarity is the cosine of the L2-normalized embeddings.
i2t: an image counts as found at k if any of its captions is among its k most similar texts; t2i: a caption
counts if its image is among its k most similar images. Ties count against the query (see
`metrics.retrieval_recall`).

With no data set named, the training data set (`config.data.name`) is evaluated when it has the split: what
any run can evaluate on its own data.
"""

import dataclasses

import numpy as np
from absl import logging

from vitclip.data import sources
from vitclip.errors import ConfigError
from vitclip.evaluators import common, metrics

KS = (1, 5, 10)
PREFIX = 'config.evals.retrieval'


@dataclasses.dataclass
class _Data:
  """One data set, opened once per run."""
  key: str  # <dataset> of the metric keys.
  source: object


class Retrieval(common.Evaluator):
  """i2t_r{1,5,10} / t2i_r{1,5,10} of each data set."""
  NAME = 'retrieval'
  NEEDS = ('an image-caption data set, e.g. python -m vitclip.data.folder --images DIR --captions FILE '
           '--name NAME')

  def __init__(self, ctx: common.Context, cfg):
    super().__init__(ctx, cfg)
    if not cfg.datasets and self.data:
      logging.info('retrieval: evaluating the training data set %r (split %r); name others with '
                   '--config.evals.retrieval.datasets="(\'NAME\',)".', ctx.config.data.name, cfg.split)

  @classmethod
  def specs(cls, cfg, config, data_dir):
    """`cfg.datasets`; if empty, the training data set when it has `cfg.split` (data_dir None: whenever there
    is one, since nothing is read)."""
    if cfg.datasets or not config.data.name:
      return tuple(cfg.datasets)
    if data_dir is not None and not common.has_split(config.data.name, cfg.split, config, data_dir):
      return ()
    return (config.data.name,)

  @classmethod
  def skip_reason(cls, cfg, config) -> str:
    if cfg.datasets or not config.data.name:
      return super().skip_reason(cfg, config)
    return (f'the training data set {config.data.name!r} has no split {cfg.split!r} (or is not prepared); set '
            f'--config.evals.retrieval.split, or add --config.evals.retrieval.datasets="(\'NAME\',)" '
            f'({cls.NEEDS}).')

  @classmethod
  def check_config(cls, cfg, config, data_dir):
    common.check_split(PREFIX, cfg.split)
    common.check_max_examples(PREFIX, cfg.max_examples)
    for spec in cfg.datasets:
      name, feature = common.parse_dataset(spec, '')
      if feature:
        raise ConfigError(f'{PREFIX}.datasets entry {spec!r}: retrieval reads the captions of a data set; name '
                          f'it without ":{feature}".')
      info = common.check_dataset(f'{PREFIX}.datasets', name, f'{PREFIX}.split', cfg.split, config, data_dir)
      common.check_feature(f'{PREFIX}.datasets', name, info, ('captions', 'caption'), 'captions')

  def setup(self, name: str, feature: str) -> _Data:
    del feature
    source, _ = common.load_source(self.ctx, name, self.cfg.split, self.cfg.max_examples)
    return _Data(common.metric_name(name), source)

  def evaluate(self, params, data: _Data) -> dict[str, float]:
    ctx, source, key = self.ctx, data.source, data.key
    image_spec = ctx.image_spec()

    def convert(record):
      image = image_spec.eval_view(sources.decode_image(record))
      if not sources.decode_captions(record):  # Validated here, so an image and its captions stand or fall together.
        raise sources.BadRecordError('record has no captions.')
      return {'image': image}

    embeddings, indices = [], []
    for batch, valid in common.indexed_batches(source, convert, ctx):
      embeddings.append(ctx.encode_image_batch(params, batch['image'])[valid])
      indices.append(common.gather_index(batch)[valid])
    if not embeddings or not sum(len(i) for i in indices):
      raise ValueError(f'retrieval/{key}: split {self.cfg.split!r} has no readable examples.')
    zimg, indices = np.concatenate(embeddings), np.concatenate(indices)
    if len(indices) < len(source):
      logging.warning('retrieval/%s: skipped %d of %d unreadable records.', key, len(source) - len(indices),
                      len(source))

    texts, txt_to_img = [], []
    for row, i in enumerate(indices):
      captions = sources.decode_captions(source[int(i)])
      texts += captions
      txt_to_img += [row] * len(captions)
    ztxt = ctx.encode_texts(params, texts)
    sim = zimg.astype(np.float32) @ ztxt.astype(np.float32).T  # [N_img, N_txt] cosine similarities.
    recall = metrics.retrieval_recall(sim, np.asarray(txt_to_img), KS)
    return {f'retrieval/{key}/{k}': v for k, v in recall.items()}
