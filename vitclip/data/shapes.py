"""The `shapes` world: procedurally generated scenes with captions and masks, built as a TFDS data set.

Each image shows 1-3 non-overlapping objects (one of `SHAPE_NAMES` x `COLOR_NAMES` x `SIZE_NAMES`) at random
positions over a dark, muted, textured grey background. Every example carries:

  image:       uint8 [S, S, 3]
  mask:        uint8 [S, S], 0 = background, pixel of shape k -> k + 1 (semantic segmentation by shape)
  captions:    `CAPTIONS_PER_IMAGE` (4) distinct strings from ~45 templates naming every object's shape, often
               its colour and size, and positions / spatial relations ("a small red triangle left of a blue
               circle."); at most MAX_CAPTION_TOKENS (14) words and punctuation marks each.
  label:       ClassLabel(SHAPE_NAMES) of objects[0]
  color:       ClassLabel(COLOR_NAMES) of objects[0]
  num_objects: int
  objects:     float32 [MAX_OBJECTS, 6]: per object (shape, color, size, centre x, centre y, radius), the last
               three in pixels; sorted by radius, largest first (so `label`/`color` describe the largest object
               of a scene); rows past num_objects are -1.

Splits: 'train' and 'validation' hold multi-object scenes; 'test' is a balanced single-object classification
split (index i has shape i % 8, colour (i // 8) % 8, size (i // 64) % 2).

Everything is a pure function of (split, settings, seed): scenes are generated in fixed-size blocks, each with
its own random stream, so any example range can be regenerated (`generate`) without building the data set.
Rendering is vectorized over a block (inside-tests of every shape on a pixel grid). Images and masks are stored
as raw-bytes `tfds.features.Tensor`s, which TFDS writes and reads without TensorFlow.

The TFDS config name encodes every setting (`config_name`), so changing e.g. the image size builds a new data
set next to the old one instead of silently reusing it; `VERSION` changes whenever the rendering changes.
"""

import dataclasses
import os
import random
import re
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vitclip.data import builder, sources

SHAPE_NAMES = ('circle', 'square', 'triangle', 'diamond', 'star', 'cross', 'heart', 'crescent')
COLOR_NAMES = ('red', 'orange', 'yellow', 'green', 'cyan', 'blue', 'purple', 'white')
SIZE_NAMES = ('small', 'large')
# Saturated, clearly distinct colours; every channel >= 45 so that each object is at least as bright as the dark
# background in every channel (see _background).
COLOR_RGB = np.array([
    (230, 45, 45),    # red
    (255, 145, 45),   # orange
    (245, 230, 45),   # yellow
    (45, 190, 60),    # green
    (45, 220, 235),   # cyan
    (50, 80, 240),    # blue
    (160, 55, 220),   # purple
    (250, 250, 250),  # white
], np.float32)
# Object radius as a fraction of the image size, per size bucket: at 64 px small objects are ~12-16 px wide and
# large ones ~22-30 px, with a clear gap between the buckets.
RADIUS_RANGE = ((0.1, 0.13), (0.18, 0.235))
EXTENT = 1.15  # Every shape lies within EXTENT * radius of its centre.
MAX_OBJECTS = 3
NUM_OBJECTS_P = (0.5, 0.3, 0.2)  # Probability of 1, 2, 3 objects in train/validation scenes.
CAPTIONS_PER_IMAGE = 4
DEFAULTS = dict(image_size=64, num_train=50_000, num_validation=2_000, num_test=2_000, seed=0)
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}
_BLOCK_PIXELS = 2_000_000  # Pixels rendered per vectorized block (bounds memory, independent of image size).
_PLACEMENT_TRIES = 48


def config_name(image_size: int, num_train: int, num_validation: int, num_test: int, seed: int) -> str:
  """TFDS config name of a setting, e.g. 's64_n50000_v2000_t2000_seed0'."""
  return f's{image_size}_n{num_train}_v{num_validation}_t{num_test}_seed{seed}'


def check_settings(image_size: int, num_train: int, num_validation: int, num_test: int, seed: int) -> dict:
  """Validates the settings (config.data.shapes.*) and returns them as a dict of ints."""
  settings = dict(image_size=image_size, num_train=num_train, num_validation=num_validation,
                  num_test=num_test, seed=seed)
  for key, value in settings.items():
    if isinstance(value, bool) or int(value) != value:
      raise ValueError(f'config.data.shapes.{key}={value!r} must be an integer.')
  if image_size < 16:
    raise ValueError(f'config.data.shapes.image_size={image_size} is too small to draw shapes; use >= 16.')
  if num_train < 1 or num_validation < 0 or num_test < 0 or seed < 0:
    raise ValueError(f'config.data.shapes: need num_train >= 1, num_validation >= 0, num_test >= 0, seed >= 0; '
                     f'got {settings}.')
  return {k: int(v) for k, v in settings.items()}


