"""Open-vocabulary detection by a CLIP cascade: region proposals, each crop embedded by the image tower and scored
against the text classifier, per-class NMS; box AP@0.5 and average recall against ground-truth boxes.

Per image:
  1. Proposals by every method of `methods` (vitclip/boxes.py):
     'components': connected components of each foreground class in the per-class map (patch features of the
                   image tower x the text classifier with background prompts, `dense_mode` last block, softmax at
                   `temperature`, upsampled bilinearly to the image and argmax'ed; as the dense evaluator's main
                   path without KS / PD / sliding windows, `map_sizes` averaged as its multi-scale test);
     'grid':       square sliding boxes at `grid_scales` x the shorter side, every `grid_stride` x side pixels;
     'merge':      selective search's hierarchical grouping started from those components.
  2. Each distinct box, grown by `crop_context` of its size on every side, is cropped from the image and
     resized to `crop_size` (PIL bilinear, as the evaluation pipeline resizes images), embedded, and scored:
     softmax(temperature x cosine) over [background (max over `background_prompts`), classes]; a proposal's
     class is its best foreground class and its score that class's probability.
  3. Detections: the proposals whose score >= `score_threshold`, per-class NMS at `nms_iou`, at most
     `max_detections`.
Ground truth (shapes: `objects` + `mask`): boxes.shapes_gt_boxes, the tight box of each object's mask pixels
within EXTENT x radius of its centre.

Results per data set and method: `detection/<ds>/<method>/ap50` (mean over classes with ground truth of the
all-point interpolated AP at IoU 0.5), `ap50_agnostic` (classes ignored: localisation alone), `ar@<N>` (average
recall over IoU 0.5:0.95 of the first N proposals by score, class-agnostic), `proposals_per_image`,
`detections_per_image`. Overlays: `<workdir>/detection_overlays/<ds>/000.png, ...`: ground truth and every
method's detections, named and scored.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vitclip import boxes as boxes_lib
from vitclip import sharding, templates as templates_lib
from vitclip.data import pipeline, shapes, sources
from vitclip.errors import ConfigError
from vitclip.evaluators import common, overlays
from vitclip.models.variants import decode_variant
from vitclip.models.vit import DENSE_MODES

METHODS = ('components', 'grid', 'merge')
_NEEDS_MAP = ('components', 'merge')
PREFIX = 'config.evals.detection'

# ------------------------------------------------------------------------------------------------ settings


def _check(ok: bool, field: str, value, fix: str):
  if not ok:
    raise ConfigError(f'{PREFIX}.{field}={value!r}: {fix}')


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_settings(cfg, patch: int | None):
  """Every setting but the data sets; `patch`: the image tower's patch size (None: not known here)."""
  methods = tuple(cfg.methods)
  _check(methods and set(methods) <= set(METHODS) and len(set(methods)) == len(methods), 'methods', methods,
         f'name each of {METHODS} at most once, at least one.')
  _check(cfg.dense_mode in DENSE_MODES, 'dense_mode', cfg.dense_mode, f'use one of {sorted(DENSE_MODES)}.')
  sizes = tuple(cfg.map_sizes)
  _check(all(_is_int(s) and s > 0 and (patch is None or s % patch == 0) for s in sizes), 'map_sizes', sizes,
         f'use positive multiples of the patch size ({patch}), or () for the model resolution.')
  _check(_is_num(cfg.temperature) and cfg.temperature > 0, 'temperature', cfg.temperature, 'use a number > 0.')
  _check(_is_num(cfg.bg_threshold) and 0 <= cfg.bg_threshold <= 1, 'bg_threshold', cfg.bg_threshold,
         'use a probability in [0, 1].')
  _check(all(isinstance(p, str) and p for p in cfg.background_prompts), 'background_prompts',
         tuple(cfg.background_prompts), 'use non-empty strings, or () for a background by bg_threshold.')
  _check(_is_int(cfg.min_area) and cfg.min_area >= 1, 'min_area', cfg.min_area, 'use an integer >= 1 (pixels).')
  scales = tuple(cfg.grid_scales)
  _check(scales and all(_is_num(s) and 0 < s <= 1 for s in scales), 'grid_scales', scales,
         'use fractions of the shorter image side in (0, 1], e.g. (0.25, 0.5).')
  _check(_is_num(cfg.grid_stride) and 0 < cfg.grid_stride <= 1, 'grid_stride', cfg.grid_stride,
         'use a fraction of the box side in (0, 1].')
  _check(_is_int(cfg.merge_gap) and cfg.merge_gap >= 0, 'merge_gap', cfg.merge_gap, 'use an integer >= 0 (pixels).')
  _check(_is_int(cfg.crop_size) and cfg.crop_size >= 0, 'crop_size', cfg.crop_size,
         'use an integer >= 0 (pixels; 0 = the model resolution).')
  _check(_is_num(cfg.crop_context) and 0 <= cfg.crop_context <= 1, 'crop_context', cfg.crop_context,
         'use a fraction of the box size in [0, 1].')
  _check(_is_num(cfg.score_threshold) and 0 <= cfg.score_threshold <= 1, 'score_threshold', cfg.score_threshold,
         'use a probability in [0, 1].')
  _check(_is_num(cfg.nms_iou) and 0 < cfg.nms_iou <= 1, 'nms_iou', cfg.nms_iou, 'use an IoU in (0, 1].')
  _check(_is_int(cfg.max_detections) and cfg.max_detections >= 1, 'max_detections', cfg.max_detections,
         'use an integer >= 1.')
  ar_at = tuple(cfg.ar_at)
  _check(ar_at and all(_is_int(n) and n >= 1 for n in ar_at), 'ar_at', ar_at, 'use integers >= 1, e.g. (10, 100).')
  _check(_is_int(cfg.num_overlays) and cfg.num_overlays >= 0, 'num_overlays', cfg.num_overlays,
         'use an integer >= 0 (0 = none).')
  common.check_split(PREFIX, cfg.split)
  common.check_max_examples(PREFIX, cfg.max_examples)
  templates_lib.get_templates(cfg.templates, f'{PREFIX}.templates')


