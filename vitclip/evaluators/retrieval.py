"""Image <-> text retrieval: recall@{1, 5, 10} over a split with several captions per image.

Every image of the split is embedded (padded, sharded batches; no example dropped) and every caption of every
image (batched through `ctx.encode_texts`); the similarity is the cosine of the L2-normalized embeddings.
i2t: an image counts as found at k if any of its captions is among its k most similar texts; t2i: a caption
counts if its image is among its k most similar images. Ties count against the query (see
`metrics.retrieval_recall`).
"""

import dataclasses
import logging
from typing import Callable, Iterator

import jax
import numpy as np

from vitclip.data import pipeline, sources
from vitclip.evaluators import common, metrics

KS = (1, 5, 10)


class _Head:
  """The first n records of a random-access source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


def load_source(ctx: common.EvalContext, name: str, split: str, max_examples: int = 0):
  """(source, info) of a split, limited to its first `max_examples` records (0: all). A generated data set
  ('shapes') is read with the settings of `config.data.shapes`, i.e. the version the model was trained on."""
  source, info = sources.load_source(name, split, ctx.data_dir, **sources.settings_for(name, ctx.config.data))
  return limit_source(source, max_examples), info


def metric_name(name: str) -> str:
  """Data set name -> the <dataset> part of metric keys ('shapes/cfg:1.0.0' -> 'shapes_cfg_1.0.0')."""
  return name.replace('/', '_').replace(':', '_')


def limit_source(source, max_examples: int):
  """The first `max_examples` records of `source` (0 or negative: all)."""
  if max_examples <= 0 or max_examples >= len(source):
    return source
  return _Head(source, int(max_examples))


@dataclasses.dataclass
class _Record:
  index: int
  record: object


class _Indexed:
  """source[i] -> (i, record), so that the converted example can carry its record index."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return _Record(i, self.source[i])


def indexed_batches(source, convert: Callable[[dict], dict],
                    ctx: common.EvalContext) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
  """`pipeline.eval_batches` over `source` whose batches also hold 'index': int32 [B], the record index of
  every row. Per-example data that cannot be stacked into a device batch (captions, masks of different sizes)
  is read back on the host by index, for the rows that `valid` marks.

  Yields:
    (batch, valid) as `pipeline.eval_batches`: batch arrays [ctx.batch_size, ...] sharded over the mesh, valid
    bool [ctx.batch_size] (False for padding and unreadable records).
  """
  def convert_indexed(item: _Record):
    out = convert(item.record)
    if out is not None:
      out = dict(out, index=np.int32(item.index))
    return out

  return pipeline.eval_batches(_Indexed(source), convert_indexed, ctx.batch_size, ctx.mesh)


def gather_index(batch) -> np.ndarray:
  """The 'index' of an `indexed_batches` batch on the host: int [B]."""
  return np.asarray(common._gather(batch['index']))


def evaluate_dataset(ctx: common.EvalContext, cfg, name: str) -> dict[str, float]:
  source, _ = load_source(ctx, name, cfg.split, cfg.max_examples)
  key = metric_name(name)
  image_spec = ctx.image_spec()

  def convert(record):
    image = image_spec.eval_view(sources.decode_image(record))
    if not sources.decode_captions(record):  # Validated here, so an image and its captions stand or fall together.
      raise sources.BadRecordError('record has no captions.')
    return {'image': image}

  embeddings, indices = [], []
  for batch, valid in indexed_batches(source, convert, ctx):
    embeddings.append(ctx.encode_image_batch(batch['image'])[valid])
    indices.append(gather_index(batch)[valid])
  if not embeddings or not sum(len(i) for i in indices):
    raise ValueError(f'retrieval/{key}: split {cfg.split!r} has no readable examples.')
  zimg, indices = np.concatenate(embeddings), np.concatenate(indices)
  if len(indices) < len(source):
    logging.warning('retrieval/%s: skipped %d of %d unreadable records.', key, len(source) - len(indices),
                    len(source))

  texts, txt_to_img = [], []
  for row, i in enumerate(indices):
    captions = sources.decode_captions(source[int(i)])
    texts += captions
    txt_to_img += [row] * len(captions)
  ztxt = ctx.encode_texts(texts)
  sim = zimg.astype(np.float32) @ ztxt.astype(np.float32).T  # [N_img, N_txt] cosine similarities.
  recall = metrics.retrieval_recall(sim, np.asarray(txt_to_img), KS)
  return {f'retrieval/{key}/{k}': v for k, v in recall.items()}


def evaluate(ctx: common.EvalContext, cfg) -> dict[str, float]:
  """Runs every data set of `cfg.datasets` (TFDS names whose records carry images and captions)."""
  results = {}
  for name in cfg.datasets:
    results.update(evaluate_dataset(ctx, cfg, name))
  return results
