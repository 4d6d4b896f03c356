"""Import your own images as a TFDS array_record data set, usable by name (config.data.name=NAME).

Image-text pairs (training, retrieval):

  python -m vitclip.data.folder --images DIR --captions DIR/captions.jsonl --name my_data \
      [--data_dir D] [--val_fraction 0.02] [--image_size 0]

  captions.jsonl: one JSON object per line, {"image": "rel/path.jpg", "caption": "..."} or
                  {"image": "rel/path.jpg", "captions": ["...", "..."]};
  captions.csv / .tsv: a header with columns `image` and `caption`.
  Image paths are relative to --images (absolute paths work too). Several lines/rows per image are grouped.
  Splits 'train' and 'validation' (a stable, path-hashed --val_fraction of the images).
  Features: image (encoded bytes), captions (sequence of text), filename (text).

Classification folders (zero-shot and linear probes on own data, config.evals.zeroshot.datasets=('my_folder',),
config.evals.linear_probe.datasets=('my_folder',)):

  python -m vitclip.data.folder --images DIR --classes_from_subdirs --name my_folder \
      [--val_fraction 0.1] [--test_fraction 0.2] [--seed 0]

  DIR/<class>/**/*.jpg (ImageNet style): splits 'train', 'validation' and 'test' held out per class (stratified):
  of a class's n images, round(n * fraction) go to validation and to test, at least one each when the class has
  3 or more images, the rest to train; a class with 1 image goes to test, one with 2 to test and train. The
  images are shuffled per class with a generator seeded by (--seed, class index), so a seed gives the same
  splits on every machine. --test_fraction 1 --val_fraction 0 puts every image in 'test' (zero-shot only).
  DIR/train/<class>/..., DIR/val/<class>/... (or DIR/validation/), DIR/test/<class>/...: the splits are those
  folders, as they are (any of them may be missing). Classes: the sorted union of the sub-directory names that
  hold images. Features image, label (ClassLabel over the class names), filename.

Every image is decoded with PIL before it is written. Unreadable or corrupt images, missing files, malformed
lines, empty or non-UTF-8 captions are skipped and counted in the printed report, never fatal. With
--image_size > 0 images are resized so that their shorter side is at most that size and stored as JPEG.
The import is deterministic and idempotent: it builds into a temporary directory and then replaces the
previous import of the same name. --data_dir must be local (copy the result to remote storage afterwards).
"""

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import types
from typing import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vitclip.data import builder, generated, sources

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
VERSION = '1.0.0'
CAPTIONS_VAL_FRACTION = 0.02  # Image-caption imports: images held out as 'validation' (retrieval).
CLASSES_VAL_FRACTION = 0.1  # Class folders without split folders: per class, held out as 'validation' ...
CLASSES_TEST_FRACTION = 0.2  # ... and as 'test'.
SPLITS = ('train', 'validation', 'test')  # Of a class-folder import, in this order.
SPLIT_FOLDERS = {'train': 'train', 'val': 'validation', 'validation': 'validation', 'test': 'test'}
JPEG_QUALITY = 95  # When --image_size > 0 re-encodes images.
_NAME_RE = re.compile(r'^[a-z][a-z0-9_]*$')
_MAX_EXAMPLES = 5  # Examples kept per skip reason in the report.

# Skip reasons. Per image: missing_file, corrupt_image, no_valid_caption. Per caption / line: empty_caption,
# non_utf8_caption, malformed_line.
REASONS = ('missing_file', 'corrupt_image', 'no_valid_caption', 'empty_caption', 'non_utf8_caption',
           'malformed_line')


@dataclasses.dataclass
class ImportReport:
  """What an import wrote and skipped."""
  path: str = ''  # The builder dir written.
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  written: dict = dataclasses.field(default_factory=dict)  # split -> number of images
  captions_written: int = 0
  class_names: list = dataclasses.field(default_factory=list)
  splits_from: str = ''  # How class-folder splits were made.

  def skip(self, reason: str, example: str):
    assert reason in REASONS, reason
    self.skipped[reason] += 1
    if len(self.examples[reason]) < _MAX_EXAMPLES:
      self.examples[reason].append(example)

  def summary(self) -> str:
    lines = [f'wrote {self.path}']
    lines += [f'  {split}: {n} images' for split, n in self.written.items()]
    if self.captions_written:
      lines.append(f'  captions: {self.captions_written}')
    if self.class_names:
      lines.append(f'  classes ({len(self.class_names)}): {", ".join(self.class_names[:20])}'
                   + (' ...' if len(self.class_names) > 20 else ''))
    if self.splits_from:
      lines.append(f'  splits: {self.splits_from}')
    if not self.skipped:
      lines.append('skipped: nothing')
    for reason in REASONS:
      if self.skipped[reason]:
        lines.append(f'skipped {reason}: {self.skipped[reason]}  e.g. ' + '; '.join(self.examples[reason]))
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------- caption files