# ------------------------------------------------------------------------------------------------ scenes


@dataclasses.dataclass
class Scenes:
  """A block of N scenes; object slots are sorted by radius (largest first), absent slots last.

  Attributes:
    present: bool [N, MAX_OBJECTS]
    shape, color, size: int32 [N, MAX_OBJECTS] indices into SHAPE_NAMES / COLOR_NAMES / SIZE_NAMES
    center: float32 [N, MAX_OBJECTS, 2] (x, y) in pixels
    radius: float32 [N, MAX_OBJECTS] in pixels
  """
  present: np.ndarray
  shape: np.ndarray
  color: np.ndarray
  size: np.ndarray
  center: np.ndarray
  radius: np.ndarray


def sample_scenes(rng: np.random.Generator, n: int, image_size: int, first_index: int,
                  single_object: bool) -> Scenes:
  """Samples object attributes and non-overlapping positions for `n` scenes.

  For `single_object` scenes (the test split) shape, colour and size cycle with the global example index
  `first_index + i`, so every (shape, colour, size) class is balanced.
  """
  k = MAX_OBJECTS
  if single_object:
    idx = first_index + np.arange(n)
    shape = np.zeros((n, k), np.int32)
    color, size = shape.copy(), shape.copy()
    shape[:, 0] = idx % len(SHAPE_NAMES)
    color[:, 0] = idx // len(SHAPE_NAMES) % len(COLOR_NAMES)
    size[:, 0] = idx // (len(SHAPE_NAMES) * len(COLOR_NAMES)) % len(SIZE_NAMES)
    count = np.ones(n, np.int32)
  else:
    shape = rng.integers(0, len(SHAPE_NAMES), (n, k), dtype=np.int32)
    color = rng.integers(0, len(COLOR_NAMES), (n, k), dtype=np.int32)
    size = rng.integers(0, len(SIZE_NAMES), (n, k), dtype=np.int32)
    count = rng.choice(np.arange(1, k + 1), size=n, p=NUM_OBJECTS_P).astype(np.int32)
  lo = np.array([r[0] for r in RADIUS_RANGE], np.float32)[size]
  hi = np.array([r[1] for r in RADIUS_RANGE], np.float32)[size]
  radius = (lo + (hi - lo) * rng.random((n, k), dtype=np.float32)) * image_size
  # Place large objects first: they are the hardest to fit.
  order = np.argsort(-radius, axis=1, kind='stable')
  shape, color, size, radius = (np.take_along_axis(a, order, 1) for a in (shape, color, size, radius))
  wanted = np.arange(k)[None] < count[:, None]
  wanted = np.take_along_axis(wanted, order, 1)
  center = np.zeros((n, k, 2), np.float32)
  present = np.zeros((n, k), bool)
  for j in range(k):
    r = radius[:, j, None]  # [n, 1]
    margin = r + 1.0
    cand = margin[..., None] + rng.random((n, _PLACEMENT_TRIES, 2), dtype=np.float32) * (
        image_size - 2 * margin[..., None])  # [n, T, 2]
    ok = np.ones(cand.shape[:2], bool)
    for i in range(j):
      dist = np.linalg.norm(cand - center[:, None, i], axis=-1)
      # Bounding circles of the shapes never overlap, with a pixel to spare.
      ok &= ~present[:, i, None] | (dist > EXTENT * (r + radius[:, i, None]) + 1.0)
    first = ok.argmax(axis=1)
    present[:, j] = wanted[:, j] & ok[np.arange(n), first]
    center[:, j] = cand[np.arange(n), first]
  # Drop unplaced objects: re-sort so that present objects come first, largest first.
  key = np.where(present, -radius, np.inf)
  order = np.argsort(key, axis=1, kind='stable')
  take = lambda a: np.take_along_axis(a, order if a.ndim == 2 else order[..., None], 1)
  return Scenes(present=take(present), shape=take(shape), color=take(color), size=take(size),
                center=take(center), radius=take(radius))


