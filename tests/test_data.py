"""Tests of the data-set layer: the shapes world, building/reading TFDS data sets, folder imports, decoding."""

import io
import json
import os
import pickle
import re
import threading

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vitclip.data import folder, generated, shapes, sources

SMALL = dict(image_size=32, num_train=200, num_validation=20, num_test=32, seed=0)


def shapes_data(**settings):
  """A `config.data` section naming the generated shapes set with `settings`."""
  return ml_collections.ConfigDict({'name': 'shapes', 'shapes': settings})


def examples(split, n=40, image_size=48, seed=0, **kw):
  return [e for _, e in shapes.generate(split, image_size=image_size, num_examples=n, seed=seed, **kw)]


def assert_examples_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), k


# ------------------------------------------------------------------------------------------------ shapes


def test_generate_is_deterministic_and_seeded():
  a, b = examples('train'), examples('train')
  assert_examples_equal(a, b)
  c = examples('train', seed=1)
  assert not np.array_equal(a[0]['image'], c[0]['image'])
  assert [e['captions'] for e in a] != [e['captions'] for e in c]
  # Any index range regenerates exactly (blocks have their own random streams).
  block = shapes.block_size(48)
  n = block + 7
  full = [e for _, e in shapes.generate('train', image_size=48, num_examples=n, seed=0)]
  part = [e for _, e in shapes.generate('train', image_size=48, num_examples=n, seed=0, start=block - 3, stop=n)]
  assert_examples_equal(full[block - 3:], part)
  # Splits differ from each other.
  assert not np.array_equal(examples('train')[0]['image'], examples('validation')[0]['image'])


def test_shapes_lie_within_their_extent():
  grid = np.linspace(-1.5, 1.5, 601, dtype=np.float32)
  u, v = np.meshgrid(grid, grid)
  areas = []
  for k, name in enumerate(shapes.SHAPE_NAMES):
    inside = shapes._inside(k, u, v)  # pylint: disable=protected-access
    assert np.hypot(u, v)[inside].max() <= shapes.EXTENT, name
    areas.append(inside.mean() * 9)
  assert min(areas) > 1.2 and max(areas) < 3.3  # Comparable visual weight.
  masks = [e['mask'] for e in examples('test', n=len(shapes.SHAPE_NAMES), image_size=64)]
  for a in range(len(masks)):  # Pairwise distinct silhouettes.
    for b in range(a):
      assert np.mean((masks[a] > 0) != (masks[b] > 0)) > 0.005


def test_image_and_mask_types():
  for e in examples('train', n=8, image_size=40):
    assert e['image'].dtype == np.uint8 and e['image'].shape == (40, 40, 3)
    assert e['mask'].dtype == np.uint8 and e['mask'].shape == (40, 40)
    assert e['objects'].shape == (shapes.MAX_OBJECTS, len(shapes.OBJECT_COLUMNS))
    assert 3 <= len(e['captions']) <= shapes.CAPTIONS_PER_IMAGE


def objects_of(e):
  """[(shape, color, size, x, y, r)] of the present objects."""
  return [tuple(row) for row in e['objects'][:e['num_objects']].tolist()]


def test_mask_matches_objects():
  num = []
  for e in examples('train', n=120):
    objs = objects_of(e)
    num.append(len(objs))
    assert 1 <= len(objs) <= 3 and np.all(e['objects'][len(objs):] == -1)
    assert (e['label'], e['color']) == (objs[0][0], objs[0][1])
    radii = [o[5] for o in objs]
    assert radii == sorted(radii, reverse=True)  # label/color describe the largest object.
    assert set(np.unique(e['mask'])) - {0} == {o[0] + 1 for o in objs}
    # Every mask pixel lies near an object of that class; every object covers a reasonable area.
    ys, xs = np.nonzero(e['mask'])
    near = np.zeros(len(ys), bool)
    for shape, _, size, x, y, r in objs:
      inside = np.hypot(xs + 0.5 - x, ys + 0.5 - y) <= shapes.EXTENT * r + 0.5
      assert np.all(e['mask'][ys[inside], xs[inside]] == shape + 1)
      assert inside.sum() > 0.3 * np.pi * r * r
      lo, hi = shapes.RADIUS_RANGE[int(size)]
      assert lo * 48 - 1e-3 <= r <= hi * 48 + 1e-3
      near |= inside
    assert near.all()
    for i, a in enumerate(objs):  # Bounding circles never overlap.
      for b in objs[:i]:
        assert np.hypot(a[3] - b[3], a[4] - b[4]) > shapes.EXTENT * (a[5] + b[5])
  assert set(num) == {1, 2, 3}


