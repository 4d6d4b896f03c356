"""Image token masking for training: which patch tokens enter the image tower, and the crops they come from.

Token indices are row-major positions in the h x w patch grid; a `keep` array int32 [B, K] lists the K tokens
each image keeps, ascending (the tower gathers them after the position embedding; see VisionTransformer).

  FLIP (Li et al. 2023)       `random_keep`: a uniformly random subset per image.
  A-CLIP (Yang et al. 2023)   `select_by_score`: the tokens an attention score ranks best (or worst, or a
                              mixture), kept in unit x unit blocks; the score map of the union of two random
                              crops (`random_boxes`, `union_box`, `crop_resize`) is resampled onto each crop's
                              own grid (`scores_in_view`), so one EMA forward serves both views.

Boxes are float32 [B, 4] = (top, left, height, width) as fractions of the image side. Every function is pure and
jit-compatible; randomness comes from the step key, so a resumed run draws the same masks.
"""

import math

import jax
import jax.numpy as jnp

SELECTIONS = ('high', 'low', 'mixture')


def num_kept(num_tokens: int, keep_ratio: float) -> int:
  """Tokens (or units) kept out of `num_tokens` at `keep_ratio`: round(n · ratio), at least 1."""
  return max(1, min(num_tokens, round(num_tokens * keep_ratio)))


def random_keep(rng, batch: int, num_tokens: int, mask_ratio: float) -> jax.Array:
  """FLIP: int32 [batch, K] uniformly random token subsets, K = num_kept(num_tokens, 1 - mask_ratio), a fresh
  one per row, ascending."""
  k = num_kept(num_tokens, 1.0 - mask_ratio)
  noise = jax.random.uniform(rng, (batch, num_tokens))
  return jnp.sort(jnp.argsort(noise, axis=1)[:, :k], axis=1).astype(jnp.int32)


def unit_scores(scores: jax.Array, unit: int) -> jax.Array:
  """[B, h, w] token scores -> [B, h/unit · w/unit] mean score of each unit x unit block (row-major)."""
  b, h, w = scores.shape
  if h % unit or w % unit:
    raise ValueError(f'A {h} x {w} patch grid does not split into {unit} x {unit} units.')
  return scores.reshape(b, h // unit, unit, w // unit, unit).mean(axis=(2, 4)).reshape(b, -1)


def units_to_tokens(units: jax.Array, grid: tuple[int, int], unit: int) -> jax.Array:
  """int [B, U] unit indices -> int32 [B, U · unit²] token indices of their blocks, ascending."""
  _, w = grid
  uy, ux = jnp.divmod(units, w // unit)
  dy, dx = jnp.divmod(jnp.arange(unit * unit), unit)
  tokens = (uy[..., None] * unit + dy) * w + ux[..., None] * unit + dx  # [B, U, unit²]
  return jnp.sort(tokens.reshape(units.shape[0], -1), axis=1).astype(jnp.int32)


def select_by_score(scores: jax.Array, keep_ratio: float, unit: int, selection: str, rng) -> jax.Array:
  """A-CLIP's attentive selection: scores [B, h, w] -> keep int32 [B, K · unit²], K = num_kept(units, ratio).

  selection: 'high' keeps the best-scored units, 'low' the worst-scored, 'mixture' the best-scored half of K
  and the other half uniformly at random from the remaining units. Ties keep the lower index.
  """
  if selection not in SELECTIONS:
    raise ValueError(f'Unknown selection {selection!r}; use one of {SELECTIONS}.')
  per_unit = unit_scores(scores, unit)
  n = per_unit.shape[1]
  k = num_kept(n, keep_ratio)
  if selection == 'low':
    per_unit = -per_unit
  order = jnp.argsort(-per_unit, axis=1, stable=True)  # Best first.
  if selection == 'mixture':
    top = math.ceil(k / 2)
    rest = order[:, top:]
    shuffle = jnp.argsort(jax.random.uniform(rng, rest.shape), axis=1)
    chosen = jnp.concatenate([order[:, :top], jnp.take_along_axis(rest, shuffle, axis=1)[:, :k - top]], axis=1)
  else:
    chosen = order[:, :k]
  return units_to_tokens(chosen, scores.shape[1:], unit)


def random_boxes(rng, batch: int, scale: tuple[float, float]) -> jax.Array:
  """float32 [batch, 4] square crops (top, left, height, width) whose area is uniform in `scale` (fractions of
  the image area), placed uniformly inside the image."""
  k_area, k_y, k_x = jax.random.split(rng, 3)
  side = jnp.sqrt(jax.random.uniform(k_area, (batch,), minval=scale[0], maxval=scale[1]))
  top = jax.random.uniform(k_y, (batch,)) * (1.0 - side)
  left = jax.random.uniform(k_x, (batch,)) * (1.0 - side)
  return jnp.stack([top, left, side, side], axis=1)


def union_box(a: jax.Array, b: jax.Array) -> jax.Array:
  """The smallest box [B, 4] holding boxes a and b [B, 4]."""
  top, left = jnp.minimum(a[:, 0], b[:, 0]), jnp.minimum(a[:, 1], b[:, 1])
  bottom = jnp.maximum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
  right = jnp.maximum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
  return jnp.stack([top, left, bottom - top, right - left], axis=1)


def crop_resize(images: jax.Array, boxes: jax.Array, size: int) -> jax.Array:
  """images [B, H, W, C], boxes [B, 4] -> [B, size, size, C] float32: each box resampled bilinearly
  (antialiased when shrinking) to size x size."""
  _, h, w, c = images.shape

  def one(image, box):
    scale = jnp.array([size / (box[2] * h), size / (box[3] * w)])
    translation = -jnp.array([box[0] * h, box[1] * w]) * scale
    return jax.image.scale_and_translate(image.astype(jnp.float32), (size, size, c), (0, 1), scale, translation,
                                         method='linear')
  return jax.vmap(one)(images, boxes)


def scores_in_view(scores: jax.Array, scored_box: jax.Array, view_box: jax.Array, grid: int) -> jax.Array:
  """Resamples a score map of one box onto another box's token grid.

  scores [B, g, g] over `scored_box` [B, 4]; returns [B, grid, grid]: at each token centre of `view_box`, the
  bilinearly interpolated score (edge values beyond the scored box).
  """
  g = scores.shape[1]
  centres = (jnp.arange(grid) + 0.5) / grid  # Token centres in view coordinates [0, 1].

  def one(s, sb, vb):
    y = (vb[0] + vb[2] * centres - sb[0]) / sb[2] * g - 0.5  # Pixel-centre convention of the scored grid.
    x = (vb[1] + vb[3] * centres - sb[1]) / sb[3] * g - 0.5
    yy, xx = jnp.meshgrid(y, x, indexing='ij')
    return jax.scipy.ndimage.map_coordinates(s, [yy, xx], order=1, mode='nearest')
  return jax.vmap(one)(scores, scored_box, view_box)
