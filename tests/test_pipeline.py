"""The training input pipeline (vitclip/data/pipeline.py): batched reading gives exactly the batches of a
per-record grain pipeline, is the same stream for any process count, and replaces unreadable records."""

import grain
import jax
import numpy as np
import pytest

from tests.tiny import tiny_config
from vitclip.data import generated, pipeline, sources

LENGTH = 12


def tokenize(texts):
  """A stand-in tokenizer: each text's UTF-8 bytes, cut or zero-padded to LENGTH. int32 [N, LENGTH]."""
  out = np.zeros((len(texts), LENGTH), np.int32)
  for i, text in enumerate(texts):
    ids = list(text.encode())[:LENGTH]
    out[i, :len(ids)] = ids
  return out


def config_for(data_dir, **overrides):
  c = tiny_config(data_dir, **overrides)
  generated.prepare(c.data.name, c.data, data_dir)
  return c


def reference_batches(config, count: int) -> list[dict]:
  """The first `count` global batches as a per-record pipeline makes them: grain's random_map over the
  shuffled, repeated records (one generator per stream position), one caption drawn, then the crop and flip."""
  source, info = generated.load_source(config.data.name, config.data.train_split, config.data,
                                       sources.data_dir(config))
  spec = pipeline.ImageSpec.from_config(config, train=True)
  labels = config.classifier.enabled

  def example(record, rng):
    image = sources.decode_image(record)
    if labels:
      return {'image': spec.train_view(image, rng), 'label': np.int32(record[config.data.label_feature])}
    captions = sources.caption_reader(config.data, info)(record)
    caption = captions[rng.integers(len(captions))]
    return {'image': spec.train_view(image, rng), 'tokens': tokenize([caption])[0]}

  stream = grain.MapDataset.source(source).seed(config.data.shuffle_buffer_seed).shuffle().repeat()
  stream = stream.random_map(example)
  size = config.batch_size
  return [{key: np.stack([stream[b * size + j][key] for j in range(size)]) for key in stream[0]}
          for b in range(count)]


@pytest.mark.parametrize('overrides', [
    {'data.crop_scale': (0.5, 1.0), 'data.flip': True},
    {},  # The shapes default: no crop, no flip.
    {'classifier.enabled': True, 'data.crop_scale': (0.5, 1.0)},
], ids=['crop_flip', 'whole_image', 'labels'])
def test_batches_equal_a_per_record_pipeline(tiny_data_dir, overrides):
  config = config_for(tiny_data_dir, **overrides)
  batches, skipped = pipeline.train_batches(config, tokenize)
  expected = reference_batches(config, 3)
  for b, want in enumerate(expected):
    got = batches[b]
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=f'batch {b} {key}')
  assert got['image'].dtype == np.uint8 and skipped.count == 0
  # Crops and captions differ between examples: the generators are per position, not shared.
  assert len({bytes(row) for row in expected[0]['image'].reshape(config.batch_size, -1)}) == config.batch_size


def test_two_processes_read_the_one_process_stream(tiny_data_dir, monkeypatch):
  """Process p of 2 reads global positions 2j + p of each global batch: interleaved, the two local batches
  are the one-process batch, crops and captions included."""
  config = config_for(tiny_data_dir, **{'data.crop_scale': (0.5, 1.0)})
  single, _ = pipeline.train_batches(config, tokenize)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  local = []
  for p in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    local.append(pipeline.train_batches(config, tokenize)[0])
  for b in range(2):
    for key in ('image', 'tokens'):
      interleaved = np.stack([local[0][b][key], local[1][b][key]], axis=1).reshape(single[b][key].shape)
      np.testing.assert_array_equal(interleaved, single[b][key], err_msg=f'batch {b} {key}')


class _Unreadable:
  """A RecordSource whose records at `bad` indices have undecodable image bytes."""

  def __init__(self, source, bad):
    self._source, self._bad = source, set(bad)

  def __len__(self):
    return len(self._source)

  def _spoil(self, index, record):
    return {**record, 'image': b'\x89PNG not an image'} if index in self._bad else record

  def __getitem__(self, index):
    return self._spoil(index, self._source[index])

  def read_many(self, indices, features=None):
    return [self._spoil(i, r) for i, r in zip(indices, self._source.read_many(indices, features))]


def test_unreadable_record_is_counted_and_replaced_by_the_next(tiny_data_dir):
  config = config_for(tiny_data_dir, **{'data.crop_scale': (0.5, 1.0)})
  source, info = generated.load_source(config.data.name, config.data.train_split, config.data,
                                       sources.data_dir(config))
  spec = pipeline.ImageSpec.from_config(config, train=True)
  states = [np.random.Generator(np.random.Philox(key=k)).bit_generator.state for k in (1, 2)]
  read = lambda src, skipped: pipeline.TrainBatch(src, spec, tokenize, skipped, sources.caption_reader(
      config.data, info)).map([(5, states[0]), (9, states[1])])

  skipped = pipeline.SkipCounter()
  got = read(_Unreadable(source, bad={5, 6}), skipped)
  assert skipped.count == 2 and 'cannot be decoded' in skipped.last_error
  # Row 0 is record 7 (5 and 6 unreadable) drawn with position 0's generator; row 1 is untouched.
  want = read(_Unreadable(source, bad=()), pipeline.SkipCounter())
  as_seven = pipeline.TrainBatch(source, spec, tokenize, pipeline.SkipCounter(),
                                 sources.caption_reader(config.data, info)).map([(7, states[0])])
  np.testing.assert_array_equal(got['image'][0], as_seven['image'][0])
  np.testing.assert_array_equal(got['tokens'][0], as_seven['tokens'][0])
  np.testing.assert_array_equal(got['image'][1], want['image'][1])
  assert got['image'].shape == want['image'].shape

  everything = _Unreadable(source, bad=range(len(source)))
  with pytest.raises(ValueError, match=f'records 5 to {5 + pipeline.MAX_REPLACEMENTS} .* all unreadable'):
    read(everything, pipeline.SkipCounter())


def test_batch_reader_pickles_for_worker_processes(tiny_data_dir):
  """grain worker processes (config.data.num_workers > 1) get the batch reader pickled; the copy reads the
  same batch, and its skip counter starts from the original's count."""
  import pickle
  config = config_for(tiny_data_dir)
  source, info = generated.load_source(config.data.name, config.data.train_split, config.data,
                                       sources.data_dir(config))
  spec = pipeline.ImageSpec.from_config(config, train=True)
  reader = pipeline.TrainBatch(source, spec, tokenize, pipeline.SkipCounter(), sources.caption_reader(config.data,
                                                                                                     info))
  reader.skipped.add(ValueError('one'))
  copy = pickle.loads(pickle.dumps(reader))
  items = [(3, np.random.Generator(np.random.Philox(key=3)).bit_generator.state)]
  for key, value in reader.map(items).items():
    np.testing.assert_array_equal(copy.map(items)[key], value)
  assert (copy.skipped.count, copy.skipped.last_error) == (1, 'one')
  copy.skipped.add(ValueError('two'))  # Its lock works.
  assert copy.skipped.count == 2 and reader.skipped.count == 1