# ------------------------------------------------------------------------------------------------ scoring


def class_probs(logits: jax.Array, num_bg: int, temperature: float, bg_threshold: float) -> jax.Array:
  """Cosines -> per-class probabilities with the background at index 0.

  logits: float [..., num_bg + C]: background rows first. With num_bg > 0 the background logit is their max
  and the softmax runs over [background, classes]; with none the background is the constant `bg_threshold`
  next to the softmax over the classes (so it wins the argmax where no class reaches it).
  Returns float32 [..., 1 + C].
  """
  x = logits.astype(jnp.float32) * temperature
  if num_bg:
    x = jnp.concatenate([jnp.max(x[..., :num_bg], axis=-1, keepdims=True), x[..., num_bg:]], axis=-1)
    return jax.nn.softmax(x, axis=-1)
  probs = jax.nn.softmax(x, axis=-1)
  return jnp.concatenate([jnp.full(probs.shape[:-1] + (1,), bg_threshold, jnp.float32), probs], axis=-1)


def make_map_fn(model, mode: str, sizes: tuple[int, ...], num_bg: int, temperature: float, bg_threshold: float):
  """fn(params, images float [B, S, S, 3], classifier float32 [K, D]) -> float32 [B, S, S, 1 + C]: per-class
  probabilities of every patch at each input size of `sizes` (resized on device), upsampled bilinearly to S and
  averaged over the sizes."""

  def fn(params, images, classifier):
    b, s = images.shape[0], images.shape[1]
    total = 0.
    for size in sizes:
      x = images if size == s else jax.image.resize(images, (b, size, size, images.shape[-1]), 'bilinear')
      feats = model.apply({'params': params}, x, mode, method='dense_image_features')
      logits = jnp.einsum('bhwd,kd->bhwk', feats.astype(jnp.float32), classifier.astype(jnp.float32))
      probs = class_probs(logits, num_bg, temperature, bg_threshold)
      total = total + jax.image.resize(probs, (b, s, s, probs.shape[-1]), 'bilinear')
    return total / len(sizes)

  return fn


# ----------------------------------------------------------------------------------------------- evaluator


@dataclasses.dataclass
class _Data:
  """One data set entry, opened once per run."""
  name: str
  key: str
  source: object
  class_names: list[str]  # Foreground classes: mask value k + 1 and objects' shape k are class k.


@dataclasses.dataclass
class _Image:
  """What one image leaves for the metrics: ground truth, and per method its ranked proposals and detections."""
  index: int
  gt: tuple  # (boxes [G, 4], classes [G])
  ranked: dict  # method -> proposals [N, 4], best score first
  dets: dict  # method -> (boxes [K, 4], scores [K], classes [K])


