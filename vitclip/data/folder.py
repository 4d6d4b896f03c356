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

Classification folders (zero-shot on own data: config.evals.zeroshot.datasets=('my_folder',)):

  python -m vitclip.data.folder --images DIR --classes_from_subdirs --name my_folder

  DIR/<class>/**/*.jpg (ImageNet style); split 'test'; features image, label (ClassLabel over the sorted
  sub-directory names), filename.

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


def _plan_classes(images_dir: str, image_size: int, report: ImportReport) -> tuple[dict, list]:
  classes = sorted(d for d in os.listdir(images_dir)
                   if not d.startswith('.') and os.path.isdir(os.path.join(images_dir, d)))
  entries, names = [], []
  for cls in classes:
    files = []
    for root, dirs, filenames in os.walk(os.path.join(images_dir, cls)):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      files += [os.path.relpath(os.path.join(root, f), images_dir) for f in filenames
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
    if files:
      names.append(cls)
      entries += [(f, len(names) - 1) for f in sorted(files)]
  if not names:
    raise ValueError(f'--images={images_dir!r} has no sub-directory with images ({", ".join(IMAGE_EXTENSIONS)});'
                     ' --classes_from_subdirs expects DIR/<class>/<image files>.')
  report.class_names = names
  return {'test': _verify(entries, images_dir, image_size, report)}, names


def import_folder(images: str, name: str, data_dir: str, captions: str = '', val_fraction: float = 0.02,
                  image_size: int = 0, classes_from_subdirs: bool = False) -> ImportReport:
  """Imports a folder (see the module docstring) into `data_dir/name/VERSION`; returns the report.

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
  if not 0 <= val_fraction < 1:
    raise ValueError(f'--val_fraction={val_fraction} must be in [0, 1).')
  images, data_dir = os.path.abspath(images), os.path.abspath(os.path.expanduser(data_dir))
  report = ImportReport()
  if classes_from_subdirs:
    splits, class_names = _plan_classes(images, image_size, report)
    source = f'class folders in {images}'
  else:
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
                      help='DIR/<class>/*.jpg -> a "test" split with a "label" ClassLabel feature')
  parser.add_argument('--name', required=True, help='data set name (config.data.name)')
  parser.add_argument('--data_dir', default=os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'),
                      help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  parser.add_argument('--val_fraction', type=float, default=0.02, help='images held out as "validation"')
  parser.add_argument('--image_size', type=int, default=0,
                      help='> 0: resize so the shorter side is at most this, store JPEG; 0: store files as-is')
  args = parser.parse_args(argv)
  try:
    report = import_folder(args.images, args.name, args.data_dir, args.captions, args.val_fraction,
                           args.image_size, args.classes_from_subdirs)
  except (ValueError, FileNotFoundError) as e:
    parser.exit(2, f'error: {e}\n')
  print(report.summary())
  data_dir = os.path.dirname(os.path.dirname(report.path))
  if args.classes_from_subdirs:
    print(f'zero-shot: --config.data.data_dir={data_dir} --config.evals.zeroshot.datasets="(\'{args.name}\',)" '
          '--config.evals.zeroshot.templates=clip80')
  else:
    print(f'train: python train.py --config configs/shapes.py:data={args.name} --config.data.data_dir={data_dir} '
          '--workdir DIR   (or configs/clip_b16.py:data=NAME, configs/siglip_b16.py:data=NAME)')
  return report


if __name__ == '__main__':
  main(sys.argv[1:])
