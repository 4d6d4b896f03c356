"""Reading data sets by name: find a prepared TFDS data set under the data dir and decode its records.

Any TFDS data set prepared in the array_record format can be read: built-in ones (`tfds build NAME
--file_format=array_record`), the generated `shapes` world and folders imported with `vitclip.data.folder`.
Reading goes through `tfds.builder_from_directory` (the data set's own `dataset_info.json`), so no builder code
is needed and nothing is ever downloaded.

Names: 'name', 'name/config', 'name:1.2.0' or 'name/config:1.2.0'; without a version the newest prepared one is
used. A data set with several prepared configs needs the config. Generated data sets (`vitclip.data.generated`)
resolve a bare name to the config their settings describe before they get here.
"""

import io
import os
import re
import zlib
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core.data_sources import array_record as array_record_source
from tensorflow_datasets.proto import tf_example_pb2

_VERSION_RE = re.compile(r'^\d+\.\d+\.\d+$')


class BadRecordError(ValueError):
  """A record that cannot be decoded: corrupt image bytes, no usable caption, non-UTF-8 text."""


# ------------------------------------------------------------------------------------------------- names


def data_dir(config) -> str:
  """The TFDS data dir of a run: config.data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(config.data.data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def parse_name(name: str) -> tuple[str, str | None, str | None]:
  """'name[/config][:version]' -> (name, config or None, version or None)."""
  base, _, version = name.partition(':')
  dataset, _, config = base.partition('/')
  if not dataset or '/' in config or (version and not _VERSION_RE.match(version)):
    raise ValueError(f'data set name {name!r} is malformed; use "name", "name/config", "name:1.0.0" or '
                     '"name/config:1.0.0".')
  return dataset, config or None, version or None


def _fix_hint(dataset: str, data_dir: str) -> str:
  return (f'Import your own images with `python -m vitclip.data.folder --images DIR --captions FILE '
          f'--name {dataset} --data_dir {data_dir}` (or --classes_from_subdirs for a classification folder), '
          f'or prepare a TFDS data set with `tfds build {dataset} --data_dir {data_dir} '
          '--file_format=array_record`; or point config.data.data_dir / $TFDS_DATA_DIR at the right directory.')


def is_version_dir(path: epath.Path) -> bool:
  return _VERSION_RE.match(path.name) is not None and (path / 'dataset_info.json').exists()


def _versions(path: epath.Path) -> list[str]:
  if not path.is_dir():
    return []
  found = [p.name for p in path.iterdir() if is_version_dir(p)]
  return sorted(found, key=lambda v: tuple(int(x) for x in v.split('.')))


def _configs(path: epath.Path) -> list[str]:
  if not path.is_dir():
    return []
  return sorted(p.name for p in path.iterdir()
                if not p.name.startswith('.') and not _VERSION_RE.match(p.name) and _versions(p))


def find_builder_dir(name: str, data_dir: str) -> str:
  """The directory `data_dir/name[/config]/version` of a prepared data set (see the module docstring).

  Raises:
    FileNotFoundError: nothing prepared under that name, with the fix in the message.
    ValueError: the name is ambiguous (several configs) or malformed.
  """
  dataset, config, version = parse_name(name)
  root = epath.Path(data_dir) / dataset
  if config is None and not _versions(root):
    configs = _configs(root)
    if len(configs) == 1:
      config = configs[0]
    elif len(configs) > 1:
      raise ValueError(f'data set {dataset!r} has several prepared configs in {root}: {configs}; name one, '
                       f'e.g. "{dataset}/{configs[0]}".')
  path = root / config if config else root
  versions = _versions(path)
  if version is None and versions:
    version = versions[-1]
  if version not in versions:
    what = f'{dataset}' + (f'/{config}' if config else '') + (f':{version}' if version else '')
    found = f' (found versions {versions})' if versions else ''
    raise FileNotFoundError(f'data set {what!r} is not prepared in data dir {data_dir!r}: no '
                            f'{path / (version or "<version>")}/dataset_info.json{found}. '
                            + _fix_hint(dataset, data_dir))
  return os.fspath(path / version)


# ----------------------------------------------------------------------------------------------- sources


class RecordSource:
  """Random access to decoded records: `len(source)`, `source[i]` -> dict of numpy values / bytes.

  Image features stay encoded (decode_image decodes them, so a corrupt image is a BadRecordError of that one
  record, not a crash of the input pipeline); an image feature under another name is exposed as 'image'.
  Records whose top-level features are all simple (Tensor, Scalar, ClassLabel, Text, Image, Sequence(Text)) are
  decoded by `_FastDecoder`, ~20x faster than TFDS's generic NumPy decoding; others go through TFDS.
  Picklable (grain worker processes).
  """

  def __init__(self, info, split: str, image_key: str = 'image'):
    self._image_key = image_key
    self._fast = _FastDecoder.for_features(info.features)
    if self._fast is not None:
      self._source = array_record_source.ArrayRecordDataSource(
          info, split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    else:
      skip = {k: tfds.decode.SkipDecoding() for k, f in info.features.items()
              if isinstance(f, tfds.features.Image)}
      self._source = array_record_source.ArrayRecordDataSource(info, split, decoders=skip or None)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict:
    return self._finish(self._source[index])

  def read_many(self, indices: list[int], features: tuple[str, ...] | None = None) -> list[dict]:
    """[source[i] for i in indices], read in one batched array_record call (a training batch's records).

    features: decode only these of each record's features (those present; 'image' is the image feature
    under any name); None = all. Skipping unused features (masks, boxes) saves most of the decoding.
    """
    if features is not None:
      features = {self._image_key if name == 'image' else name for name in features}
    return [self._finish(record, features) for record in self._source.__getitems__(indices)]

  def _finish(self, record, features=None) -> dict:
    if self._fast is not None:
      record = self._fast(record, features)
    if self._image_key != 'image':
      record = dict(record)
      record['image'] = record.pop(self._image_key)
    return record

  def __repr__(self) -> str:
    return f'RecordSource({self._source!r})'


class _FastDecoder:
  """Serialized tf.train.Example -> the dict TFDS's NumPy decoding gives, for simple top-level features."""

  def __init__(self, fields: dict):
    self._fields = fields  # name -> (kind, dtype, shape)

  @classmethod
  def for_features(cls, features) -> '_FastDecoder | None':
    fields = {}
    for name, f in features.items():
      if isinstance(f, tfds.features.ClassLabel):
        fields[name] = ('int', None, ())
      elif isinstance(f, (tfds.features.Text, tfds.features.Image)):
        fields[name] = ('bytes', None, ())
      elif isinstance(f, tfds.features.Sequence) and isinstance(f.feature, tfds.features.Text):
        fields[name] = ('bytes_list', None, None)
      elif type(f) in (tfds.features.Tensor, tfds.features.Scalar) and None not in f.shape:
        dtype = np.dtype(f.np_dtype)
        encoding = f._encoding.value  # pylint: disable=protected-access
        if dtype.kind in 'OSU':
          kind = 'bytes' if f.shape == () and encoding == 'none' else None
        elif dtype == np.uint64:  # Bit-cast to int64 by TFDS; leave that to TFDS.
          kind = None
        else:
          kind = {'bytes': 'raw', 'zlib': 'zlib', 'none': 'number'}[encoding]
        if kind is None:
          return None
        fields[name] = (kind, dtype, tuple(f.shape))
      else:
        return None
    return cls(fields)

  def __call__(self, serialized: bytes, features: set[str] | None = None) -> dict:
    """features: decode only these (those the record has); None = all."""
    feature = tf_example_pb2.Example.FromString(serialized).features.feature
    out = {}
    for name, (kind, dtype, shape) in self._fields.items():
      if features is not None and name not in features:
        continue
      value = feature[name]
      if kind == 'int':
        out[name] = int(value.int64_list.value[0])
      elif kind == 'bytes':
        out[name] = value.bytes_list.value[0]
      elif kind == 'bytes_list':
        out[name] = list(value.bytes_list.value)
      elif kind in ('raw', 'zlib'):
        data = value.bytes_list.value[0]
        out[name] = np.frombuffer(zlib.decompress(data) if kind == 'zlib' else data, dtype).reshape(shape)
      else:
        values = value.int64_list.value if dtype.kind in 'iub' else value.float_list.value
        array = np.asarray(values).astype(dtype).reshape(shape)
        out[name] = array.item() if shape == () else array
    return out