# --------------------------------------------------------------------------------------------- rendering


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside test of a shape in object-normalised coordinates (u right, v down; the shape lies within EXTENT)."""
  au, av = np.abs(u), np.abs(v)
  name = SHAPE_NAMES[shape]
  if name == 'circle':
    return u * u + v * v <= 1.0
  if name == 'square':
    return np.maximum(au, av) <= 0.8
  if name == 'diamond':
    return au + av <= 1.08
  if name == 'triangle':  # Apex up, near-equilateral.
    return (v <= 0.7) & (au <= (v + 0.95) * 0.55)
  if name == 'cross':
    return ((au <= 0.32) & (av <= 0.98)) | ((av <= 0.32) & (au <= 0.98))
  if name == 'star':  # Five points, one pointing up; fold the angle into one half-sector of the star.
    rho = np.sqrt(u * u + v * v)
    sector = np.pi / 5
    phi = np.mod(np.arctan2(u, -v), 2 * sector)
    phi = np.minimum(phi, 2 * sector - phi)
    x, y = rho * np.cos(phi), rho * np.sin(phi)
    outer, inner = 1.12, 0.48
    bx, by = inner * np.cos(sector), inner * np.sin(sector)
    # Inside iff on the origin's side of the edge from the outer tip (outer, 0) to the inner vertex (bx, by).
    return (bx - outer) * y - by * (x - outer) >= 0
  if name == 'heart':  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with y up, centred on its bounding box.
    x, y = u * 1.2, -(v * 1.2) + 0.15
    q = x * x + y * y - 1.0
    return q * q * q - x * x * y * y * y <= 0
  if name == 'crescent':  # A disc minus a shifted disc, opening to the upper right.
    return (u * u + v * v <= 1.0) & ((u - 0.42) ** 2 + (v + 0.3) ** 2 > 0.72)
  raise ValueError(f'unknown shape {name!r}')


def _background(rng: np.random.Generator, n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
  """Dark, muted, textured backgrounds: grey level + gradient + faint stripes, float32 [n, s, s], and a slight
  per-image colour tint, float32 [n, 3].

  Dark on purpose: every object is then brighter than its background in every channel, so an object's edges have
  the same polarity whatever its colour, and a ViT's linear patch embedding sees its silhouette directly. With
  mid-grey backgrounds (dark blue and bright yellow objects on the same grey) a tiny ViT learned shapes several
  times more slowly in our tests.
  """
  f32 = lambda low, high, shape=(n, 1, 1): rng.uniform(low, high, shape).astype(np.float32)
  coords = (np.arange(s, dtype=np.float32) + 0.5) / s - 0.5
  x, y = coords[None, None, :], coords[None, :, None]
  level, angle = f32(10, 40), f32(0, 2 * np.pi)
  gradient = f32(-14, 14) * (np.cos(angle) * x + np.sin(angle) * y)
  s_angle, freq, amplitude, phase = f32(0, np.pi), f32(3, 10), f32(0, 4), f32(0, 2 * np.pi)
  stripes = amplitude * np.sin(2 * np.pi * freq * (np.cos(s_angle) * x + np.sin(s_angle) * y) + phase)
  return level + gradient + stripes, f32(-4, 4, (n, 3))


def render(scenes: Scenes, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Draws a block of scenes. Returns images uint8 [N, S, S, 3] and masks uint8 [N, S, S] (shape index + 1)."""
  n, k = scenes.present.shape
  s = image_size
  grey, tint = _background(rng, n, s)
  slot = np.zeros((n, s, s), np.uint8)  # 0: background, j + 1: object slot j.
  pix = np.arange(s, dtype=np.float32) + 0.5  # Pixel centres.
  for j in range(k):
    for shape in range(len(SHAPE_NAMES)):
      rows = np.nonzero(scenes.present[:, j] & (scenes.shape[:, j] == shape))[0]
      if not len(rows):
        continue
      r = scenes.radius[rows, j][:, None, None]
      u = (pix[None, None, :] - scenes.center[rows, j, 0][:, None, None]) / r
      v = (pix[None, :, None] - scenes.center[rows, j, 1][:, None, None]) / r
      slot[rows] = np.where(_inside(shape, u, v), np.uint8(j + 1), slot[rows])
  # Colour table per image: row 0 is the background tint, row j + 1 the (jittered) colour of object j.
  colors = COLOR_RGB[scenes.color] + rng.uniform(-10, 10, (n, k, 3)).astype(np.float32)
  table = np.concatenate([tint[:, None], colors], axis=1)  # [n, k + 1, 3]
  index = np.arange(n, dtype=np.int32)[:, None, None] * (k + 1) + slot  # [n, s, s] into the flat table
  # Background texture plus sensor-like noise everywhere (uniform, sd ~4.6: cheaper than Gaussian).
  luminance = np.where(slot == 0, grey, np.float32(0))
  luminance += (rng.random((n, s, s), dtype=np.float32) - np.float32(0.5)) * np.float32(16)
  images = np.empty((n, s, s, 3), np.uint8)
  for c in range(3):  # Channel by channel: numpy is slow on a trailing axis of length 3.
    channel = np.take(np.ascontiguousarray(table[..., c]).reshape(-1), index)
    channel += luminance
    images[..., c] = np.clip(channel, 0, 255, out=channel)
  shape_table = np.concatenate([np.full((n, 1), -1, np.int32), scenes.shape], axis=1).reshape(-1)
  masks = (np.take(shape_table, index) + 1).astype(np.uint8)
  return images, masks