def _check_text(text, where: str, report: ImportReport) -> str | None:
  """A stripped caption, or None (counted) when it is not a non-empty UTF-8 string."""
  if not isinstance(text, str):
    report.skip('malformed_line', f'{where}: caption is not a string')
    return None
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:  # Undecodable bytes survive reading as lone surrogates.
    report.skip('non_utf8_caption', where)
    return None
  text = text.strip()
  if not text:
    report.skip('empty_caption', where)
    return None
  return text


def _rows_jsonl(data: bytes, name: str, report: ImportReport) -> Iterator[tuple[str, list, str]]:
  for lineno, line in enumerate(data.split(b'\n'), 1):
    where = f'{name}:{lineno}'
    if not line.strip():
      continue
    try:
      text = line.decode('utf-8-sig' if lineno == 1 else 'utf-8')
    except UnicodeDecodeError:
      report.skip('non_utf8_caption', where)
      continue
    try:
      row = json.loads(text)
    except json.JSONDecodeError as e:
      report.skip('malformed_line', f'{where}: {e.msg}')
      continue
    if not isinstance(row, dict) or not isinstance(row.get('image'), str) or not (
        'caption' in row or isinstance(row.get('captions'), list)):
      report.skip('malformed_line', f'{where}: needs "image" and "caption" or "captions"')
      continue
    yield row['image'], row['captions'] if 'captions' in row else [row['caption']], where


def _rows_csv(data: bytes, name: str, delimiter: str, report: ImportReport) -> Iterator[tuple[str, list, str]]:
  text = data.decode('utf-8-sig', errors='surrogateescape')  # Bad bytes -> surrogates, caught per row.
  reader = csv.DictReader(io.StringIO(text, newline=''), delimiter=delimiter)
  if not reader.fieldnames or 'image' not in reader.fieldnames or 'caption' not in reader.fieldnames:
    raise ValueError(f'{name}: the header must name the columns "image" and "caption"; found '
                     f'{reader.fieldnames}.')
  for row in reader:
    where = f'{name}:{reader.line_num}'
    image, caption = row.get('image'), row.get('caption')
    if image is None or caption is None:
      report.skip('malformed_line', f'{where}: missing column')
      continue
    try:
      image.encode('utf-8')
    except UnicodeEncodeError:
      report.skip('non_utf8_caption', where)
      continue
    yield image, [caption], where


def read_captions(path: str, report: ImportReport) -> dict[str, list[str]]:
  """Captions file -> {image path as written: [captions]} (order of first appearance, duplicates dropped)."""
  ext = os.path.splitext(path)[1].lower()
  with open(path, 'rb') as f:
    data = f.read()
  name = os.path.basename(path)
  if ext in ('.jsonl', '.json', '.ndjson'):
    rows = _rows_jsonl(data, name, report)
  elif ext in ('.csv', '.tsv'):
    rows = _rows_csv(data, name, '\t' if ext == '.tsv' else ',', report)
  else:
    raise ValueError(f'--captions={path!r}: unknown format {ext!r}; use .jsonl (one JSON object per line) or '
                     '.csv/.tsv with columns image,caption.')
  grouped: dict[str, list[str]] = {}
  seen_images: dict[str, str] = {}
  for image, captions, where in rows:
    seen_images.setdefault(image, where)
    kept = grouped.setdefault(image, [])
    for i, caption in enumerate(captions):
      text = _check_text(caption, where if len(captions) == 1 else f'{where}[{i}]', report)
      if text is not None and text not in kept:
        kept.append(text)
  for image, where in seen_images.items():
    if not grouped[image]:
      report.skip('no_valid_caption', f'{image} ({where})')
      del grouped[image]
  return grouped


# ------------------------------------------------------------------------------------------------ images


class _BadImage(Exception):
  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