def _image_key(features, where: str) -> str:
  if 'image' in features:
    return 'image'
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  if len(images) != 1:
    raise ValueError(f'{where} has no feature "image" (features: {sorted(features)}); vitclip needs one image '
                     'feature (a tfds.features.Image, encoded bytes or a uint8 [H, W, 3] tensor).')
  return images[0]


def load_source(name: str, split: str, data_dir: str):
  """Opens one split of a prepared data set for random access.

  Args:
    name: 'name[/config][:version]' (module docstring).
    split: a split name, or any TFDS split expression such as 'train[:1000]'.
    data_dir: the TFDS data dir.
  Returns:
    (source, info): a RecordSource and the tfds.core.DatasetInfo.
  Raises:
    FileNotFoundError / ValueError: with a message naming the data set, the data dir and the fix.
  """
  path = find_builder_dir(name, data_dir)
  builder = tfds.builder_from_directory(path)
  info = builder.info
  base_split = re.split(r'[\[+]', split, maxsplit=1)[0]
  if base_split not in info.splits:
    raise ValueError(f'data set {name!r} in {path} has no split {split!r}; it has {sorted(info.splits)}. '
                     'Pick one of those (e.g. --config.data.train_split or --config.evals.zeroshot.split).')
  formats = [f.value for f in info.available_file_formats()] or [str(info.file_format)]
  if 'array_record' not in formats:
    raise ValueError(f'data set {name!r} in {path} is stored as {formats}, but vitclip reads array_record '
                     f'(random access). Re-prepare it with `tfds build {parse_name(name)[0]} --data_dir '
                     f'{data_dir} --file_format=array_record` (or `tfds convert_format`).')
  image_key = _image_key(info.features, f'data set {name!r} ({path})')
  return RecordSource(info, split, image_key), info


