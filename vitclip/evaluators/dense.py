"""MaskCLIP-style dense probing: training-free semantic segmentation with the text classifier on patch features.

Per image: patch features of the image tower (`TwoTower.dense_image_features(images, method)`, L2-normalized)
· text classifier (class names x templates, CLIP ensembling) -> patch logits [h, w, K] -> per-class probabilities
softmax(temperature · logits) -> optional Prompt Denoising and Key Smoothing -> bilinear upsampling to the
ground-truth mask size -> argmax -> confusion matrix -> mIoU.

Methods (how the last ViT block computes, see vitclip.models.layers.BLOCK_MODES): 'none' (plain last-layer
patch tokens), 'maskclip' (Zhou et al. 2022: v -> out-projection -> residual -> MLP), 'reduced' (v ->
out-projection only: no residual, no MLP), 'sclip' (q-q + k-k attention), 'clearclip' (q-q attention, no
residual / MLP).

Refinements of MaskCLIP (Zhou et al. 2022), at patch level, per image (per window with sliding windows):
  * Prompt Denoising (PD): drop foreground class c if max over positions of softmax(100·logits)[c] < 0.5.
  * Key Smoothing (KS): pred_i = (1/N) Σ_j cos(k_i, k_j) pred_j over the N patches, k = the last block's keys.
    Each patch's key vector is L2-normalized over its channels, so the weight is the true cosine between
    patches. (The official code calls F.normalize(k) on [N, HW, C], which normalizes each channel over the
    patches, i.e. the wrong axis.) The 1/N keeps identical keys an average; it does not change the argmax.
Background (class 0) is either
  * 'prompt': one classifier row per name in `background_prompts` (each formatted with the templates); the
    background logit is the max over those rows (several background "classes" merged into one, as MaskCLIP
    and SCLIP do for VOC), or
  * 'threshold': no background text; background where the max foreground probability < `bg_threshold`
    (implemented as a constant score column, so KS smooths it like every other class).
Upsampling: the per-class scores (probabilities after PD / KS) are upsampled bilinearly (half-pixel centres,
as F.interpolate(align_corners=False)), never the argmax.

Images are resized to `input_size` (0: the model resolution), or to each of `input_sizes` (multi-scale
inference, as mmseg's multi-scale test: each size's per-class scores are upsampled to the mask and averaged
before the argmax; the sliding-window settings apply to every size larger than `slide_size`; measured on the
shapes model, (48, 96) beats either size alone). With `slide_size` > 0 the resized image is cut
into overlapping `slide_size` windows at `slide_stride`; each window goes through the model (the ViT
interpolates its position embeddings when `slide_size` differs from the training resolution) and its patch
scores are averaged where windows overlap (mmseg's slide inference, but averaged on the patch grid before the
one upsampling instead of per window after it: input_size, slide_size and slide_stride must be multiples of the
patch size; this keeps the scores small, [B, S / patch, S / patch, 1 + C]).

With `sweep`, every method x (KS+PD off, on) is computed from one jit'd function per batch (the shared trunk
of the image tower is deduplicated by XLA's common-subexpression elimination) and reported as
`dense/<dataset>/<method>[_kspd]/miou` (and `.../fg_iou`), next to `dense/<dataset>/all_background/miou` (the
trivial baseline).

Two diagnostics separate the two ways dense probing fails: `fg_iou`, the class-agnostic foreground IoU (is the
background found?), and `miou_true_background`, the mIoU of the main setting when every ground-truth background
pixel is given the background and every other pixel its best foreground class (are the shapes told apart?).
"""

import dataclasses
import functools
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vitclip import sharding, templates as templates_lib
from vitclip.data import sources
from vitclip.errors import ConfigError
from vitclip.evaluators import common, metrics, overlays
from vitclip.models.variants import decode_variant

METHODS = ('none', 'maskclip', 'reduced', 'sclip', 'clearclip')
BACKGROUNDS = ('prompt', 'threshold')
BACKGROUND_NAME = 'background'
PREFIX = 'config.evals.dense'