class Detection(common.Evaluator):
  """AP@0.5 and average recall of the proposal -> crop -> CLIP cascade, per proposal method."""
  NAME = 'detection'
  NEEDS = ('a data set with per-object boxes: the generated shapes world (features objects and mask), e.g. '
           "'shapes' with split 'validation'")

  def __init__(self, ctx: common.Context, cfg):
    super().__init__(ctx, cfg)
    self.patch = decode_variant(ctx.config.model.image.variant)['patch_size']
    check_settings(cfg, self.patch)
    self.templates = templates_lib.get_templates(cfg.templates, f'{PREFIX}.templates')
    self.num_bg = len(cfg.background_prompts)
    size = ctx.config.model.image.image_size
    self.map_fn = jax.jit(make_map_fn(ctx.model, cfg.dense_mode, tuple(cfg.map_sizes) or (size,), self.num_bg,
                                      float(cfg.temperature), float(cfg.bg_threshold)),
                          out_shardings=sharding.batch_sharding(ctx.mesh))
    self.crop_spec = dataclasses.replace(ctx.image_spec(), size=cfg.crop_size or size)

  @classmethod
  def check_config(cls, cfg, config, data_dir):
    try:
      patch = decode_variant(config.model.image.variant).get('patch_size')
    except ValueError:
      patch = None  # An unknown variant is reported by the model checks.
    check_settings(cfg, patch)
    for spec in cfg.datasets:
      name, _ = common.parse_dataset(spec, '')
      info = common.check_dataset(f'{PREFIX}.datasets', name, f'{PREFIX}.split', cfg.split, config, data_dir)
      for field in ('objects_feature', 'mask_feature'):
        common.check_feature(f'{PREFIX}.{field}', name, info, (cfg[field],), field.replace('_feature', ''))
      common.check_class_names(PREFIX, cfg, info, name, cfg.class_feature, f'{PREFIX}.class_feature')

  def setup(self, name: str, feature: str) -> _Data:
    del feature
    source, info = common.load_source(self.ctx, name, self.cfg.split, self.cfg.max_examples)
    return _Data(name, common.metric_name(name), source,
                 common.classnames_for(self.cfg, info, name, self.cfg.class_feature))

  def evaluate(self, params, data: _Data) -> dict[str, float]:
    ctx, cfg = self.ctx, self.cfg
    names = list(cfg.background_prompts) + data.class_names
    classifier = common.build_classifier(ctx, params, names, self.templates)  # [num_bg + C, D]
    on_device = jax.device_put(classifier, sharding.replicated(ctx.mesh))
    spec = ctx.image_spec()
    convert = lambda r: {'image': spec.eval_view(sources.decode_image(r))}
    images: list[_Image] = []
    for batch, valid in common.indexed_batches(data.source, convert, ctx):
      maps = None
      if set(cfg.methods) & set(_NEEDS_MAP):
        maps = np.asarray(common.gather(self.map_fn(params, batch['image'], on_device)))
      index = common.gather_index(batch)
      rows = [(int(index[i]), None if maps is None else maps[i]) for i in np.flatnonzero(valid)]
      images += self._detect(params, classifier, data, rows)
    if len(images) < len(data.source):
      logging.warning('detection/%s: skipped %d of %d unreadable records.', data.key,
                      len(data.source) - len(images), len(data.source))
    if cfg.num_overlays and ctx.workdir and jax.process_index() == 0:
      write_overlays(f'{ctx.workdir}/detection_overlays/{data.key}', data, images[:cfg.num_overlays],
                     tuple(cfg.methods))
    return self._results(data, images)

  def _proposals(self, image: np.ndarray, probs: np.ndarray | None) -> dict[str, np.ndarray]:
    """uint8 [H, W, 3] and the per-class map float [S, S, 1 + C] -> {method: boxes [N, 4]}."""
    cfg, (h, w) = self.cfg, image.shape[:2]
    out = {}
    if probs is not None:
      if probs.shape[:2] != (h, w):
        probs = np.asarray(jax.image.resize(probs, (h, w, probs.shape[-1]), 'bilinear'))
      regions = [m for _, m in boxes_lib.components(probs.argmax(-1), cfg.min_area)]
      if 'components' in cfg.methods:
        out['components'] = np.asarray([boxes_lib.mask_box(m) for m in regions], np.float32).reshape(-1, 4)
      if 'merge' in cfg.methods:
        out['merge'] = boxes_lib.merge_boxes(regions, image, cfg.merge_gap)
    if 'grid' in cfg.methods:
      out['grid'] = boxes_lib.grid_boxes(h, w, tuple(cfg.grid_scales), cfg.grid_stride)
    return {m: out[m] for m in cfg.methods}

  def _detect(self, params, classifier: np.ndarray, data: _Data, rows) -> list[_Image]:
    """rows: (record index, per-class map or None) per image -> one _Image each. Every distinct box of an
    image is embedded once, whichever methods proposed it."""
    cfg, crops, found = self.cfg, [], []
    for index, probs in rows:
      record = data.source[index]
      image = sources.decode_image(record)
      gt = boxes_lib.shapes_gt_boxes(np.asarray(record[cfg.objects_feature]),
                                     np.asarray(record[cfg.mask_feature]), shapes.EXTENT)
      proposals = self._proposals(image, probs)
      unique, where = boxes_lib.unique_rows(np.concatenate(list(proposals.values())))
      h, w = image.shape[:2]
      crops += [(image, box) for box in boxes_lib.expand(unique, cfg.crop_context, h, w)]
      found.append((index, gt, proposals, unique, where))
    probs = self._score_crops(params, classifier, crops)  # [N crops, C] foreground probabilities
    out, start = [], 0
    for index, gt, proposals, unique, where in found:
      mine, start = probs[start:start + len(unique)], start + len(unique)
      ranked, dets, offset = {}, {}, 0
      for method, props in proposals.items():
        p = mine[where[offset:offset + len(props)]]
        offset += len(props)
        scores, classes = p.max(-1) if len(p) else np.zeros(0), p.argmax(-1) if len(p) else np.zeros(0, int)
        ranked[method] = props[np.argsort(-scores, kind='stable')]
        sure = np.flatnonzero(scores >= cfg.score_threshold)
        keep = sure[boxes_lib.per_class_nms(props[sure], scores[sure], classes[sure], cfg.nms_iou,
                                            cfg.max_detections)]
        dets[method] = (props[keep], scores[keep], classes[keep])
      out.append(_Image(index, gt, ranked, dets))
    return out

  def _score_crops(self, params, classifier: np.ndarray, crops) -> np.ndarray:
    """(uint8 image, box) pairs -> float32 [N, C]: foreground class probabilities of each crop."""
    if not crops:
      return np.zeros((0, classifier.shape[0] - self.num_bg), np.float32)
    convert = lambda c: {'image': self.crop_spec.normalize(self.crop_spec.resize(c[0], box=tuple(c[1])))}
    emb = [self.ctx.encode_image_batch(params, batch['image'])[valid]
           for batch, valid in pipeline.eval_batches(crops, convert, self.ctx.batch_size, self.ctx.mesh)]
    logits = np.concatenate(emb) @ classifier.T
    probs = class_probs(jnp.asarray(logits), self.num_bg, float(self.cfg.temperature), float(self.cfg.bg_threshold))
    return np.asarray(probs)[:, 1:]

  def _results(self, data: _Data, images: list[_Image]) -> dict[str, float]:
    gts = [im.gt for im in images]
    agnostic_gts = [(b, np.zeros_like(c)) for b, c in gts]
    results = {}
    for method in self.cfg.methods:
      key = f'detection/{data.key}/{method}'
      dets = [im.dets[method] for im in images]
      ap = boxes_lib.detection_ap(dets, gts, len(data.class_names), 0.5)
      agnostic = boxes_lib.detection_ap([(b, s, np.zeros_like(c)) for b, s, c in dets], agnostic_gts, 1, 0.5)
      results[f'{key}/ap50'] = float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float('nan')
      results[f'{key}/ap50_agnostic'] = float(agnostic[0])
      for n in self.cfg.ar_at:
        results[f'{key}/ar@{n}'] = boxes_lib.average_recall([im.ranked[method] for im in images],
                                                            [g[0] for g in gts], n)
      results[f'{key}/proposals_per_image'] = float(np.mean([len(im.ranked[method]) for im in images]))
      results[f'{key}/detections_per_image'] = float(np.mean([len(d[0]) for d in dets]))
    return results