# ------------------------------------------------------------------------------------------------ decode


def decode_image(record) -> np.ndarray:
  """record['image'] -> uint8 [H, W, 3].

  Accepts a uint8 array [H, W, 3] / [H, W, 1] / [H, W] / [H, W, 4] (alpha dropped) or encoded bytes in any
  format PIL reads (PNG, JPEG, ...), converted to RGB. Raises BadRecordError when it cannot be decoded.
  """
  try:
    value = record['image']
  except (KeyError, TypeError, IndexError):
    raise BadRecordError('record has no "image" feature.') from None
  if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
    return _decode_bytes(bytes(value))
  image = np.asarray(value)
  if image.dtype != np.uint8:
    raise BadRecordError(f'image array has dtype {image.dtype}; expected uint8 pixels or encoded bytes.')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
    raise BadRecordError(f'image array has shape {image.shape}; expected [H, W, 3], [H, W, 1] or [H, W].')
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def _decode_bytes(data: bytes) -> np.ndarray:
  if not data:
    raise BadRecordError('image bytes are empty.')
  try:
    with Image.open(io.BytesIO(data)) as pil:
      if pil.mode.startswith('I'):  # 16-bit (or 32-bit int) greyscale: PIL's RGB conversion would clip to 255.
        return _wide_grey_to_rgb(pil)
      pil = pil.convert('RGB')  # Forces a full decode: truncated files fail here.
      return np.asarray(pil, dtype=np.uint8)
  except Exception as e:  # pylint: disable=broad-except  # PIL raises OSError, SyntaxError, ValueError, ...
    raise BadRecordError(f'image bytes cannot be decoded ({type(e).__name__}: {e}).') from None