# ---------------------------------------------------------------------------------------------- captions

_SIZE_WORDS = (('small', 'small', 'small', 'little', 'tiny'), ('large', 'large', 'large', 'big'))
# Fields: {a} 'a small red circle' (with a determiner), {A} 'small red circle' (bare), {rel}, {where}.
_ONE = ('{a}.', 'a photo of {a}.', 'a picture of {a}.', 'an image of {a}.', 'there is {a}.', 'this is {a}.',
        '{a} on a grey background.', '{a} on a textured background.', 'a rendering of {a}.', 'a drawing of {a}.',
        '{a} {where}.', 'there is {a} {where}.', 'one object: {a}.', 'a single {A}.', 'just {a}.',
        'a close-up of {a}.', 'a simple image of {a}.', '{a}, alone.', 'the only object is {a}.', '{A}.')
_TWO = ('{a} and {b}.', '{a} {rel} {b}.', 'there is {a} {rel} {b}.', '{a} is {rel} {b}.',
        'two objects: {a} and {b}.', 'a photo of {a} and {b}.', 'a picture of {a} {rel} {b}.',
        '{a} next to {b}.', 'an image with {a} and {b}.', 'two shapes, {a} and {b}.', '{a} placed {rel} {b}.',
        '{a} with {b}.', 'a drawing of {a} {rel} {b}.', '{A} and {B}.', '{A} {rel} {B}.')
_THREE = ('{A}, {B} and {C}.', 'three objects: {A}, {B}, {C}.', '{A} {rel} {B}, and {C}.',
          'three shapes: {A}, {B} and {C}.', '{A}, {B}, {C}.', 'a photo of {A}, {B} and {C}.',
          '{a} {rel} {b}, plus {C}.', '{a}, {b} and {c}.', 'there is {a}, {b} and {c}.')
_TEMPLATES = (_ONE, _TWO, _THREE)
# Captions fit a text tower of 16 tokens (start + 14 + end) when every word and punctuation mark is one token,
# as for a BPE trained on these captions: longer draws are discarded, so no object is ever cut off.
MAX_CAPTION_TOKENS = 14
P_SIZE, P_COLOR = 0.4, 0.15  # How often an object phrase names the size / the colour.
_TOKEN_RE = re.compile(r'\w+|[^\w\s]')


def _phrase(rnd: random.Random, shape: int, color: int, size: int) -> str:
  """'small red circle', 'red circle', 'small circle' or 'circle': the shape is always named, the size with
  probability P_SIZE and the colour with P_COLOR. Colour-free phrases make the shape words informative on their
  own: colour is an easy shortcut that a contrastive model otherwise learns first and alone. (Measured, tiny/8
  GAP model, 200 steps: shape zero-shot 22% with P_COLOR = 0.5, 33% with 0.15; colour zero-shot is ~98% either
  way, since 15% of the phrases still name it.) The price shows in the conv-stem default of configs/shapes.py:
  its colour zero-shot is near chance (13% after 1800 steps of 64; 25% with P_SIZE, P_COLOR = 0.7, 0.3 in an
  earlier sigmoid run of 540 steps of 256)."""
  words = [rnd.choice(_SIZE_WORDS[size])] if rnd.random() < P_SIZE else []
  if rnd.random() < P_COLOR:
    words.append(COLOR_NAMES[color])
  words.append(SHAPE_NAMES[shape])
  return ' '.join(words)


def _with_determiner(rnd: random.Random, phrase: str) -> str:
  det = rnd.choice(('a', 'a', 'a', 'a', 'one', 'the'))
  return ('an' if det == 'a' and phrase[0] in 'aeiou' else det) + ' ' + phrase