def load_image(path: str, image_size: int) -> bytes:
  """Reads and verifies (full decode) one image; returns the bytes to store: the file itself, or with
  image_size > 0 a JPEG whose shorter side is at most image_size. Raises _BadImage."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise _BadImage('missing_file', path) from None
  except OSError as e:
    raise _BadImage('corrupt_image', f'{path} ({e.strerror})') from None
  try:
    image = sources.decode_image({'image': data})
  except sources.BadRecordError as e:
    raise _BadImage('corrupt_image', f'{path} ({e})') from None
  if image_size <= 0:
    return data
  pil = Image.fromarray(image)
  scale = image_size / min(pil.size)
  if scale < 1:
    pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BICUBIC)
  out = io.BytesIO()
  pil.save(out, format='JPEG', quality=JPEG_QUALITY)
  return out.getvalue()


def _ordered_map(fn: Callable, items: list, workers: int | None = None, chunk: int = 256) -> Iterator:
  """fn over items in threads (PIL releases the GIL while decoding), results in order, bounded memory."""
  workers = workers or min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(items), chunk):
      yield from pool.map(fn, items[start:start + chunk])


def _verify(entries: list, images_dir: str, image_size: int, report: ImportReport) -> list:
  """Keeps the entries (relpath, payload) whose image decodes; counts the rest."""

  def check(entry):
    try:
      load_image(os.path.join(images_dir, entry[0]), image_size)
      return None
    except _BadImage as e:
      return e

  kept = []
  for entry, error in zip(entries, _ordered_map(check, entries)):
    if error is None:
      kept.append(entry)
    else:
      report.skip(error.reason, str(error))
  return kept


def _is_val(relpath: str, fraction: float) -> bool:
  """Stable split assignment: the same image always lands in the same split, whatever else is imported."""
  digest = hashlib.sha256(relpath.encode('utf-8', errors='surrogateescape')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64 < fraction


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
  """How many of one class's n examples each split gets.

  fractions: {split: fraction >= 0}, summing to 1, in priority order. Every split with a positive fraction gets
  round(n * fraction) examples, and at least one when n is at least the number of such splits; the split with
  the largest fraction (the first of equals) takes what rounding leaves. With fewer examples than such splits,
  one each goes to the first n of them in the order of `fractions`.
  """
  active = [split for split, f in fractions.items() if f > 0]
  counts = dict.fromkeys(fractions, 0)
  if n < len(active):
    counts.update(dict.fromkeys(active[:n], 1))
    return counts
  for split in active:
    counts[split] = max(1, math.floor(n * fractions[split] + 0.5))
  largest = max(active, key=fractions.get)
  counts[largest] = n - sum(c for split, c in counts.items() if split != largest)
  while counts[largest] < 1:  # Every split's minimum of one took more than the small splits' share.
    donor = max((split for split in active if split != largest), key=counts.get)
    counts[donor] -= 1
    counts[largest] += 1
  return counts


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
  """Splits examples per class: `split_counts` of each class, after shuffling the class's examples with a
  generator seeded by (seed, class), so the same labels and seed give the same split on any machine, and a
  class's split does not depend on the other classes.

  Args:
    labels: int [N] class of each example, >= 0.
    fractions: {split: fraction} as in `split_counts` (priority order).
    seed: int >= 0.
  Returns:
    {split: int64 [n_split] sorted indices into labels}; together every index once.
  """
  labels = np.asarray(labels)
  parts = {split: [] for split in fractions}
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    members = members[np.random.default_rng([seed, int(cls)]).permutation(len(members))]
    start = 0
    for split, count in split_counts(len(members), fractions).items():
      parts[split].append(members[start:start + count])
      start += count
  return {split: np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64)
          for split, p in parts.items()}


# ----------------------------------------------------------------------------------------- TFDS builder


class FolderBuilder(builder.LocalBuilder, skip_registration=True):
  """Writes planned examples: `splits` maps split -> [(relpath, payload)], payload a caption list or a label.
  Use `FolderBuilder.named(name)` to get a builder class for a data set name."""
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): 'Imported with vitclip.data.folder.'}

  def __init__(self, *, images_dir: str, splits: dict, class_names: list | None, image_size: int,
               description: str, **kwargs):
    self._images_dir = images_dir
    self._splits = splits
    self._class_names = class_names
    self._image_size = image_size
    self._description = description
    super().__init__(**kwargs)

  @classmethod
  def named(cls, name: str) -> type:
    return types.new_class(f'Folder_{name}', (cls,), {'skip_registration': True},
                           lambda ns: ns.update(name=name, __module__=__name__))

  def _info(self) -> tfds.core.DatasetInfo:
    features = {'image': tfds.features.Tensor(shape=(), dtype=np.object_),  # Encoded bytes (PNG, JPEG, ...).
                'filename': tfds.features.Text()}
    if self._class_names is None:
      features['captions'] = tfds.features.Sequence(tfds.features.Text())
    else:
      features['label'] = tfds.features.ClassLabel(names=self._class_names)
    return tfds.core.DatasetInfo(builder=self, description=self._description,
                                 features=tfds.features.FeaturesDict(features), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(entries) for split, entries in self._splits.items() if entries}

  def _generate_examples(self, entries):
    load = lambda entry: load_image(os.path.join(self._images_dir, entry[0]), self._image_size)
    for index, (entry, data) in enumerate(zip(entries, _ordered_map(load, entries))):
      relpath, payload = entry
      example = {'image': data, 'filename': relpath}
      example['label' if self._class_names is not None else 'captions'] = payload
      yield index, example


# ------------------------------------------------------------------------------------------------ import


def _plan_captions(images_dir: str, captions_path: str, val_fraction: float, image_size: int,
                   report: ImportReport) -> dict:
  merged: dict[str, list] = {}
  for image, captions in read_captions(captions_path, report).items():  # 'a/x.jpg' and './a/x.jpg' are one.
    kept = merged.setdefault(os.path.normpath(image), [])
    kept += [c for c in captions if c not in kept]
  entries = _verify(sorted(merged.items()), images_dir, image_size, report)
  report.captions_written = sum(len(c) for _, c in entries)
  return {'train': [e for e in entries if not _is_val(e[0], val_fraction)],
          'validation': [e for e in entries if _is_val(e[0], val_fraction)]}


def _class_files(images_dir: str, under: str = '') -> dict[str, list[str]]:
  """{class: sorted image paths relative to images_dir} for the sub-directories of images_dir/under that hold
  images (at any depth); hidden files and folders are ignored."""
  root = os.path.join(images_dir, under)
  out = {}
  for cls in sorted(d for d in os.listdir(root) if not d.startswith('.') and os.path.isdir(os.path.join(root, d))):
    files = []
    for walk_root, dirs, filenames in os.walk(os.path.join(root, cls)):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      files += [os.path.relpath(os.path.join(walk_root, f), images_dir) for f in filenames
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
    if files:
      out[cls] = sorted(files)
  return out


def _split_folders(images_dir: str) -> dict[str, str]:
  """{split: folder} when images_dir holds split folders (train/, val/ or validation/, test/), else {}.

  Raises ValueError when split folders sit next to other folders (class folders at two levels) or when both
  val/ and validation/ exist.
  """
  folders = [d for d in os.listdir(images_dir)
             if not d.startswith('.') and os.path.isdir(os.path.join(images_dir, d))]
  found = sorted(d for d in folders if d in SPLIT_FOLDERS)
  if not found:
    return {}
  others = sorted(set(folders) - set(found))
  if others:
    raise ValueError(f'--images={images_dir!r} has split folders {found} next to other folders {others[:5]}; put '
                     'every class folder under train/, val/ or test/ (DIR/train/<class>/...), or use class '
                     'folders only (DIR/<class>/...).')
  if 'val' in found and 'validation' in found:
    raise ValueError(f'--images={images_dir!r} has both val/ and validation/; keep one of them.')
  return {SPLIT_FOLDERS[d]: d for d in found}


def _plan_classes(images_dir: str, val_fraction: float | None, test_fraction: float | None, seed: int,
                  image_size: int, report: ImportReport) -> tuple[dict, list]:
  """{split: [(relpath, label)]} and the class names, from split folders or a stratified hold-out (module
  docstring). Images are verified before the hold-out, so its counts are of readable images."""
  layout = _split_folders(images_dir)
  if layout and (val_fraction is not None or test_fraction is not None):
    raise ValueError(f'--images={images_dir!r} has split folders {sorted(layout.values())}, which give the '
                     'splits; drop --val_fraction / --test_fraction.')
  per_split = {split: _class_files(images_dir, folder) for split, folder in layout.items()} if layout else {
      '': _class_files(images_dir)}
  names = sorted(set().union(*per_split.values()))
  if not names:
    where = 'train/, val/ or test/' if layout else '--images'
    raise ValueError(f'--images={images_dir!r}: no class folder with images ({", ".join(IMAGE_EXTENSIONS)}) under '
                     f'{where}; --classes_from_subdirs expects DIR/<class>/<image files> or '
                     'DIR/train/<class>/<image files>.')
  label = {name: i for i, name in enumerate(names)}
  planned = {split: _verify([(f, label[cls]) for cls, files in by_class.items() for f in files], images_dir,
                            image_size, report) for split, by_class in per_split.items()}
  report.class_names = names
  if layout:
    report.splits_from = 'the folders ' + ', '.join(f'{layout[s]}/' for s in SPLITS if s in layout)
    return {split: planned[split] for split in SPLITS if split in planned}, names
  val = CLASSES_VAL_FRACTION if val_fraction is None else val_fraction
  test = CLASSES_TEST_FRACTION if test_fraction is None else test_fraction
  entries = planned['']
  train = max(0.0, round(1 - val - test, 9))  # 1 - 0.8 - 0.2 is not 0 in floats; a positive fraction gets >= 1.
  parts = stratified_split(np.array([lab for _, lab in entries], np.int64),
                           {'test': test, 'train': train, 'validation': val}, seed)
  report.splits_from = f'held out per class (--val_fraction {val}, --test_fraction {test}, --seed {seed})'
  return {split: [entries[i] for i in parts[split]] for split in SPLITS}, names


def _check_fractions(val_fraction: float | None, test_fraction: float | None, classes: bool):
  """Captions: validation in [0, 1). Class folders: each in [0, 1], together at most 1 (defaults for None)."""
  if not classes:
    if val_fraction is not None and not 0 <= val_fraction < 1:
      raise ValueError(f'--val_fraction={val_fraction} must be in [0, 1).')
    return
  for flag, value in (('--val_fraction', val_fraction), ('--test_fraction', test_fraction)):
    if value is not None and not 0 <= value <= 1:
      raise ValueError(f'{flag}={value} must be in [0, 1].')
  val = CLASSES_VAL_FRACTION if val_fraction is None else val_fraction
  test = CLASSES_TEST_FRACTION if test_fraction is None else test_fraction
  if val + test > 1:
    raise ValueError(f'--val_fraction {val} + --test_fraction {test} exceeds 1; the rest of each class is train.')


def import_folder(images: str, name: str, data_dir: str, captions: str = '', val_fraction: float | None = None,
                  image_size: int = 0, classes_from_subdirs: bool = False, test_fraction: float | None = None,
                  seed: int = 0) -> ImportReport:
  """Imports a folder (see the module docstring) into `data_dir/name/VERSION`; returns the report.

  val_fraction None: CAPTIONS_VAL_FRACTION for captions, CLASSES_VAL_FRACTION for class folders.
  test_fraction (None: CLASSES_TEST_FRACTION) and seed apply to class folders without split folders.

  Raises ValueError / FileNotFoundError for unusable arguments or when no image survives.
  """
  if not _NAME_RE.match(name):
    raise ValueError(f'--name={name!r}: use lower-case letters, digits and underscores, starting with a letter.')
  if name in generated.GENERATED:
    raise ValueError(f'--name={name!r} is reserved for the generated data set; choose another name.')
  if not os.path.isdir(images):
    raise FileNotFoundError(f'--images={images!r} is not a directory.')
  if classes_from_subdirs == bool(captions):
    raise ValueError('give either --captions FILE (image-text pairs) or --classes_from_subdirs (class folders).')
  if captions and not os.path.isfile(captions):
    raise FileNotFoundError(f'--captions={captions!r} does not exist.')
  if captions and test_fraction is not None:
    raise ValueError('--test_fraction applies to --classes_from_subdirs; an image-caption import has the splits '
                     'train and validation (--val_fraction).')
  _check_fractions(val_fraction, test_fraction, classes_from_subdirs)
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f'--seed={seed!r} must be an integer >= 0.')
  images, data_dir = os.path.abspath(images), os.path.abspath(os.path.expanduser(data_dir))
  report = ImportReport()
  if classes_from_subdirs:
    splits, class_names = _plan_classes(images, val_fraction, test_fraction, seed, image_size, report)
    source = f'class folders in {images}, splits {report.splits_from}'
  else:
    val_fraction = CAPTIONS_VAL_FRACTION if val_fraction is None else val_fraction
    splits, class_names = _plan_captions(images, captions, val_fraction, image_size, report), None
    source = f'images in {images} with captions from {os.path.abspath(captions)}'
  if not any(splits.values()):
    raise ValueError(f'no usable image in {images}; nothing was written.\n{report.summary()}')
  report.written = {split: len(entries) for split, entries in splits.items()}
  os.makedirs(data_dir, exist_ok=True)
  final = os.path.join(data_dir, name, VERSION)
  with builder.file_lock(os.path.join(data_dir, f'.{name}.lock')):
    for stale in os.listdir(data_dir):  # Left by an import that was killed; nobody else imports (we hold the lock).
      if stale.startswith(f'.{name}.importing-'):
        shutil.rmtree(os.path.join(data_dir, stale), ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f'.{name}.importing-', dir=data_dir)  # Same file system: renames are atomic.
    try:
      folder_builder = FolderBuilder.named(name)(
          images_dir=images, splits=splits, class_names=class_names, image_size=image_size,
          description=f'Imported with vitclip.data.folder from {source} (image_size={image_size}).',
          data_dir=tmp, file_format='array_record')
      folder_builder.build()
      os.makedirs(os.path.dirname(final), exist_ok=True)
      old = os.path.join(tmp, 'previous')
      if os.path.exists(final):
        os.rename(final, old)
      os.rename(os.path.join(tmp, name, VERSION), final)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  report.path = final
  return report


def main(argv: Iterable[str] | None = None) -> ImportReport:
  parser = argparse.ArgumentParser(prog='python -m vitclip.data.folder', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--images', required=True, help='folder of images (or of class sub-folders)')
  parser.add_argument('--captions', default='', help='captions file: .jsonl or .csv/.tsv (columns image,caption)')
  parser.add_argument('--classes_from_subdirs', action='store_true',
                      help='DIR/<class>/*.jpg or DIR/{train,val,test}/<class>/*.jpg -> splits train, validation, '
                      'test with a "label" ClassLabel feature')
  parser.add_argument('--name', required=True, help='data set name (config.data.name)')
  parser.add_argument('--data_dir', default=os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'),
                      help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  parser.add_argument('--val_fraction', type=float, default=None,
                      help=f'images held out as "validation" (default {CAPTIONS_VAL_FRACTION}; class folders: per '
                      f'class, default {CLASSES_VAL_FRACTION})')
  parser.add_argument('--test_fraction', type=float, default=None,
                      help=f'class folders: per class, images held out as "test" (default {CLASSES_TEST_FRACTION})')
  parser.add_argument('--seed', type=int, default=0, help='class folders: seed of the per-class hold-out')
  parser.add_argument('--image_size', type=int, default=0,
                      help='> 0: resize so the shorter side is at most this, store JPEG; 0: store files as-is')
  args = parser.parse_args(argv)
  try:
    report = import_folder(args.images, args.name, args.data_dir, args.captions, args.val_fraction,
                           args.image_size, args.classes_from_subdirs, args.test_fraction, args.seed)
  except (ValueError, FileNotFoundError) as e:
    parser.exit(2, f'error: {e}\n')
  print(report.summary())
  data_dir = os.path.dirname(os.path.dirname(report.path))
  if args.classes_from_subdirs:
    written = {split for split, n in report.written.items() if n}
    if 'test' in written:
      print(f'zero-shot: --config.data.data_dir={data_dir} --config.evals.zeroshot.datasets="(\'{args.name}\',)" '
            '--config.evals.zeroshot.templates=clip80')
    if {'train', 'test'} <= written:
      print(f'linear probe: --config.data.data_dir={data_dir} --config.evals.names="(\'linear_probe\',)" '
            f'--config.evals.linear_probe.datasets="(\'{args.name}\',)"')
  else:
    print(f'train: python train.py --config configs/shapes.py:data={args.name} --config.data.data_dir={data_dir} '
          '--workdir DIR   (or configs/clip_b16.py:data=NAME, configs/siglip_b16.py:data=NAME)')
  return report


if __name__ == '__main__':
  main(sys.argv[1:])