def _wide_grey_to_rgb(pil) -> np.ndarray:
  """A greyscale image of 16-bit samples (PIL modes 'I;16*', or 'I' as 16-bit PNGs open) -> uint8 [H, W, 3],
  scaled by 255 / 65535 as image viewers show it."""
  grey = np.asarray(pil, dtype=np.float64)
  grey = np.clip(np.rint(grey * (255 / 65535)), 0, 255).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def _text(value) -> str:
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, bytearray, np.bytes_)):
    try:
      return bytes(value).decode('utf-8')
    except UnicodeDecodeError:
      raise BadRecordError(f'caption is not valid UTF-8: {bytes(value)[:60]!r}') from None
  if isinstance(value, str):
    try:
      value.encode('utf-8')
    except UnicodeEncodeError:
      raise BadRecordError(f'caption is not valid UTF-8: {value[:60]!r}') from None
    return value
  raise BadRecordError(f'caption has type {type(value).__name__}; expected text.')


def caption_reader(data_config, info) -> Callable[[dict], list[str]]:
  """record -> its training captions: `decode_captions`, or with `data_config.caption_templates` set, every
  template filled with the class name of the record's `data_config.label_feature` (a ClassLabel of `info`).

  Raises ValueError (naming the field) when the feature is missing or not a ClassLabel.
  """
  if not data_config.caption_templates:
    return decode_captions
  from vitclip import templates as templates_lib  # pylint: disable=g-import-not-at-top  (a leaf module)
  prompts = templates_lib.get_templates(data_config.caption_templates, 'config.data.caption_templates')
  feature = data_config.label_feature
  names = getattr(info.features[feature] if feature in info.features else None, 'names', None)
  if not names:
    raise ValueError(f'config.data.label_feature={feature!r} is not a ClassLabel feature of the data set (it has '
                     f'{sorted(info.features)}); captions from class names need one, e.g. the `label` of a '
                     'class-folder import.')
  captions = [[t.format(name.replace('_', ' ')) for t in prompts] for name in names]

  def read(record) -> list[str]:
    try:
      return captions[int(record[feature])]
    except (KeyError, IndexError, TypeError, ValueError) as e:
      raise BadRecordError(f'record has no valid {feature!r} label ({e}).') from None
  return read


def decode_captions(record) -> list[str]:
  """record['captions'] (a sequence of text, or a dict with 'text' as in coco_captions) or record['caption']
  -> stripped, non-empty strings. Raises BadRecordError when none is left or one is not UTF-8."""
  if 'captions' in record:
    value = record['captions']
    if isinstance(value, dict):
      value = value.get('text', [])
  elif 'caption' in record:
    value = record['caption']
  else:
    raise BadRecordError(f'record has no "captions" or "caption" feature (has {sorted(record)}).')
  if isinstance(value, (str, bytes, bytearray, np.bytes_)) or (
      isinstance(value, np.ndarray) and value.ndim == 0):
    value = [value]
  captions = [t for t in (_text(v).strip() for v in value) if t]
  if not captions:
    raise BadRecordError('record has no non-empty caption.')
  return captions


def class_names(info, feature: str) -> list[str]:
  """Names of the tfds.features.ClassLabel `feature` of a data set (`info`: tfds DatasetInfo)."""
  features = info.features
  if feature not in features:
    raise ValueError(f'data set {info.name!r} has no feature {feature!r}; it has {sorted(features)}.')
  if not isinstance(features[feature], tfds.features.ClassLabel):
    raise ValueError(f'feature {feature!r} of data set {info.name!r} is a {type(features[feature]).__name__}, '
                     'not a ClassLabel, so it has no class names; give them in a text file (one per line) with '
                     f'--config.evals.zeroshot.classnames_files.{info.name}=FILE.')
  return list(features[feature].names)