def relation(center_a, center_b) -> str:
  """Spatial relation of object a to object b along the dominant axis: 'left of', 'right of', 'above',
  'below' (image y grows downward)."""
  dx, dy = center_a[0] - center_b[0], center_a[1] - center_b[1]
  if abs(dx) >= abs(dy):
    return 'left of' if dx < 0 else 'right of'
  return 'above' if dy < 0 else 'below'


def _where(center, image_size: int) -> str:
  """'at the top left', 'on the right', 'in the center', ... (thirds of the image)."""
  col = ('left', '', 'right')[min(2, int(3 * center[0] / image_size))]
  row = ('top', '', 'bottom')[min(2, int(3 * center[1] / image_size))]
  if not row and not col:
    return 'in the center'
  return ('at the ' + ' '.join(w for w in (row, col) if w)) if row else f'on the {col}'


_REL_WORDS = {'left of': ('left of', 'to the left of'), 'right of': ('right of', 'to the right of'),
              'above': ('above',), 'below': ('below', 'under')}


def num_tokens(caption: str) -> int:
  """Words plus punctuation marks: the token count of a caption under a BPE trained on the shapes captions."""
  return len(_TOKEN_RE.findall(caption))


def captions_for(objects: list[tuple[int, int, int, float, float]], image_size: int,
                 rnd: random.Random) -> list[str]:
  """Up to `CAPTIONS_PER_IMAGE` distinct captions of one scene (at most MAX_CAPTION_TOKENS each), each naming
  every object, in a random order.

  Args:
    objects: (shape, color, size, x, y) per object; indices into SHAPE_NAMES / COLOR_NAMES / SIZE_NAMES and the
      centre in pixels.
  """
  out = []
  for _ in range(6 * CAPTIONS_PER_IMAGE):
    order = objects[:]
    rnd.shuffle(order)
    fields = {}
    for key, obj in zip('abc', order):
      fields[key.upper()] = _phrase(rnd, *obj[:3])
      fields[key] = _with_determiner(rnd, fields[key.upper()])
    if len(objects) == 1:
      fields['where'] = _where(order[0][3:], image_size)
    else:
      fields['rel'] = rnd.choice(_REL_WORDS[relation(order[0][3:], order[1][3:])])
    caption = rnd.choice(_TEMPLATES[len(objects) - 1]).format(**fields)
    if num_tokens(caption) <= MAX_CAPTION_TOKENS and caption not in out:
      out.append(caption)
      if len(out) == CAPTIONS_PER_IMAGE:
        break
  if not out:  # Cannot happen with the templates above (bare phrases fit); kept as a guarantee.
    out.append(', '.join(f'{COLOR_NAMES[o[1]]} {SHAPE_NAMES[o[0]]}' for o in objects) + '.')
  return out


def scene_objects(scenes: Scenes) -> list[list[tuple[int, int, int, float, float]]]:
  """Per scene, the present objects as (shape, color, size, x, y) Python tuples, largest first."""
  columns = zip(scenes.present.tolist(), scenes.shape.tolist(), scenes.color.tolist(), scenes.size.tolist(),
                scenes.center.tolist())
  return [[(sh, co, si, xy[0], xy[1]) for p, sh, co, si, xy in zip(*row) if p] for row in columns]


# -------------------------------------------------------------------------------------------- generation


OBJECT_COLUMNS = ('shape', 'color', 'size', 'x', 'y', 'radius')


def object_table(scenes: Scenes) -> np.ndarray:
  """float32 [N, MAX_OBJECTS, 6]: per object slot the OBJECT_COLUMNS (shape, color, size, centre x, y and radius
  in pixels), largest object first; absent slots are all -1."""
  table = np.stack([scenes.shape, scenes.color, scenes.size, scenes.center[..., 0], scenes.center[..., 1],
                    scenes.radius], axis=-1).astype(np.float32)
  return np.where(scenes.present[..., None], table, np.float32(-1))