# ------------------------------------------------------------------------------------------------ overlays


def write_overlays(out_dir: str, data: _Data, images: list[_Image], methods: tuple[str, ...]) -> list[str]:
  """out_dir/000.png, ...: per image one row, ground truth then each method's detections, boxes coloured by
  class (overlays.palette) and labelled with the class name (and score). Call on one process only."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Rectangle
  os.makedirs(out_dir, exist_ok=True)
  colors = overlays.palette(1 + len(data.class_names))[1:] / 255.0
  paths = []
  for n, im in enumerate(images):
    image = sources.decode_image(data.source[im.index])
    panels = [('ground truth', im.gt[0], None, im.gt[1])] + [(m, *im.dets[m]) for m in methods]
    fig = Figure(figsize=(3.2 * len(panels), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, bxs, scores, classes) in enumerate(panels):
      ax = fig.add_subplot(1, len(panels), i + 1)
      ax.imshow(image, interpolation='nearest')
      for j, (box, c) in enumerate(zip(bxs, classes)):
        x0, y0, x1, y1 = box - 0.5  # imshow centres pixel (r, c) at (c, r).
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colors[c], linewidth=1.5))
        label = data.class_names[c] + ('' if scores is None else f' {scores[j]:.2f}')
        ax.text(x0, y0, label, fontsize=7, color='k', va='bottom',
                bbox=dict(facecolor=colors[c], edgecolor='none', pad=1, alpha=0.85))
      ax.set_title(title, fontsize=9)
      ax.axis('off')
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.02, wspace=0.05)
    path = os.path.join(out_dir, f'{n:03d}.png')
    fig.savefig(path)
    paths.append(path)
  return paths