@dataclasses.dataclass(frozen=True)
class Variant:
  """One way to compute a prediction: a dense-feature method plus the MaskCLIP refinements."""
  method: str
  key_smoothing: bool = False
  prompt_denoising: bool = False

  @property
  def name(self) -> str:
    suffix = {(True, True): '_kspd', (True, False): '_ks', (False, True): '_pd', (False, False): ''}
    return self.method + suffix[(self.key_smoothing, self.prompt_denoising)]


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
  """How patch logits become per-class scores (see the module docstring).

  num_bg: leading background rows of the classifier ('prompt'; 0 for 'threshold').
  """
  background: str = 'prompt'
  num_bg: int = 1
  temperature: float = 100.0
  pd_threshold: float = 0.5
  bg_threshold: float = 0.5


# ------------------------------------------------------------------------------- patch-level refinements


def masked_softmax(logits: jax.Array, keep: jax.Array) -> jax.Array:
  """softmax over the last axis restricted to `keep` (broadcastable bool); all-dropped rows give zeros.

  logits: float [..., K] -> float32 [..., K].
  """
  logits = jnp.where(keep, logits.astype(jnp.float32), -jnp.inf)
  peak = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.where(keep, jnp.exp(logits - jnp.where(jnp.isfinite(peak), peak, 0.)), 0.)
  return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)


def prompt_denoising_keep(probs: jax.Array, threshold: float) -> jax.Array:
  """PD: which classes an image keeps. probs: float [B, N, C] per-patch class probabilities ->
  bool [B, 1, C], True where the class reaches `threshold` at some position."""
  return jnp.max(probs, axis=1, keepdims=True) >= threshold