def block_size(image_size: int) -> int:
  return max(1, _BLOCK_PIXELS // (image_size * image_size))


def _block_rngs(seed: int, split: str, block: int) -> tuple[np.random.Generator, random.Random]:
  seq = np.random.SeedSequence([seed, SPLIT_IDS[split], block])
  return np.random.default_rng(seq), random.Random(int(seq.generate_state(1)[0]))


def generate(split: str, *, image_size: int, num_examples: int, seed: int, start: int = 0,
             stop: int | None = None) -> Iterator[tuple[int, dict]]:
  """Yields (index, example) for indices [start, stop) of a split; identical for any start/stop."""
  stop = num_examples if stop is None else min(stop, num_examples)
  bs = block_size(image_size)
  for block in range(start // bs, -(-stop // bs)):
    first = block * bs
    n = min(bs, num_examples - first)
    rng, rnd = _block_rngs(seed, split, block)
    scenes = sample_scenes(rng, n, image_size, first, single_object=split == 'test')
    images, masks = render(scenes, image_size, rng)
    captions = [captions_for(objs, image_size, rnd) for objs in scene_objects(scenes)]
    objects = object_table(scenes)
    for i in range(max(0, start - first), min(n, stop - first)):
      yield first + i, {
          'image': images[i],
          'mask': masks[i],
          'captions': captions[i],
          'label': int(scenes.shape[i, 0]),
          'color': int(scenes.color[i, 0]),
          'num_objects': int(scenes.present[i].sum()),
          'objects': objects[i],
      }


# ------------------------------------------------------------------------------------------- TFDS builder


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """One setting of the world; build with `ShapesConfig.make(**settings)` so the name encodes it."""
  image_size: int = DEFAULTS['image_size']
  num_train: int = DEFAULTS['num_train']
  num_validation: int = DEFAULTS['num_validation']
  num_test: int = DEFAULTS['num_test']
  seed: int = DEFAULTS['seed']

  @classmethod
  def make(cls, **settings) -> 'ShapesConfig':
    settings = check_settings(**{**DEFAULTS, **settings})
    return cls(name=config_name(**settings), description=f'shapes world, {settings}', **settings)


class Shapes(builder.LocalBuilder, skip_registration=True):
  """TFDS builder of the shapes world (array_record, no TensorFlow needed). Pass `config=ShapesConfig.make()`."""
  name = 'shapes'
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Eight shapes, eight colours, two sizes; 1-3 objects; masks and captions.',
                   '1.1.0': 'Captions name an object\'s colour 15% of the time (was 50%).'}

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    raw = dict(dtype=np.uint8, encoding='bytes')  # One bytes blob per array: fast to write and read.
    raw32 = dict(dtype=np.float32, encoding='bytes')
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, 3), **raw),
            'mask': tfds.features.Tensor(shape=(s, s), **raw),
            'captions': tfds.features.Sequence(tfds.features.Text()),
            'label': tfds.features.ClassLabel(names=SHAPE_NAMES),
            'color': tfds.features.ClassLabel(names=COLOR_NAMES),
            'num_objects': tfds.features.Scalar(dtype=np.int32),
            'objects': tfds.features.Tensor(shape=(MAX_OBJECTS, len(OBJECT_COLUMNS)), **raw32),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # Already random; the input pipeline shuffles globally anyway.
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    counts = {'train': c.num_train, 'validation': c.num_validation, 'test': c.num_test}
    return {split: self._generate_examples(split, n) for split, n in counts.items() if n > 0}

  def _generate_examples(self, split: str, num_examples: int):
    c = self.builder_config
    return generate(split, image_size=c.image_size, num_examples=num_examples, seed=c.seed)


# ------------------------------------------------------------------------------------------- by name


def full_name(**settings) -> str:
  """'shapes/<config>' for settings image_size, num_train, num_validation, num_test, seed (missing ones take
  `DEFAULTS`), e.g. 'shapes/s64_n50000_v2000_t2000_seed0': usable anywhere a data set name is."""
  return f'{Shapes.name}/' + config_name(**check_settings(**{**DEFAULTS, **settings}))


def prepare(data_dir: str, **settings) -> str:
  """Builds the data set of `settings` under `data_dir` unless it already exists; returns its builder dir.

  Safe when several processes call it at once (a file lock; TFDS writes into a temporary directory and renames
  it when complete); a no-op when the data set exists.
  """
  builder_config = ShapesConfig.make(**settings)
  root = epath.Path(data_dir) / Shapes.name / builder_config.name
  final = root / str(Shapes.VERSION)
  if not sources.is_version_dir(final):
    with builder.file_lock(os.path.join(data_dir, Shapes.name, f'.{builder_config.name}.lock')):
      if not sources.is_version_dir(final):  # Else another process built it while we waited.
        for stale in root.iterdir() if root.is_dir() else ():
          if stale.name.startswith('incomplete.'):  # A crashed build's; nobody else builds (we hold the lock).
            stale.rmtree(missing_ok=True)
        Shapes(config=builder_config, data_dir=data_dir, file_format='array_record').build()
  return os.fspath(final)
