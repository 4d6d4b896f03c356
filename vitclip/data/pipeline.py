"""Input pipeline: TFDS data source -> grain (shuffle, shard; read, decode, augment and tokenize a batch at a
time) -> global jax.Array.

Each process reads its own interleaved slice of one globally shuffled order, so the global batch at step s is
the same whatever the number of processes. The grain iterator state is saved with every checkpoint, which
makes resumption exact.

Training images travel as uint8 pixels (4x less host memory, host->device traffic and batch memory on device
than float32); the jitted step normalises them (`ImageSpec.to_model`), inside gradient caching's microbatches
too. Evaluation batches are normalised on the host (`eval_view`).
"""

import dataclasses
import functools
import threading
from typing import Callable, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vitclip import sharding
from vitclip.data import generated, sources


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """How images are turned into model inputs: float32 [size, size, 3], (x / 255 - mean) / std, on the host
  (`normalize`, `eval_view`) or on device (`to_model`) from uint8 training views (`train_view`)."""
  size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  crop_scale: tuple[float, float] = (1.0, 1.0)  # Random-resized-crop area range (training only).
  flip: bool = False

  @classmethod
  def from_config(cls, config, train: bool) -> 'ImageSpec':
    return cls(size=config.model.image.image_size, mean=tuple(config.data.mean), std=tuple(config.data.std),
               crop_scale=tuple(config.data.crop_scale) if train else (1.0, 1.0),
               flip=config.data.flip and train)

  @functools.cached_property
  def _scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
    std = np.asarray(self.std, np.float32)
    return np.float32(1 / 255) / std, -np.asarray(self.mean, np.float32) / std

  def normalize(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [H, W, 3]: (x / 255 - mean) / std as one multiply-add (per-example cost)."""
    scale, offset = self._scale_offset
    out = image.astype(np.float32)
    out *= scale
    out += offset
    return out

  def to_model(self, images: jax.Array) -> jax.Array:
    """In the jitted step: uint8 [..., 3] pixels -> float32 normalised as `normalize` does; float images are
    taken as normalised already and returned as they are."""
    if images.dtype != jnp.uint8:
      return images
    scale, offset = self._scale_offset
    return images.astype(jnp.float32) * scale + offset

  def resize(self, image: np.ndarray, box=None) -> np.ndarray:
    """Crops `box` (left, top, right, bottom) of uint8 [H, W, 3] and resizes to [size, size, 3]."""
    h, w = image.shape[:2]
    if (box is None or tuple(box) == (0, 0, w, h)) and (h, w) == (self.size, self.size):
      return image
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((self.size, self.size), Image.BILINEAR, box=box))

  def train_view(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random-resized crop (aspect ratio kept) + optional flip: uint8 [H, W, 3] -> uint8 [size, size, 3]
    (normalised in the step, `to_model`)."""
    h, w = image.shape[:2]
    lo, hi = self.crop_scale
    if (lo, hi) == (1.0, 1.0):  # The whole image: no crop to draw.
      out = self.resize(image)
    else:
      side = np.sqrt(rng.uniform(lo, hi))
      ch, cw = max(1, round(h * side)), max(1, round(w * side))
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      out = self.resize(image, box=(left, top, left + cw, top + ch))
    if self.flip and rng.random() < 0.5:
      out = out[:, ::-1]
    return np.ascontiguousarray(out)

  def eval_view(self, image: np.ndarray) -> np.ndarray:
    """Resize to the model resolution, normalized. uint8 [H, W, 3] -> f32 [size, size, 3]."""
    return self.normalize(self.resize(image))


class SkipCounter:
  """Thread-safe count of records skipped because they could not be decoded.

  Picklable, so that grain worker processes (`config.data.num_workers > 1`) can take the batch reader that
  holds it; each worker then counts in its own copy, which the training process does not see.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0
    self.last_error = ''

  def add(self, error: Exception):
    with self._lock:
      self.count += 1
      self.last_error = str(error)

  def __getstate__(self):
    return {'count': self.count, 'last_error': self.last_error}

  def __setstate__(self, state):
    self.__init__()
    self.__dict__.update(state)


# Replacements tried for an unreadable training record before the run stops: records that far in a row are
# unreadable only when the data set is broken, not when a few files are.
MAX_REPLACEMENTS = 100


def _with_rng_state(record_index: int, rng: np.random.Generator) -> tuple[int, dict]:
  """grain random_map: an index of the shuffled stream -> (record index, that position's generator state).

  grain keys each position's generator by (seed, global position); the state travels with the index to the
  batch reader, which draws from it exactly as a per-record random_map would.
  """
  return record_index, rng.bit_generator.state


@dataclasses.dataclass
class TrainBatch(grain.transforms.Map):
  """A local batch of (record index, generator state) -> {'image': uint8 [N, S, S, 3], 'tokens': int32 [N, L]};
  with `label_feature` set, {'image': ..., 'label': int32 [N]} (classifier fine-tuning) instead of tokens.

  The records are read in one batched call and the captions tokenized in one call: per-record overheads, not
  the work itself, were most of the input pipeline's time on small images. Each example draws its caption,
  then its crop and flip, from its own generator. An unreadable record is counted in `skipped` and replaced
  by the next readable record of the source (index + 1, + 2, ...), drawn with the same generator, so the
  batch keeps its size and every process count and resume reads the same batch.

  captions: record -> its captions (`sources.caption_reader`); one is drawn per example.
  """
  source: sources.RecordSource
  spec: ImageSpec
  tokenize: Callable[[list[str]], np.ndarray]
  skipped: SkipCounter
  captions: Callable[[dict], list[str]] = sources.decode_captions
  label_feature: str = ''
  # The features that the image, `captions` and the label read, or None (all); decoding skips the others.
  features: tuple[str, ...] | None = None

  def map(self, items: list[tuple[int, dict]]) -> dict[str, np.ndarray]:
    records = self.source.read_many([int(index) for index, _ in items], self.features)
    rng = np.random.Generator(np.random.Philox())
    images, targets = [], []
    for (index, state), record in zip(items, records):
      rng.bit_generator.state = state
      image, target = self._example(int(index), record, rng)
      images.append(image)
      targets.append(target)
    batch = {'image': np.stack(images)}
    if self.label_feature:
      batch['label'] = np.asarray(targets, np.int32)
    else:
      batch['tokens'] = self.tokenize(targets)
    return batch

  def _example(self, index: int, record: dict, rng: np.random.Generator):
    """(uint8 [S, S, 3] view, caption or label) of `record`, or of its replacement if it is unreadable. Nothing
    is drawn from `rng` before a record has decoded, so a replacement draws what the position would have."""
    for step in range(MAX_REPLACEMENTS + 1):
      if step:
        record = self.source[(index + step) % len(self.source)]
      try:
        image = sources.decode_image(record)
        target = self._label(record) if self.label_feature else self.captions(record)
      except sources.BadRecordError as e:
        self.skipped.add(e)
        continue
      if not self.label_feature:
        target = target[rng.integers(len(target))]
      return self.spec.train_view(image, rng), target
    raise ValueError(f'records {index} to {index + MAX_REPLACEMENTS} of the training split (modulo its '
                     f'{len(self.source)} records) are all unreadable; the last error: {self.skipped.last_error}')

  def _label(self, record) -> np.int32:
    try:
      return np.int32(record[self.label_feature])
    except (KeyError, TypeError, ValueError) as e:
      raise sources.BadRecordError(f'record has no valid {self.label_feature!r} label ({e}).') from None


class TrainIterator:
  """Yields global batches {'image': [B, S, S, 3] uint8, 'tokens': [B, L] int32 (or 'label': [B] int32)}
  sharded over the mesh.

  `grain_iterator` is the process-local grain iterator; orbax saves/restores it with each checkpoint.
  """

  def __init__(self, grain_iterator, mesh, skipped: SkipCounter):
    self.grain_iterator = grain_iterator
    self._sharding = sharding.batch_sharding(mesh)
    self.skipped = skipped

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self.grain_iterator)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharding, x), local)


def make_train_iterator(config, tokenize: Callable[[list[str]], np.ndarray], mesh) -> TrainIterator:
  """Builds the training stream over `config.data.train_split` for this process."""
  batches, skipped = train_batches(config, tokenize)
  read = grain.ReadOptions(num_threads=max(1, config.data.num_workers), prefetch_buffer_size=config.data.prefetch)
  it = batches.to_iter_dataset(read)
  if config.data.num_workers > 1:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return TrainIterator(iter(it), mesh, skipped)


def train_batches(config, tokenize: Callable[[list[str]], np.ndarray]) -> tuple[grain.MapDataset, SkipCounter]:
  """This process's training batches as a random-access grain.MapDataset (batch i = the i-th step's local
  batch, `TrainBatch`), and the counter of records it skipped."""
  source, info = generated.load_source(config.data.name, config.data.train_split, config.data,
                                       sources.data_dir(config))
  if config.batch_size % jax.process_count():
    raise ValueError(f'config.batch_size={config.batch_size} must be divisible by the '
                     f'{jax.process_count()} processes.')
  skipped = SkipCounter()
  # The global stream: one shuffled order of record indices, repeated; position p's augmentation generator is
  # keyed by p, so the stream is the same for any process count. Each process takes every process_count-th
  # position and reads them a local batch at a time.
  order = grain.MapDataset.range(len(source)).seed(config.data.shuffle_buffer_seed).shuffle().repeat()
  order = order.random_map(_with_rng_state)[jax.process_index()::jax.process_count()]
  labels = config.data.label_feature if config.classifier.enabled else ''
  captions = sources.decode_captions if labels else sources.caption_reader(config.data, info)
  features = ('image', 'captions', 'caption', config.data.label_feature)  # label_feature: labels or templates.
  read_batch = TrainBatch(source, ImageSpec.from_config(config, train=True), tokenize, skipped, captions, labels,
                          features)
  batches = order.batch(config.batch_size // jax.process_count(), drop_remainder=True, batch_fn=list)
  return batches.map(read_batch), skipped


def eval_batches(source, convert: Callable[[dict], dict], batch_size: int,
                 mesh) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
  """Iterates a whole split once in order, padding the last batch; drops no example.

  Args:
    source: random-access records; `convert(record)` -> dict of numpy arrays (one example).
    batch_size: global batch size (a multiple of the batch-parallel device count).
  Yields:
    (batch, valid): batch arrays [batch_size, ...] sharded over the mesh's batch axes and valid: bool
    [batch_size] on the host, False for padding rows. Bad records are counted in `valid` as False too.
  """
  batch_sharding = sharding.batch_sharding(mesh)
  n = len(source)
  proc, nproc = jax.process_index(), jax.process_count()
  local = batch_size // nproc
  template = None
  for start in range(0, n, batch_size):
    rows, valid = [], np.zeros(batch_size, bool)
    for j in range(local):
      g = start + proc * local + j
      example = None
      if g < n:
        try:
          example = convert(source[g])
        except sources.BadRecordError:
          example = None
      if example is not None:
        template = template or example
        valid[proc * local + j] = True
      rows.append(example)
    template = template or _first_valid(source, convert)
    rows = [r if r is not None else jax.tree.map(np.zeros_like, template) for r in rows]
    local_batch = jax.tree.map(lambda *xs: np.stack(xs), *rows)
    global_valid = np.asarray(_allgather_valid(valid, local, proc))
    yield jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
                       local_batch), global_valid


def _first_valid(source, convert):
  for i in range(len(source)):
    try:
      example = convert(source[i])
    except sources.BadRecordError:
      continue
    if example is not None:
      return example
  raise ValueError('every record of the evaluation split is unreadable.')


def _allgather_valid(valid: np.ndarray, local: int, proc: int) -> np.ndarray:
  """Each process only knows its own rows' validity; combine them (cheap host-level gather)."""
  if jax.process_count() == 1:
    return valid
  from jax.experimental import multihost_utils
  mine = valid[proc * local:(proc + 1) * local]
  return multihost_utils.process_allgather(mine).reshape(-1)