_SIZE_OF = {w: i for i, words in enumerate(shapes._SIZE_WORDS) for w in words}  # pylint: disable=protected-access
_PHRASE = re.compile(r'(?:\b(%s) )?(?:\b(%s) )?\b(%s)\b' % (
    '|'.join(_SIZE_OF), '|'.join(shapes.COLOR_NAMES), '|'.join(shapes.SHAPE_NAMES)), re.IGNORECASE)
_RELATION = re.compile(r'\b(to the left of|left of|to the right of|right of|above|below|under)\b')


def matches(phrase, obj):
  size, color, shape = phrase
  return (shapes.SHAPE_NAMES.index(shape.lower()) == obj[0]
          and (not color or shapes.COLOR_NAMES.index(color.lower()) == obj[1])
          and (not size or _SIZE_OF[size.lower()] == obj[2]))


def test_captions_describe_the_scene():
  for e in examples('train', n=120) + examples('test', n=24):
    objs = objects_of(e)
    for caption in e['captions']:
      phrases = _PHRASE.findall(caption)
      # Every object is named, and every named object exists with that colour and size.
      assert len(phrases) == len(objs), caption
      for phrase in phrases:
        assert any(matches(phrase, o) for o in objs), (caption, objs)
      assert sorted(shapes.SHAPE_NAMES.index(p[2].lower()) for p in phrases) == sorted(o[0] for o in objs)
      assert shapes.num_tokens(caption) <= shapes.MAX_CAPTION_TOKENS, caption
      rel = _RELATION.search(caption)
      if rel:  # "<a> <rel> <b>": some matching pair of objects is in that relation.
        word = {'to the left of': 'left of', 'to the right of': 'right of', 'under': 'below'}.get(
            rel.group(1), rel.group(1))
        a, b = phrases[0], phrases[1]
        assert any(matches(a, oa) and matches(b, ob) and shapes.relation(oa[3:5], ob[3:5]) == word
                   for oa in objs for ob in objs if oa is not ob), (caption, objs)
  assert any('left of' in c for e in examples('train', n=120) for c in e['captions'])