def key_smoothing(scores: jax.Array, keys: jax.Array) -> jax.Array:
  """KS: scores [B, N, C], keys [B, N, W] -> [B, N, C], out_i = (1/N) Σ_j cos(k_i, k_j) scores_j.

  Keys are L2-normalized per patch over the W channels (a true cosine between patches).
  """
  k = common.jnp_l2_normalize(keys.astype(jnp.float32), axis=-1)
  weights = jnp.einsum('bnw,bmw->bnm', k, k, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('bnm,bmc->bnc', weights, scores, precision=jax.lax.Precision.HIGHEST) / keys.shape[1]


def class_scores(logits: jax.Array, keys: jax.Array | None, opts: ScoreOptions, *, ks: bool,
                 pd: bool) -> jax.Array:
  """Patch logits -> per-class scores with background at index 0.

  Args:
    logits: float [B, h, w, K] cosine similarities; K = opts.num_bg background rows, then C foreground.
    keys: float [B, h, w, W] keys of the last block (needed when ks).
    opts: background handling, temperature and thresholds.
    ks / pd: apply Key Smoothing / Prompt Denoising.

  Returns:
    float32 [B, h, w, 1 + C]: probabilities (prompt) or [bg_threshold, foreground probabilities] (threshold),
    smoothed when ks. The argmax is the prediction.
  """
  b, h, w, _ = logits.shape
  x = logits.reshape(b, h * w, -1).astype(jnp.float32) * opts.temperature
  if opts.background == 'prompt':
    x = jnp.concatenate([jnp.max(x[..., :opts.num_bg], axis=-1, keepdims=True), x[..., opts.num_bg:]], -1)
    fg = jnp.arange(x.shape[-1]) > 0
    probs = jax.nn.softmax(x, axis=-1)
    if pd:  # The background is never dropped, so every row keeps a finite softmax.
      keep = prompt_denoising_keep(probs, opts.pd_threshold) | ~fg
      probs = masked_softmax(x, keep)
  elif opts.background == 'threshold':
    probs = jax.nn.softmax(x, axis=-1)
    if pd:
      probs = masked_softmax(x, prompt_denoising_keep(probs, opts.pd_threshold))
    probs = jnp.concatenate([jnp.full((b, h * w, 1), opts.bg_threshold, jnp.float32), probs], -1)
  else:
    raise ConfigError(f'{PREFIX}.background={opts.background!r}; use one of {BACKGROUNDS}.')
  if ks:
    if keys is None:
      raise ValueError('key smoothing needs the keys of the last block.')
    probs = key_smoothing(probs, keys.reshape(b, h * w, -1))
  return probs.reshape(b, h, w, -1)


def slide_windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
  """Top-left corners (y, x) of the windows covering a size x size image (mmseg's slide inference grid:
  windows every `stride`, the last one flush with the border)."""
  n = max(size - window + stride - 1, 0) // stride + 1
  starts = sorted({min(i * stride, size - window) for i in range(n)})
  return [(y, x) for y in starts for x in starts]


def upsample_argmax(scores: jax.Array | list | tuple, size: tuple[int, int]) -> jax.Array:
  """scores: float [..., h, w, K], or a list / tuple of them, one per scale (grids may differ) ->
  int32 [..., H, W]: each bilinearly upsampled to `size`, summed over the scales, argmax over K."""
  total = 0.
  for s in scores if isinstance(scores, (list, tuple)) else [scores]:
    if tuple(s.shape[-3:-1]) != tuple(size):
      s = jax.image.resize(s, (*s.shape[:-3], *size, s.shape[-1]), method='bilinear')
    total = total + s
  return jnp.argmax(total, axis=-1).astype(jnp.int32)


_upsample_argmax_jit = jax.jit(upsample_argmax, static_argnums=1)


# ---------------------------------------------------------------------------------------- the batch step


def patch_logits(model, params, images: jax.Array, classifier: jax.Array, method: str) -> jax.Array:
  """images float [B, H, W, 3], classifier float32 [K, D] (L2-normalized rows) ->
  float32 [B, H / patch, W / patch, K] cosine similarities of every patch feature with every class."""
  feats = model.apply({'params': params}, images, method, method='dense_image_features')
  return jnp.einsum('bhwd,kd->bhwk', feats.astype(jnp.float32), classifier.astype(jnp.float32))


def dense_image_keys(model, params, images: jax.Array) -> jax.Array:
  """images float [B, H, W, 3] -> float32 [B, H / patch, W / patch, width]: the last block's keys per patch."""
  return model.apply({'params': params}, images, method='dense_image_keys').astype(jnp.float32)


def make_batch_fn(model, variants: Sequence[Variant], opts: ScoreOptions, *, patch: int, input_size: int,
                  slide_size: int = 0, slide_stride: int = 0):
  """Returns fn(params, images [B, S, S, 3], classifier [K, D]) -> {variant.name: float32 [B, g, g, 1 + C]},
  g = S / patch: the per-class scores of every patch.

  Every variant comes from one trace (one compiled function per batch shape): each method's dense features
  are computed once, the keys once if any variant smooths. With sliding windows (S, slide_size and
  slide_stride multiples of `patch`) each window is scored on its own (PD and KS per window, as mmseg runs the
  whole head per crop) and overlapping windows are averaged on the patch grid.
  """
  methods = sorted({v.method for v in variants}, key=METHODS.index)
  need_keys = any(v.key_smoothing for v in variants)

  def scores_of(params, images, classifier):
    logits = {m: patch_logits(model, params, images, classifier, m) for m in methods}
    keys = dense_image_keys(model, params, images) if need_keys else None
    return {v.name: class_scores(logits[v.method], keys, opts, ks=v.key_smoothing, pd=v.prompt_denoising)
            for v in variants}

  if not slide_size:
    return scores_of
  windows = slide_windows(input_size, slide_size, slide_stride)
  g, wg = input_size // patch, slide_size // patch  # Image and window sizes in patches.
  count = np.zeros((g, g, 1), np.float32)
  for y, x in windows:
    count[y // patch:y // patch + wg, x // patch:x // patch + wg] += 1

  def slide(params, images, classifier):
    b = images.shape[0]
    crops = jnp.stack([images[:, y:y + slide_size, x:x + slide_size] for y, x in windows], axis=1)
    crops = crops.reshape(b * len(windows), slide_size, slide_size, images.shape[-1])  # Batch-major.
    out = {}
    for name, s in scores_of(params, crops, classifier).items():
      s = s.reshape(b, len(windows), wg, wg, s.shape[-1])
      canvas = jnp.zeros((b, g, g, s.shape[-1]), jnp.float32)
      for i, (y, x) in enumerate(windows):
        canvas = canvas.at[:, y // patch:y // patch + wg, x // patch:x // patch + wg].add(s[:, i])
      out[name] = canvas / count
    return out

  return slide


# -------------------------------------------------------------------------------------------- settings


def scales(cfg, model_size: int, patch: int) -> list[tuple[int, int, int]]:
  """Validates the inference sizes; returns (input_size, slide_size, slide_stride) per inference scale."""
  sizes = tuple(cfg.input_sizes) or (cfg.input_size or model_size,)
  for size in sizes:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
      raise ConfigError(f'{PREFIX}.input_sizes={tuple(sizes)!r}: use positive integers (pixels), e.g. "(48, 96)".')
  if len(set(sizes)) != len(sizes):
    raise ConfigError(f'{PREFIX}.input_sizes={tuple(sizes)!r} repeats a size; list each size once.')
  return [_check_scale(cfg, size, patch) for size in sizes]


def _check_scale(cfg, input_size: int, patch: int) -> tuple[int, int, int]:
  """(input_size, slide_size, slide_stride) of one scale; slide_size 0 where one window covers the image."""
  slide_size, stride = cfg.slide_size, cfg.slide_stride
  if slide_size and slide_size >= input_size:
    slide_size = 0  # One window covers the image: plain inference.
  if slide_size:
    if slide_size % patch:
      raise ConfigError(f'{PREFIX}.slide_size={slide_size} is not a multiple of the patch size {patch}.')
    if stride <= 0 or stride > slide_size:
      raise ConfigError(f'{PREFIX}.slide_stride={stride}: use 0 < stride <= slide_size ({slide_size}).')
    if stride % patch:
      raise ConfigError(f'{PREFIX}.slide_stride={stride} is not a multiple of the patch size {patch}.')
  if input_size % patch:
    raise ConfigError(f'{PREFIX}.input_sizes / input_size: {input_size} px is not a multiple of the patch size '
                      f'{patch}; use multiples of it.')
  return input_size, slide_size, stride if slide_size else 0


def check_settings(cfg):
  """Method, background and its prompts (the settings that do not depend on the model)."""
  if cfg.method not in METHODS:
    raise ConfigError(f'{PREFIX}.method={cfg.method!r}; use one of {METHODS}.')
  if cfg.background not in BACKGROUNDS:
    raise ConfigError(f'{PREFIX}.background={cfg.background!r}; use one of {BACKGROUNDS}.')
  if cfg.background == 'prompt' and not tuple(cfg.background_prompts):
    raise ConfigError(f'{PREFIX}.background="prompt" needs at least one background_prompts entry (or use '
                      'background="threshold").')
  if cfg.num_overlays < 0:
    raise ConfigError(f'{PREFIX}.num_overlays={cfg.num_overlays}: use an integer >= 0 (0 = none).')


def build_classifier(ctx: common.Context, params, cfg, fg_names: Sequence[str],
                     templates: Sequence[str]) -> tuple[np.ndarray, int]:
  """-> (float32 [K, D] classifier: background rows ('prompt' only) then one row per foreground class,
  number of background rows)."""
  fg = common.build_classifier(ctx, params, fg_names, templates)
  if cfg.background == 'threshold':
    return fg, 0
  prompts = list(cfg.background_prompts)
  bg = common.build_classifier(ctx, params, prompts, templates)
  return np.concatenate([bg, fg]).astype(np.float32), len(prompts)


def read_mask(record, feature: str) -> np.ndarray:
  """record -> int [H, W] class mask (a trailing channel axis of size 1 is dropped)."""
  if feature not in record:
    raise KeyError(feature)
  mask = np.asarray(record[feature])
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != 2:
    raise sources.BadRecordError(f'mask feature {feature!r} has shape {mask.shape}; expected [H, W].')
  return mask


# -------------------------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class _Data:
  """One data set entry, opened once per run."""
  name: str
  key: str  # <dataset> of the metric keys.
  mask_feature: str
  source: object
  class_names: list[str]  # Background, then the foreground class of mask value k at index k.


class Dense(common.Evaluator):
  """mIoU (and pixel / mean accuracy, fg_iou, miou_true_background, per-class IoU) of each data set entry."""
  NAME = 'dense'
  NEEDS = 'a data set with an int [H, W] mask feature: 0 background, k + 1 class k'

  def __init__(self, ctx: common.Context, cfg):
    super().__init__(ctx, cfg)
    model_cfg = ctx.config.model.image
    patch = decode_variant(model_cfg.variant)['patch_size']
    self.templates = templates_lib.get_templates(cfg.templates, f'{PREFIX}.templates')
    self.main = Variant(cfg.method, bool(cfg.key_smoothing), bool(cfg.prompt_denoising))
    self.variants = [self.main]
    if cfg.sweep:
      self.variants += [v for m in METHODS for v in (Variant(m), Variant(m, True, True)) if v != self.main]
    opts = ScoreOptions(background=cfg.background,
                        num_bg=len(cfg.background_prompts) if cfg.background == 'prompt' else 0,
                        temperature=float(cfg.temperature), pd_threshold=float(cfg.pd_threshold),
                        bg_threshold=float(cfg.bg_threshold))
    # One jitted function per inference scale, built here once: every run and every data set reuses its
    # compiled programs.
    sizes = scales(cfg, model_cfg.image_size, patch)
    self.batch_fns = [jax.jit(make_batch_fn(ctx.model, self.variants, opts, patch=patch, input_size=size,
                                            slide_size=slide, slide_stride=stride),
                              out_shardings=sharding.batch_sharding(ctx.mesh))
                      for size, slide, stride in sizes]
    self.image_specs = [dataclasses.replace(ctx.image_spec(), size=size) for size, _, _ in sizes]

  @classmethod
  def default_feature(cls, cfg) -> str:
    return cfg.mask_feature

  @classmethod
  def check_config(cls, cfg, config, data_dir):
    check_settings(cfg)
    common.check_split(PREFIX, cfg.split)
    common.check_max_examples(PREFIX, cfg.max_examples)
    templates_lib.get_templates(cfg.templates, f'{PREFIX}.templates')
    try:
      patch = decode_variant(config.model.image.variant).get('patch_size')
    except ValueError:
      patch = None  # An unknown variant is reported by the model checks.
    if patch:
      scales(cfg, config.model.image.image_size, patch)
    for spec in cfg.datasets:
      name, mask_feature = common.parse_dataset(spec, cfg.mask_feature)
      info = common.check_dataset(f'{PREFIX}.datasets', name, f'{PREFIX}.split', cfg.split, config, data_dir)
      common.check_feature(f'{PREFIX}.datasets entry {spec!r} ({PREFIX}.mask_feature)', name, info,
                           (mask_feature,), 'mask')
      common.check_class_names(PREFIX, cfg, info, name, cfg.class_feature, f'{PREFIX}.class_feature')

  def setup(self, name: str, feature: str) -> _Data:
    source, info = common.load_source(self.ctx, name, self.cfg.split, self.cfg.max_examples)
    fg_names = common.classnames_for(self.cfg, info, name, self.cfg.class_feature)
    return _Data(name, common.metric_name(name), feature, source, [BACKGROUND_NAME] + list(fg_names))

  def evaluate(self, params, data: _Data) -> dict[str, float]:
    classifier, _ = build_classifier(self.ctx, params, self.cfg, data.class_names[1:], self.templates)
    classifier = jax.device_put(classifier, sharding.replicated(self.ctx.mesh))
    counts = _Counts.zeros([v.name for v in self.variants], len(data.class_names))
    for batch, valid in common.indexed_batches(data.source, functools.partial(self._convert, data), self.ctx):
      self._score_batch(params, classifier, data, batch, valid, counts)
    if counts.num_valid < len(data.source):
      logging.warning('dense/%s: skipped %d of %d unreadable records.', data.key,
                      len(data.source) - counts.num_valid, len(data.source))
    if counts.shown and self.ctx.workdir and jax.process_index() == 0:
      images = [sources.decode_image(data.source[i]) for i, _, _ in counts.shown]
      overlays.write_overlays(f'{self.ctx.workdir}/dense_overlays/{data.key}_{self.main.name}', images,
                              [p for _, p, _ in counts.shown], [g for _, _, g in counts.shown], data.class_names,
                              self.cfg.ignore_index)
    return self._results(data, counts)

  def _convert(self, data: _Data, record) -> dict[str, np.ndarray]:
    """record -> {'image<i>': float32 [S_i, S_i, 3]} at every inference size; the mask is checked here (so an
    unreadable one drops its image) and read again on the host by index."""
    image = sources.decode_image(record)
    try:
      mask = read_mask(record, data.mask_feature)
    except KeyError:
      raise ConfigError(f'data set {data.name!r} has no mask feature {data.mask_feature!r}; set '
                        f'{PREFIX}.mask_feature (or the dataset entry "name:feature").') from None
    if mask.shape != image.shape[:2]:
      raise sources.BadRecordError(f'mask shape {mask.shape} != image shape {image.shape[:2]}.')
    return {f'image{i}': image_spec.eval_view(image) for i, image_spec in enumerate(self.image_specs)}

  def _score_batch(self, params, classifier, data: _Data, batch, valid: np.ndarray, counts: '_Counts'):
    """Adds one batch's predictions of every variant (and the two baselines) to `counts`."""
    variants, ignore, num_classes = self.variants, self.cfg.ignore_index, len(data.class_names)
    scores = [{k: np.asarray(common.gather(v)) for k, v in fn(params, batch[f'image{i}'], classifier).items()}
              for i, fn in enumerate(self.batch_fns)]  # Per scale: {variant name: [B, g, g, 1 + C]}.
    index = common.gather_index(batch)
    rows = np.flatnonzero(valid)
    counts.num_valid += len(rows)
    masks = {int(i): read_mask(data.source[int(index[i])], data.mask_feature) for i in rows}
    # Group the rows by mask size: one upsampling call per size (a single group for fixed-size data sets).
    groups: dict[tuple[int, int], list[int]] = {}
    for i in rows:
      groups.setdefault(masks[int(i)].shape, []).append(int(i))
    for size, group in groups.items():
      stacked = [np.stack([s[v.name][group] for v in variants]) for s in scores]  # [V, n, g, g, 1 + C]
      preds = np.asarray(_upsample_argmax_jit(stacked, size))  # [V, n, H, W]
      gt = np.stack([masks[i] for i in group])
      for v, p in zip(variants, preds):
        counts.confusions[v.name] += metrics.confusion_matrix(p, gt, num_classes, ignore)
      counts.all_bg += metrics.confusion_matrix(np.zeros_like(gt), gt, num_classes, ignore)
      fg_pred = np.asarray(_upsample_argmax_jit([s[0, ..., 1:] for s in stacked], size)) + 1  # Best class.
      counts.true_bg += metrics.confusion_matrix(metrics.with_true_background(fg_pred, gt), gt, num_classes,
                                                 ignore)
      for j, i in enumerate(group):
        if len(counts.shown) < self.cfg.num_overlays:
          counts.shown.append((int(index[i]), preds[0, j], masks[i]))

  def _results(self, data: _Data, counts: '_Counts') -> dict[str, float]:
    key = data.key
    m = metrics.segmentation_metrics(counts.confusions[self.main.name])
    results = {f'dense/{key}/miou': m['miou'], f'dense/{key}/pixel_acc': m['pixel_acc'],
               f'dense/{key}/mean_acc': m['mean_acc'], f'dense/{key}/fg_iou': m['fg_iou'],
               f'dense/{key}/miou_true_background': metrics.segmentation_metrics(counts.true_bg)['miou']}
    for cls, iou in zip(data.class_names, m['iou']):
      if not np.isnan(iou):
        results[f'dense/{key}/iou/{re.sub(r"[^A-Za-z0-9.+-]+", "_", cls)}'] = float(iou)
    if self.cfg.sweep:
      for v in self.variants:
        sm = metrics.segmentation_metrics(counts.confusions[v.name])
        results[f'dense/{key}/{v.name}/miou'], results[f'dense/{key}/{v.name}/fg_iou'] = sm['miou'], sm['fg_iou']
    results[f'dense/{key}/all_background/miou'] = metrics.segmentation_metrics(counts.all_bg)['miou']
    return results


@dataclasses.dataclass
class _Counts:
  """What one data set's pass accumulates: confusion matrices int64 [C, C] per variant, of the all-background
  baseline and of the main variant with the true background; the examples shown as overlays."""
  confusions: dict[str, np.ndarray]
  all_bg: np.ndarray
  true_bg: np.ndarray
  num_valid: int = 0
  shown: list = dataclasses.field(default_factory=list)  # (record index, prediction [H, W], mask [H, W])

  @classmethod
  def zeros(cls, variant_names: Sequence[str], num_classes: int) -> '_Counts':
    zero = lambda: np.zeros((num_classes, num_classes), np.int64)
    return cls({n: zero() for n in variant_names}, zero(), zero())