def test_test_split_is_single_object_and_balanced():
  n = 2 * len(shapes.SHAPE_NAMES) * len(shapes.COLOR_NAMES)
  exs = examples('test', n=n, image_size=32)
  labels, colors, sizes = [], [], []
  for e in exs:
    assert e['num_objects'] == 1
    classes = set(np.unique(e['mask'])) - {0}
    assert classes == {e['label'] + 1}
    labels.append(e['label'])
    colors.append(e['color'])
    sizes.append(int(e['objects'][0, 2]))
  for values, k in ((labels, len(shapes.SHAPE_NAMES)), (colors, len(shapes.COLOR_NAMES)), (sizes, 2)):
    assert np.all(np.bincount(values, minlength=k) == n // k)
  assert len(set(zip(labels, colors, sizes))) == n  # Every (shape, colour, size) combination once.


def test_config_name_encodes_settings():
  assert shapes.config_name(**shapes.DEFAULTS) == 's64_n50000_v2000_t2000_seed0'
  assert shapes.full_name() == 'shapes/s64_n50000_v2000_t2000_seed0'
  assert shapes.full_name(image_size=32) != shapes.full_name()
  with pytest.raises(ValueError, match='image_size'):
    shapes.check_settings(**{**shapes.DEFAULTS, 'image_size': 8})


# ------------------------------------------------------------------------------------ build + read back


@pytest.fixture(scope='module')
def shapes_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  path = shapes.prepare(data_dir, **SMALL)
  return data_dir, path


def test_prepare_and_load_source(shapes_dir):
  data_dir, path = shapes_dir
  assert path == os.path.join(data_dir, shapes.full_name(**SMALL), str(shapes.Shapes.VERSION))
  for split, n in (('train', 200), ('validation', 20), ('test', 32)):
    source, info = generated.load_source('shapes', split, shapes_data(**SMALL), data_dir)
    assert len(source) == n
    expected = examples(split, n=n, image_size=32)
    for i in (0, 1, n // 2, n - 1):
      record = source[i]
      image = sources.decode_image(record)
      assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
      np.testing.assert_array_equal(image, expected[i]['image'])
      np.testing.assert_array_equal(record['mask'], expected[i]['mask'])
      np.testing.assert_array_equal(record['objects'], expected[i]['objects'])
      assert sources.decode_captions(record) == expected[i]['captions']
      assert (record['label'], record['color']) == (expected[i]['label'], expected[i]['color'])
  assert sources.class_names(info, 'label') == list(shapes.SHAPE_NAMES)
  assert sources.class_names(info, 'color') == list(shapes.COLOR_NAMES)
  # The full name and the unique-config fallback find the same data.
  by_name, _ = sources.load_source(shapes.full_name(**SMALL), 'test', data_dir)
  bare, _ = sources.load_source('shapes', 'test', data_dir)
  np.testing.assert_array_equal(by_name[3]['image'], bare[3]['image'])
  assert len(generated.load_source('shapes', 'train[:50]', shapes_data(**SMALL), data_dir)[0]) == 50


def test_fast_decoding_equals_tfds(shapes_dir):
  data_dir, path = shapes_dir
  ours, _ = generated.load_source('shapes', 'validation', shapes_data(**SMALL), data_dir)
  reference = tfds.builder_from_directory(path).as_data_source('validation')
  for i in range(0, 20, 3):
    a, b = ours[i], reference[i]
    assert a.keys() == b.keys()
    for k in a:
      assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k


def test_source_pickles_and_falls_back_to_tfds_decoding(shapes_dir, monkeypatch):
  data_dir, _ = shapes_dir
  source, _ = generated.load_source('shapes', 'test', shapes_data(**SMALL), data_dir)
  clone = pickle.loads(pickle.dumps(source))  # grain worker processes receive the source pickled.
  np.testing.assert_array_equal(clone[5]['image'], source[5]['image'])
  monkeypatch.setattr(sources._FastDecoder, 'for_features', lambda features: None)  # pylint: disable=protected-access
  slow, _ = generated.load_source('shapes', 'test', shapes_data(**SMALL), data_dir)
  for i in (0, 7):
    a, b = source[i], slow[i]
    assert a.keys() == b.keys() and sources.decode_captions(a) == sources.decode_captions(b)
    np.testing.assert_array_equal(sources.decode_image(a), sources.decode_image(b))


def test_prepare_is_a_noop_when_built(shapes_dir):
  data_dir, path = shapes_dir
  stamp = os.stat(os.path.join(path, 'dataset_info.json')).st_mtime_ns
  assert shapes.prepare(data_dir, **SMALL) == path
  assert os.stat(os.path.join(path, 'dataset_info.json')).st_mtime_ns == stamp


def test_settings_select_the_data_set(tmp_path):
  data_dir = str(tmp_path)
  small = dict(SMALL, num_train=16, num_validation=0, num_test=8)
  stale = os.path.join(data_dir, shapes.full_name(**small), f'incomplete.CRASHED_{shapes.Shapes.VERSION}')
  os.makedirs(stale)  # Left behind by a build that was killed.
  # Two builders racing (threads: flock is per open file, so this exercises the lock).
  paths = []
  threads = [threading.Thread(target=lambda: paths.append(shapes.prepare(data_dir, **small)))
             for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(paths) == 2 and paths[0] == paths[1]
  assert os.listdir(os.path.dirname(paths[0])) == [str(shapes.Shapes.VERSION)]
  other = dict(small, image_size=24)
  shapes.prepare(data_dir, **other)
  load = lambda settings: generated.load_source('shapes', 'test', shapes_data(**settings), data_dir)[0]
  assert sources.decode_image(load(other)[0]).shape == (24, 24, 3)
  assert sources.decode_image(load(small)[0]).shape == (32, 32, 3)
  with pytest.raises(ValueError, match='several prepared configs'):
    sources.load_source('shapes', 'test', data_dir)
  with pytest.raises(ValueError, match="no split 'validation'"):
    generated.load_source('shapes', 'validation', shapes_data(**small), data_dir)
  with pytest.raises(FileNotFoundError, match='built automatically by train.py'):
    generated.load_source('shapes', 'test', shapes_data(**dict(small, seed=5)), data_dir)


def test_missing_data_set_message(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    sources.load_source('my_data', 'train', str(tmp_path))
  assert str(tmp_path) in str(e.value) and 'python -m vitclip.data.folder' in str(e.value)
  with pytest.raises(ValueError, match='malformed'):
    sources.load_source('a/b/c', 'train', str(tmp_path))


# ---------------------------------------------------------------------------------------------- decoding


def encode(array, fmt):
  out = io.BytesIO()
  Image.fromarray(array).save(out, format=fmt)
  return out.getvalue()


def test_decode_image_variants():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
  np.testing.assert_array_equal(sources.decode_image({'image': rgb}), rgb)
  np.testing.assert_array_equal(sources.decode_image({'image': encode(rgb, 'PNG')}), rgb)
  out = sources.decode_image({'image': encode(grey, 'PNG')})
  assert out.shape == (9, 7, 3) and np.all(out == grey[..., None])
  assert sources.decode_image({'image': grey}).shape == (9, 7, 3)
  assert sources.decode_image({'image': np.array(encode(rgb, 'JPEG'), dtype=object)}).shape == (9, 7, 3)
  rgba = np.concatenate([rgb, np.full((9, 7, 1), 255, np.uint8)], axis=-1)
  np.testing.assert_array_equal(sources.decode_image({'image': encode(rgba, 'PNG')}), rgb)
  for bad in (b'not an image', encode(rgb, 'PNG')[:40], b'', np.zeros((4, 4, 3), np.float32)):
    with pytest.raises(sources.BadRecordError):
      sources.decode_image({'image': bad})
  with pytest.raises(sources.BadRecordError):
    sources.decode_image({'label': 1})


def test_decode_captions_variants():
  assert sources.decode_captions({'captions': [b' a b ', b'', 'c']}) == ['a b', 'c']
  assert sources.decode_captions({'caption': b'x'}) == ['x']
  assert sources.decode_captions({'captions': np.array([b'y'], dtype=object)}) == ['y']
  assert sources.decode_captions({'captions': {'text': [b'z'], 'id': [1]}}) == ['z']
  for bad in ({'captions': [b'', b'  ']}, {'caption': b'\xff\xfe'}, {'captions': []}, {'image': b''}):
    with pytest.raises(sources.BadRecordError):
      sources.decode_captions(bad)


# ------------------------------------------------------------------------------------------ folder import


@pytest.fixture
def image_folder(tmp_path):
  rng = np.random.default_rng(0)
  d = tmp_path / 'images'
  (d / 'sub').mkdir(parents=True)
  arrays = {'a.png': rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
            'sub/b.jpg': rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            'c.png': rng.integers(0, 256, (12, 10), dtype=np.uint8)}  # Greyscale.
  for name, array in arrays.items():
    Image.fromarray(array).save(d / name)
  (d / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated jpeg')
  return d, arrays


CAPTIONS = [('a.png', 'a first caption'), ('a.png', 'a second caption'), ('sub/b.jpg', 'caption of b'),
            ('c.png', '   '), ('c.png', 'grey image'), ('corrupt.jpg', 'corrupt file'),
            ('missing.jpg', 'no such file'), ('a.png', 'a first caption')]
EXPECTED = {'a.png': ['a first caption', 'a second caption'], 'sub/b.jpg': ['caption of b'],
            'c.png': ['grey image']}


def write_jsonl(path):
  lines = [json.dumps({'image': i, 'caption': c}).encode() for i, c in CAPTIONS]
  lines.insert(2, '{"image": "c.png", "caption": "caf\xe9"}'.encode('latin-1'))  # Not UTF-8.
  lines.insert(3, b'{"image": "c.png", "captions": ["", "grey image"]}')
  lines.append(b'{broken json')
  path.write_bytes(b'\n'.join(lines) + b'\n')


def write_csv(path):
  rows = [b'image,caption'] + [f'{i},"{c}"'.encode() for i, c in CAPTIONS]
  rows.insert(2, b'c.png,caf\xe9 latin-1')
  path.write_bytes(b'\n'.join(rows) + b'\n')


def read_back(data_dir, name, split='train'):
  source, info = sources.load_source(name, split, data_dir)
  out = {}
  for i in range(len(source)):
    record = source[i]
    out[record['filename'].decode()] = (sources.decode_image(record), sources.decode_captions(record))
  return out, info


@pytest.mark.parametrize('fmt', ['jsonl', 'csv'])
def test_folder_import(image_folder, tmp_path, fmt, capsys):
  images, arrays = image_folder
  captions = tmp_path / f'captions.{fmt}'
  (write_jsonl if fmt == 'jsonl' else write_csv)(captions)
  data_dir = str(tmp_path / 'tfds')
  report = folder.main(['--images', str(images), '--captions', str(captions), '--name', 'my_data',
                        '--data_dir', data_dir, '--val_fraction', '0'])
  printed = capsys.readouterr().out
  assert 'skipped corrupt_image: 1' in printed and 'skipped missing_file: 1' in printed
  expected_skips = {'missing_file': 1, 'corrupt_image': 1, 'non_utf8_caption': 1,
                    'empty_caption': 2 if fmt == 'jsonl' else 1}
  if fmt == 'jsonl':
    expected_skips['malformed_line'] = 1
  assert dict(report.skipped) == expected_skips
  assert report.written == {'train': 3, 'validation': 0}
  assert report.captions_written == 4
  got, _ = read_back(data_dir, 'my_data')
  assert {k: v[1] for k, v in got.items()} == EXPECTED
  np.testing.assert_array_equal(got['a.png'][0], arrays['a.png'])
  np.testing.assert_array_equal(got['c.png'][0], np.repeat(arrays['c.png'][..., None], 3, axis=-1))
  # Re-running replaces the import with identical content; no leftovers.
  again = folder.import_folder(str(images), 'my_data', data_dir, str(captions), val_fraction=0)
  assert dict(again.skipped) == expected_skips
  got_again, _ = read_back(data_dir, 'my_data')
  assert got_again.keys() == got.keys()
  for k in got:
    np.testing.assert_array_equal(got[k][0], got_again[k][0])
    assert got[k][1] == got_again[k][1]
  assert sorted(os.listdir(data_dir)) == ['.my_data.lock', 'my_data']
  assert os.listdir(os.path.join(data_dir, 'my_data')) == ['1.0.0']


def test_reads_tfds_image_features(image_folder, tmp_path):
  """A data set whose image is a tfds.features.Image (as `tfds build` writes them; same bytes on disk)."""
  images, arrays = image_folder
  captions = tmp_path / 'captions.jsonl'
  write_jsonl(captions)
  data_dir = str(tmp_path / 'tfds')
  path = folder.import_folder(str(images), 'pics', data_dir, str(captions), val_fraction=0).path
  reference = tfds.builder_from_directory(path).as_data_source('train')
  ours, _ = sources.load_source('pics', 'train', data_dir)
  for i in range(len(ours)):  # Fast decoding of the folder features equals TFDS's.
    assert ours[i] == reference[i]
  tfds.features.FeaturesDict({'image': tfds.features.Image(), 'filename': tfds.features.Text(),
                              'captions': tfds.features.Sequence(tfds.features.Text())}).save_config(path)
  source, info = sources.load_source('pics', 'train', data_dir)
  assert isinstance(info.features['image'], tfds.features.Image)
  got = {source[i]['filename'].decode(): sources.decode_image(source[i]) for i in range(len(source))}
  np.testing.assert_array_equal(got['a.png'], arrays['a.png'])
  assert got['c.png'].shape == (12, 10, 3)


def test_folder_import_resize_and_validation(image_folder, tmp_path):
  images, _ = image_folder
  captions = tmp_path / 'captions.jsonl'
  write_jsonl(captions)
  data_dir = str(tmp_path / 'tfds')
  report = folder.import_folder(str(images), 'small', data_dir, str(captions), val_fraction=0.5, image_size=8)
  assert sum(report.written.values()) == 3
  sizes = {}
  for split, n in report.written.items():
    if n:
      got, _ = read_back(data_dir, 'small', split)
      sizes.update({k: v[0].shape for k, v in got.items()})
  assert sizes == {'a.png': (8, 12, 3), 'sub/b.jpg': (8, 8, 3), 'c.png': (10, 8, 3)}  # Shorter side 8.


def test_folder_import_errors(image_folder, tmp_path):
  images, _ = image_folder
  with pytest.raises(ValueError, match='either --captions'):
    folder.import_folder(str(images), 'x', str(tmp_path))
  with pytest.raises(ValueError, match='lower-case'):
    folder.import_folder(str(images), 'My Data', str(tmp_path), captions='c.jsonl')
  bad = tmp_path / 'c.jsonl'
  bad.write_text(json.dumps({'image': 'corrupt.jpg', 'caption': 'x'}) + '\n')
  with pytest.raises(ValueError, match='no usable image'):
    folder.import_folder(str(images), 'x', str(tmp_path / 'd'), captions=str(bad))
  assert not os.path.exists(tmp_path / 'd' / 'x')


def write_images(root, counts: dict, rng, fmt='png'):
  """root/<class>/<i>.<fmt>: counts[class] small random images per class."""
  for cls, n in counts.items():
    (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root / cls / f'{i}.{fmt}')


def read_labels(data_dir, name):
  """{split: {filename: class name}} of a class-folder import, and the class names."""
  out = {}
  for split in ('train', 'validation', 'test'):
    try:
      source, info = sources.load_source(name, split, data_dir)
    except ValueError:  # Empty splits are not written.
      continue
    names = sources.class_names(info, 'label')
    out[split] = {source[i]['filename'].decode(): names[source[i]['label']] for i in range(len(source))}
  return out, names


def test_split_counts():
  fractions = {'test': 0.2, 'train': 0.7, 'validation': 0.1}
  assert folder.split_counts(1, fractions) == {'test': 1, 'train': 0, 'validation': 0}
  assert folder.split_counts(2, fractions) == {'test': 1, 'train': 1, 'validation': 0}
  assert folder.split_counts(3, fractions) == {'test': 1, 'train': 1, 'validation': 1}  # At least one each.
  assert folder.split_counts(10, fractions) == {'test': 2, 'train': 7, 'validation': 1}
  assert folder.split_counts(7, fractions) == {'test': 1, 'train': 5, 'validation': 1}  # 1.4 -> 1, 0.7 -> 1.
  assert folder.split_counts(5, {'test': 1.0, 'train': 0.0, 'validation': 0.0}) == {
      'test': 5, 'train': 0, 'validation': 0}
  assert folder.split_counts(3, {'test': 0.45, 'validation': 0.45, 'train': 0.1}) == {
      'test': 1, 'validation': 1, 'train': 1}


def test_stratified_split_is_seeded_and_complete():
  labels = np.repeat([0, 1, 2], [10, 20, 7])
  fractions = {'test': 0.2, 'train': 0.7, 'validation': 0.1}
  parts = folder.stratified_split(labels, fractions, seed=0)
  assert sorted(np.concatenate(list(parts.values()))) == list(range(len(labels)))  # Every index once.
  for cls, n in enumerate([10, 20, 7]):
    assert {s: int(np.sum(labels[p] == cls)) for s, p in parts.items()} == folder.split_counts(n, fractions)
  again = folder.stratified_split(labels, fractions, seed=0)
  other = folder.stratified_split(labels, fractions, seed=1)
  assert all(np.array_equal(parts[s], again[s]) for s in parts)
  assert not np.array_equal(parts['test'], other['test'])


def test_class_subdir_import(tmp_path):
  """Without split folders: a stratified hold-out of the readable images; tiny classes go to test first."""
  rng = np.random.default_rng(1)
  root = tmp_path / 'classes'
  write_images(root, {'dog': 2, 'cat': 3, 'sea_lion': 1}, rng)
  (root / 'cat' / 'broken.png').write_bytes(b'\x89PNG broken')
  (root / 'cat' / 'notes.txt').write_text('not an image')
  (root / 'empty').mkdir()
  data_dir = str(tmp_path / 'tfds')
  report = folder.main(['--images', str(root), '--classes_from_subdirs', '--name', 'my_folder',
                        '--data_dir', data_dir])
  # cat: 3 readable images, one per split; dog: test and train; sea_lion: test.
  assert report.written == {'train': 2, 'validation': 1, 'test': 3} and dict(report.skipped) == {'corrupt_image': 1}
  got, names = read_labels(data_dir, 'my_folder')
  assert names == ['cat', 'dog', 'sea_lion']
  assert {s: sorted(v.values()) for s, v in got.items()} == {
      'train': ['cat', 'dog'], 'validation': ['cat'], 'test': ['cat', 'dog', 'sea_lion']}
  labels = {f: c for split in got.values() for f, c in split.items()}
  assert labels == {f'{c}/{i}.png': c for c, n in (('dog', 2), ('cat', 3), ('sea_lion', 1)) for i in range(n)}
  source, info = sources.load_source('my_folder', 'test', data_dir)
  assert sources.decode_image(source[0]).shape == (10, 10, 3)
  with pytest.raises(ValueError, match='classnames_files'):
    sources.class_names(info, 'filename')


def test_class_folder_holdout_sizes_stratification_and_seed(tmp_path, capsys):
  rng = np.random.default_rng(2)
  root = tmp_path / 'photos'
  counts = {'owl': 10, 'bat': 20, 'elk': 7}
  write_images(root, counts, rng, fmt='jpg')
  data_dir = str(tmp_path / 'tfds')

  def run(name, *flags):
    folder.main(['--images', str(root), '--classes_from_subdirs', '--name', name, '--data_dir', data_dir, *flags])
    return read_labels(data_dir, name)

  got, names = run('a')
  assert names == ['bat', 'elk', 'owl']
  fractions = {'test': folder.CLASSES_TEST_FRACTION, 'validation': folder.CLASSES_VAL_FRACTION}
  fractions['train'] = 1 - sum(fractions.values())
  for cls, n in counts.items():
    per_split = {s: sum(c == cls for c in got[s].values()) for s in got}
    assert per_split == {s: c for s, c in folder.split_counts(n, fractions).items()}, cls
  files = [f for split in got.values() for f in split]
  assert sorted(files) == sorted(f'{c}/{i}.jpg' for c, n in counts.items() for i in range(n))  # Disjoint, complete.
  assert all(f.split('/')[0] == c for split in got.values() for f, c in split.items())
  printed = capsys.readouterr().out
  assert 'splits: held out per class (--val_fraction 0.1, --test_fraction 0.2, --seed 0)' in printed
  assert "linear probe: " in printed and "--config.evals.linear_probe.datasets=\"('a',)\"" in printed
  assert run('b')[0] == got  # Deterministic.
  other, _ = run('c', '--seed', '1')
  assert other['test'] != got['test']
  assert {s: len(v) for s, v in other.items()} == {s: len(v) for s, v in got.items()}
  only_test, _ = run('d', '--val_fraction', '0', '--test_fraction', '1')
  assert list(only_test) == ['test'] and len(only_test['test']) == sum(counts.values())


def test_class_folder_split_folders(tmp_path):
  """DIR/train, DIR/val, DIR/test: the splits as they are; classes the sorted union of the folder names."""
  rng = np.random.default_rng(3)
  root = tmp_path / 'imagenet_style'
  write_images(root / 'train', {'ant': 3, 'bee': 2}, rng)
  write_images(root / 'val', {'ant': 1, 'bee': 1}, rng)
  write_images(root / 'test', {'ant': 2, 'cow': 1}, rng, fmt='jpg')
  data_dir = str(tmp_path / 'tfds')
  report = folder.import_folder(str(root), 'bugs', data_dir, classes_from_subdirs=True)
  assert report.written == {'train': 5, 'validation': 2, 'test': 3}
  assert report.splits_from == 'the folders train/, val/, test/'
  got, names = read_labels(data_dir, 'bugs')
  assert names == ['ant', 'bee', 'cow']
  assert got == {
      'train': {'train/ant/0.png': 'ant', 'train/ant/1.png': 'ant', 'train/ant/2.png': 'ant',
                'train/bee/0.png': 'bee', 'train/bee/1.png': 'bee'},
      'validation': {'val/ant/0.png': 'ant', 'val/bee/0.png': 'bee'},
      'test': {'test/ant/0.jpg': 'ant', 'test/ant/1.jpg': 'ant', 'test/cow/0.jpg': 'cow'}}
  with pytest.raises(ValueError, match='give the splits; drop --val_fraction'):
    folder.import_folder(str(root), 'bugs', data_dir, classes_from_subdirs=True, test_fraction=0.3)
  (root / 'validation').mkdir()
  with pytest.raises(ValueError, match='both val/ and validation/'):
    folder.import_folder(str(root), 'bugs', data_dir, classes_from_subdirs=True)
  (root / 'validation').rmdir()
  write_images(root, {'dog': 1}, rng)
  with pytest.raises(ValueError, match=r"split folders \['test', 'train', 'val'\] next to other folders \['dog'\]"):
    folder.import_folder(str(root), 'bugs', data_dir, classes_from_subdirs=True)


def test_class_folder_fraction_errors(tmp_path):
  root = tmp_path / 'c'
  write_images(root, {'a': 1}, np.random.default_rng(0))
  for kwargs, match in (({'val_fraction': 0.5, 'test_fraction': 0.6}, 'exceeds 1'),
                        ({'test_fraction': -0.1}, r'--test_fraction=-0.1 must be in \[0, 1\]'),
                        ({'seed': -1}, '--seed=-1')):
    with pytest.raises(ValueError, match=match):
      folder.import_folder(str(root), 'c', str(tmp_path / 'd'), classes_from_subdirs=True, **kwargs)
  with pytest.raises(ValueError, match='--test_fraction applies to --classes_from_subdirs'):
    folder.import_folder(str(root), 'c', str(tmp_path / 'd'), captions=__file__, test_fraction=0.1)


def test_sixteen_bit_greyscale_png_keeps_its_contrast(tmp_path):
  """A 16-bit greyscale PNG (as scanners and microscopes write them) decodes to its values scaled by 255/65535,
  not clipped to white by PIL's RGB conversion; through the folder import too."""
  ramp = np.linspace(0, 65535, 12 * 10).reshape(12, 10).astype(np.uint16)
  d = tmp_path / 'images'
  d.mkdir()
  Image.fromarray(ramp).save(d / 'scan.png')  # PIL writes a real 16-bit greyscale PNG (mode I;16, bit depth 16).
  with open(d / 'scan.png', 'rb') as f:
    data = f.read()
  assert data[24] == 16 and data[25] == 0  # IHDR: bit depth 16, colour type 0 (greyscale).
  expected = np.repeat(np.rint(ramp * (255 / 65535)).astype(np.uint8)[..., None], 3, axis=-1)
  np.testing.assert_array_equal(sources.decode_image({'image': data}), expected)
  (tmp_path / 'caps.jsonl').write_text(json.dumps({'image': 'scan.png', 'caption': 'a scan'}) + '\n')
  folder.import_folder(str(d), 'scans', str(tmp_path / 'tfds'), str(tmp_path / 'caps.jsonl'), val_fraction=0)
  got, _ = read_back(str(tmp_path / 'tfds'), 'scans')
  np.testing.assert_array_equal(got['scan.png'][0], expected)


def test_interrupted_import_leaves_nothing_behind(image_folder, tmp_path):
  """A killed import leaves its `.NAME.importing-*` folder; the next import of that name removes it."""
  images, _ = image_folder
  data_dir = tmp_path / 'tfds'
  stale = data_dir / '.pics.importing-killed'
  (stale / 'pics').mkdir(parents=True)
  other = data_dir / '.other.importing-running'  # Another name's import: not ours to touch.
  other.mkdir()
  write_jsonl(tmp_path / 'c.jsonl')
  folder.import_folder(str(images), 'pics', str(data_dir), str(tmp_path / 'c.jsonl'))
  assert not stale.exists() and other.exists()
  assert not [n for n in os.listdir(data_dir) if n.startswith('.pics.importing-')]
