r"""MaskCLIP+ (Zhou et al. 2022): a segmentation model trained on a contrastive model's own pseudo-masks.

  python -m vitclip.segmentation --config configs/maskclip_plus_shapes.py --workdir OUT --config.model=DIR

Stages, each written under OUT and skipped by a rerun once its results.json exists:

  maskclip/    the training-free baseline: the dense evaluator's configured setting (`config.dense`: method,
               Key Smoothing, Prompt Denoising, background prompts, input sizes) on every `eval_splits` split.
  round_0/     pseudo-masks of the first `train_examples` unlabelled training images from that same setting
               (per-class scores averaged over the input sizes at the image's own size -> argmax; pixels whose
               confidence is below `confidence` get `ignore_index`), then a `Segmenter` (DIR's image tower + a
               head) trained on them with a pixel cross-entropy that skips ignored pixels.
  round_r/     (r = 1 .. `rounds`) self-training: pseudo-masks from the previous round's segmentation model
               (softmax probabilities; confident where the top one reaches `self_confidence`; also the most
               confident `self_class_fraction` of each predicted class's pixels, whatever their confidence), training
               continues from that model with a fresh optimizer.

Each round stores pseudo_masks.npy (uint8 [N, H, W]) with pseudo_masks.json (written after it: the round's masks
are complete), the trained params (checkpoints/, params-only) and results.json (validation / test metrics of
the dense evaluator's kind, mIoU and fg_iou among them, the pseudo-masks' coverage and, where the training
images have masks, their accuracy). Overlays of the first `num_overlays` images of every split per stage go
to <stage>/overlays/<split>/. OUT/results.json and OUT/report.md gather every stage.

Confidence of MaskCLIP scores: with Key Smoothing the per-class scores are cosine-weighted averages of
probabilities, not probabilities, so the confidence is the top score's share of the non-negative score mass,
max_k s_k / Σ_k max(s_k, 0); for softmax probabilities that is the top probability itself.
"""

import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from jax.sharding import Mesh
from ml_collections import config_flags

from vitclip import api, checkpoint as checkpoint_lib, config as config_lib, entry, sharding
from vitclip.data import generated, pipeline, sources
from vitclip.errors import ConfigError
from vitclip.evaluators import common, dense, metrics, overlays
from vitclip.models.variants import decode_variant
from vitclip.models.vit import DENSE_MODES, VisionTransformer
from vitclip.sweep import write_json

HEADS = ('decoder', 'aspp')
MASKCLIP = 'maskclip'
PSEUDO_FILE, PSEUDO_INFO = 'pseudo_masks.npy', 'pseudo_masks.json'
RESULTS_FILE, REPORT_FILE = 'results.json', 'report.md'

# ------------------------------------------------------------------------------------------------- model


class ConvBlock(nn.Module):
  """3x3 conv (dilation `rate`, stride `stride`) -> LayerNorm over channels -> ReLU. [B, H, W, C] -> [B, H', W',
  channels]. LayerNorm rather than BatchNorm: no batch statistics to carry through training and resumption."""
  channels: int
  kernel: int = 3
  stride: int = 1
  rate: int = 1

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.channels, (self.kernel,) * 2, strides=self.stride, kernel_dilation=self.rate,
                padding='SAME', use_bias=False)(x)
    return nn.relu(nn.LayerNorm()(x))


def _resize(x, size: tuple[int, int]):
  """Bilinear resize of [B, h, w, C] to [B, *size, C] (half-pixel centres); no-op at that size."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method='bilinear')


class CascadedUpsampler(nn.Module):
  """TransUNet's cascaded upsampler (Chen et al. 2021): each stage doubles the resolution of the patch features,
  concatenates a skip feature of that resolution and applies two conv blocks. The skips come from a light
  convolutional path over the pixels (full resolution, then stride-2 convs), the role TransUNet's CNN encoder
  plays: the ViT sees 8 x 8 or 16 x 16 patches, the skips carry the edges inside them.

  feats [B, g, g, D], images [B, S, S, 3] -> [B, g·2^n, g·2^n, channels[-1]], n = len(channels).
  """
  channels: Sequence[int]

  @nn.compact
  def __call__(self, feats, images):
    g, n = feats.shape[1], len(self.channels)
    skips = [ConvBlock(max(self.channels[-1] // 2, 8))(_resize(images, (g << n,) * 2))]  # Finest first.
    for c in reversed(self.channels[:-1]):
      skips.append(ConvBlock(max(c // 2, 8), stride=2)(skips[-1]))
    x = ConvBlock(self.channels[0])(feats)
    for c, skip in zip(self.channels, reversed(skips)):
      x = jnp.concatenate([_resize(x, skip.shape[1:3]), skip], axis=-1)
      x = ConvBlock(c)(ConvBlock(c)(x))
    return x


class ASPP(nn.Module):
  """DeepLab v3's atrous spatial pyramid pooling (Chen et al. 2017) on the patch grid: a 1x1 conv, one 3x3 conv
  per atrous rate and an image-pooling branch, concatenated and fused by a 1x1 conv. Rates are in patches.

  feats [B, g, g, D] -> [B, g, g, channels].
  """
  channels: int
  rates: Sequence[int]

  @nn.compact
  def __call__(self, feats):
    branches = [ConvBlock(self.channels, kernel=1)(feats)]
    branches += [ConvBlock(self.channels, rate=r)(feats) for r in self.rates]
    pooled = ConvBlock(self.channels, kernel=1)(jnp.mean(feats, axis=(1, 2), keepdims=True))
    branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    return ConvBlock(self.channels, kernel=1)(jnp.concatenate(branches, axis=-1))


class Segmenter(nn.Module):
  """Image tower (param subtree 'img', as in TwoTower) -> its patch features (dense mode `features`) -> head ->
  per-pixel class logits. Class 0 is the background.

  images float [B, S, S, 3] (normalised) -> float32 logits [B, S, S, num_classes].
  """
  img: VisionTransformer
  num_classes: int
  head: str = 'decoder'
  features: str = 'none'
  decoder_channels: Sequence[int] = (64, 32, 16)
  aspp_channels: int = 64
  aspp_rates: Sequence[int] = (1, 2, 3)
  train_tower: bool = True

  @nn.compact
  def __call__(self, images):
    feats = self.img.dense_features(images, self.features).astype(jnp.float32)
    if not self.train_tower:  # A frozen tower needs no backward pass.
      feats = jax.lax.stop_gradient(feats)
    if self.head == 'decoder':
      x = CascadedUpsampler(tuple(self.decoder_channels), name='head')(feats, images)
    elif self.head == 'aspp':
      x = ASPP(self.aspp_channels, tuple(self.aspp_rates), name='head')(feats)
    else:
      raise ValueError(f'Unknown segmentation head {self.head!r}; use one of {HEADS}.')
    logits = nn.Conv(self.num_classes, (1, 1), name='classifier')(x)
    return _resize(logits, images.shape[1:3]).astype(jnp.float32)


# --------------------------------------------------------------------------------- pseudo-masks and loss


def confidence(scores: np.ndarray) -> np.ndarray:
  """scores float [..., K] -> float [...]: max_k s_k / Σ_k max(s_k, 0) (the top probability for probabilities;
  module docstring)."""
  scores = np.asarray(scores, np.float32)
  return scores.max(-1) / np.maximum(np.clip(scores, 0, None).sum(-1), 1e-12)


def pseudo_labels(scores: np.ndarray, threshold: float, ignore_index: int,
                  class_fraction: float = 0.0) -> np.ndarray:
  """Per-class scores float [..., H, W, K] -> uint8 [..., H, W]: argmax, `ignore_index` where the confidence is
  below `threshold`, except (class_fraction > 0) the most confident `class_fraction` of each predicted class's
  pixels, which are kept whatever their confidence: a class the model predicts less confidently than the
  background still gets pseudo-labels (a single global threshold can keep background pixels only)."""
  labels = np.argmax(scores, axis=-1).astype(np.uint8)
  conf = confidence(scores)
  keep = conf >= threshold
  if class_fraction > 0:
    for c in np.unique(labels):
      of_class = labels == c
      keep |= of_class & (conf >= np.quantile(conf[of_class], 1 - class_fraction))
  labels[~keep] = ignore_index
  return labels


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int) -> jax.Array:
  """Mean softmax cross-entropy over the pixels whose label is not `ignore_index` (0 when none is).

  logits float [B, H, W, K], labels int [B, H, W] -> float32 scalar.
  """
  keep = labels != ignore_index
  safe = jnp.where(keep, labels, 0).astype(jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  return jnp.sum(jnp.where(keep, ce, 0.)) / jnp.maximum(jnp.sum(keep), 1)


def save_pseudo_masks(directory: str, masks: np.ndarray, info: dict):
  """Writes directory/pseudo_masks.npy, then pseudo_masks.json: the JSON marks the masks complete."""
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, PSEUDO_FILE + '.tmp.npy')
  np.save(tmp, masks)
  os.replace(tmp, os.path.join(directory, PSEUDO_FILE))
  write_json(os.path.join(directory, PSEUDO_INFO), info)


def load_pseudo_masks(directory: str, count: int) -> tuple[np.ndarray, dict] | None:
  """(uint8 [count, H, W], info) of a round written by `save_pseudo_masks`, or None if absent or incomplete."""
  info_path = os.path.join(directory, PSEUDO_INFO)
  if not os.path.isfile(info_path):
    return None
  masks = np.load(os.path.join(directory, PSEUDO_FILE))
  if len(masks) != count:
    logging.warning('%s holds %d masks, not %d: computing them again.', directory, len(masks), count)
    return None
  with open(info_path) as f:
    return masks, json.load(f)


def pseudo_stats(labels: np.ndarray, truth: np.ndarray | None, num_classes: int, ignore_index: int) -> dict:
  """Coverage (fraction of pixels kept) and, given true masks, the kept pixels' accuracy and the mIoU of the
  pseudo-masks with unconfident pixels counted as background."""
  kept = labels != ignore_index
  out = {'coverage': float(kept.mean())}
  if truth is not None:
    out['accuracy'] = float((labels[kept] == truth[kept]).mean()) if kept.any() else 0.0
    conf = metrics.confusion_matrix(np.where(kept, labels, 0), truth, num_classes, ignore_index)
    out['miou'] = metrics.segmentation_metrics(conf)['miou']
  return out


# ------------------------------------------------------------------------------------------------ setup


@dataclasses.dataclass
class Setup:
  """Everything built (and validated) before the first expensive step."""
  mc: Any  # The MaskCLIP+ config.
  config: Any  # The model directory's config with mc.dense as its dense evaluation and mc's data dir.
  ctx: common.Context
  params: dict  # The contrastive model's params.
  segmenter: Segmenter
  class_names: list[str]  # Background, then one per foreground class.
  spec: pipeline.ImageSpec  # The segmenter's input: image_size, the model's normalisation.
  # (seg params, images [B, S, S, 3], size_like [1, H, W, 1]) -> float32 softmax [B, H, W, K] at H x W; jitted.
  predict: Any = None
  cache: dict = dataclasses.field(default_factory=dict)  # Built once per run: the train step, the pseudo-mask
  # evaluator (each a jitted function that a second build would trace and compile again).

  def __post_init__(self):
    segmenter = self.segmenter
    def probs(params, images, size_like):
      return jax.nn.softmax(_resize(segmenter.apply({'params': params}, images), size_like.shape[1:3]), -1)
    self.predict = jax.jit(probs)


def check_config(mc, where: str = 'config'):
  """Settings that need no model directory: raises one ConfigError listing every problem with its fix."""
  problems = []
  def need(ok, field, fix):
    if not ok:
      problems.append(f'{where}.{field}={mc[field]!r}: {fix}')
  def positive_int(field):
    need(isinstance(mc[field], int) and not isinstance(mc[field], bool) and mc[field] > 0, field,
         'use an integer > 0.')
  need(bool(mc.model), 'model', 'name a model directory (a training workdir or a converted model): '
       f'--{where}.model=DIR.')
  need(mc.head in HEADS, 'head', f'use one of {HEADS}.')
  need(mc.features in DENSE_MODES, 'features', f'use one of {sorted(DENSE_MODES)}.')
  for field in ('confidence', 'self_confidence', 'self_class_fraction'):
    need(isinstance(mc[field], (int, float)) and 0 <= mc[field] <= 1, field, 'use a value in [0, 1].')
  need(isinstance(mc.rounds, int) and mc.rounds >= 0, 'rounds', 'use an integer >= 0 (self-training rounds).')
  for field in ('steps', 'batch_size', 'train_examples', 'log_every'):
    positive_int(field)
  need(mc.lr > 0, 'lr', 'use a learning rate > 0.')
  need(mc.tower_lr_multiplier >= 0, 'tower_lr_multiplier', 'use a value >= 0 (0 freezes the image tower).')
  need(0 <= mc.warmup_steps < mc.steps, 'warmup_steps', f'use 0 <= warmup_steps < steps ({mc.steps}).')
  need(mc.num_overlays >= 0, 'num_overlays', 'use an integer >= 0.')
  need(mc.eval_examples >= 0, 'eval_examples', 'use an integer >= 0 (0 = the whole split).')
  need(mc.image_size >= 0, 'image_size', 'use 0 (the model resolution) or a size in pixels.')
  need(tuple(mc.decoder_channels) and all(isinstance(c, int) and c > 0 for c in mc.decoder_channels),
       'decoder_channels', 'use positive integers, one per upsampling stage, e.g. "(64, 32, 16)".')
  need(mc.aspp_channels > 0, 'aspp_channels', 'use an integer > 0.')
  need(all(isinstance(r, int) and r > 0 for r in mc.aspp_rates), 'aspp_rates', 'use positive integers.')
  need(tuple(mc.eval_splits) and all(isinstance(s, str) and s for s in mc.eval_splits), 'eval_splits',
       'name the splits to evaluate, e.g. "(\'validation\', \'test\')".')
  need(len(mc.dense.datasets) == 1, 'dense', f'dense.datasets={tuple(mc.dense.datasets)!r}: name exactly one '
       'data set with masks (its train split gives the unlabelled images).')
  need(0 < mc.dense.ignore_index < 256, 'dense', f'dense.ignore_index={mc.dense.ignore_index}: pseudo-masks are '
       'uint8, use a value in [1, 255] above every class index.')
  if problems:
    raise ConfigError('\n'.join(problems))


def model_config(mc) -> ml_collections.ConfigDict:
  """The model directory's config with the dense evaluation and data location of `mc`."""
  try:
    config = config_lib.load_model_dir(mc.model, ml_collections.ConfigDict())
  except FileNotFoundError as e:
    raise ConfigError(f'config.model={mc.model!r}: {e}') from None
  with config.unlocked():
    config.evals.dense = ml_collections.ConfigDict(mc.dense.to_dict())
    config.evals.batch_size = mc.eval_batch_size
    if mc.data_dir:
      config.data.data_dir = mc.data_dir
  return config


def check_data(mc, config):
  """The dense setting (dense evaluator's checks) and every split this run reads, before anything is built."""
  data_dir = sources.data_dir(config)
  dense.Dense.check_config(config.evals.dense, config, data_dir)
  name, _ = common.parse_dataset(mc.dense.datasets[0], mc.dense.mask_feature)
  for field, split in [('train_split', mc.train_split)] + [('eval_splits', s) for s in mc.eval_splits]:
    common.check_dataset('config.dense.datasets', name, f'config.{field}', split, config, data_dir)
  patch = decode_variant(config.model.image.variant)['patch_size']
  if (mc.image_size or config.model.image.image_size) % patch:
    raise ConfigError(f'config.image_size={mc.image_size}: the segmenter\'s input must be a multiple of the patch '
                      f'size {patch}.')


def build(mc, workdir: str, devices=None) -> Setup:
  """Validates `mc` and the model directory, prepares generated data, loads the model."""
  check_config(mc)
  config = model_config(mc)
  try:
    checkpoint_lib.step_dir(mc.model)
  except FileNotFoundError as e:
    raise ConfigError(f'config.model={mc.model!r}: {e}') from None
  check_data(mc, config)
  data_dir = sources.data_dir(config)
  name = mc.dense.datasets[0]
  if generated.is_generated(name):
    generated.prepare(name, config.data, data_dir)
  devices = devices or jax.devices()
  model, params, tokenizer, _ = api.load(mc.model, devices=devices)
  ctx = common.Context(config, model, tokenizer, Mesh(np.asarray(devices), ('data',)), workdir, data_dir)
  _, info = common.load_source(ctx, name, mc.train_split)
  fg = common.classnames_for(config.evals.dense, info, name, config.evals.dense.class_feature)
  segmenter = Segmenter(model.img, 1 + len(fg), mc.head, mc.features, tuple(mc.decoder_channels),
                        mc.aspp_channels, tuple(mc.aspp_rates), train_tower=mc.tower_lr_multiplier > 0)
  spec = dataclasses.replace(ctx.image_spec(), size=mc.image_size or config.model.image.image_size)
  return Setup(mc, config, ctx, params, segmenter, [dense.BACKGROUND_NAME] + list(fg), spec)


# --------------------------------------------------------------------------------------------- the data


def read_images(source, count: int, mask_feature: str) -> tuple[np.ndarray, np.ndarray | None]:
  """The first `count` records -> (uint8 images [N, H, W, 3], uint8 masks [N, H, W] or None without masks)."""
  images = np.stack([sources.decode_image(source[i]) for i in range(count)])
  try:
    masks = np.stack([dense.read_mask(source[i], mask_feature) for i in range(count)]).astype(np.uint8)
  except KeyError:
    masks = None
  return images, masks


def _batches(n: int, size: int):
  for start in range(0, n, size):
    yield np.arange(start, min(start + size, n))


def _put(s: Setup, x: np.ndarray) -> jax.Array:
  """Host rows -> padded to a multiple of ctx.batch_size, sharded over the batch axis."""
  pad = -len(x) % s.ctx.batch_size
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
  return jax.device_put(x, sharding.batch_sharding(s.ctx.mesh))


@jax.jit
def _mean_upsampled(scores: list, size_like: jax.Array) -> jax.Array:
  """Per-scale scores [B, g_i, g_i, K] -> their mean, each resized bilinearly to size_like's [H, W]."""
  size = size_like.shape[1:3]
  return sum(_resize(s, size) for s in scores) / len(scores)


def maskclip_scores(s: Setup, images: np.ndarray) -> np.ndarray:
  """The dense evaluator's setting on uint8 images [N, H, W, 3] -> float32 per-class scores [N, H, W, K]."""
  if 'maskclip' not in s.cache:
    ev = dense.Dense(s.ctx, s.config.evals.dense)
    classifier, _ = dense.build_classifier(s.ctx, s.params, s.config.evals.dense, s.class_names[1:],
                                           ev.templates)
    s.cache['maskclip'] = ev, jax.device_put(classifier, sharding.replicated(s.ctx.mesh))
  ev, classifier = s.cache['maskclip']
  out = []
  for rows in _batches(len(images), s.ctx.batch_size):
    per_scale = []
    for fn, spec in zip(ev.batch_fns, ev.image_specs):
      views = _put(s, np.stack([spec.eval_view(images[i]) for i in rows]))
      per_scale.append(fn(s.params, views, classifier)[ev.main.name])
    shape = jnp.zeros((1, *images.shape[1:3], 1))
    out.append(np.asarray(_mean_upsampled(per_scale, shape))[:len(rows)])
  return np.concatenate(out)


def segmenter_probs(s: Setup, seg_params, images: np.ndarray, size: tuple[int, int]):
  """Softmax probabilities of the segmenter on uint8 images [N, H, W, 3] at mask size: yields float32
  [b, *size, K] per batch."""
  for rows in _batches(len(images), s.ctx.batch_size):
    views = _put(s, np.stack([s.spec.eval_view(images[i]) for i in rows]))
    yield np.asarray(s.predict(seg_params, views, jnp.zeros((1, *size, 1))))[:len(rows)]



# ---------------------------------------------------------------------------------------------- training


def init_segmenter(s: Setup) -> dict:
  """Fresh head params, the image tower from the contrastive model: {'img', 'head', 'classifier'}, replicated."""
  shape = (s.ctx.batch_size, s.spec.size, s.spec.size, 3)
  init = jax.jit(lambda r: s.segmenter.init(r, jnp.zeros(shape))['params'],
                 out_shardings=sharding.replicated(s.ctx.mesh))
  return {**init(jax.random.key(s.mc.seed)), 'img': s.params['img']}


def make_optimizer(mc) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay over `steps`; the image tower at `tower_lr_multiplier` x lr
  (0: frozen), the head at lr; global-norm clipping at 1."""
  schedule = optax.warmup_cosine_decay_schedule(0., mc.lr, mc.warmup_steps, mc.steps)
  def adamw(scale):
    return optax.adamw(lambda t: scale * schedule(t), weight_decay=mc.weight_decay)
  tower = adamw(mc.tower_lr_multiplier) if mc.tower_lr_multiplier > 0 else optax.set_to_zero()
  labels = lambda p: {k: jax.tree.map(lambda _: 'img' if k == 'img' else 'head', v) for k, v in p.items()}
  return optax.chain(optax.clip_by_global_norm(1.0), optax.multi_transform({'img': tower, 'head': adamw(1.)},
                                                                           labels))


def make_train_step(s: Setup, tx):
  """jit of (params, opt_state, images uint8 [B, S, S, 3], labels uint8 [B, H, W]) -> (params, opt_state,
  loss); params and optimizer state are donated."""
  ignore = s.config.evals.dense.ignore_index

  def loss_fn(params, images, labels):
    logits = s.segmenter.apply({'params': params}, s.spec.to_model(images))
    return pixel_cross_entropy(_resize(logits, labels.shape[1:3]), labels, ignore)

  def step(params, opt_state, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def train_round(s: Setup, params, images: np.ndarray, labels: np.ndarray, round_index: int) -> tuple[dict, list]:
  """`steps` steps on random batches of (images uint8 [N, S, S, 3] at the segmenter's size, labels uint8
  [N, H, W]), flipped horizontally at random (image and mask together) when `flip`. Returns (params, log rows)."""
  mc = s.mc
  tx = make_optimizer(mc)
  if 'step' not in s.cache:
    s.cache['step'] = make_train_step(s, tx)
  step_fn = s.cache['step']
  params = jax.tree.map(jnp.copy, params)  # Donated below: the caller's params stay valid.
  opt_state = jax.jit(tx.init)(params)
  rng = np.random.default_rng([mc.seed, round_index])
  batch_sharding = sharding.batch_sharding(s.ctx.mesh)
  log, total, tic = [], 0., time.perf_counter()
  for step in range(1, mc.steps + 1):
    idx = rng.choice(len(images), mc.batch_size, replace=len(images) < mc.batch_size)
    x, y = images[idx], labels[idx]
    if mc.flip:
      f = rng.random(len(idx)) < 0.5
      x[f], y[f] = x[f, :, ::-1], y[f, :, ::-1]
    params, opt_state, loss = step_fn(params, opt_state, jax.device_put(x, batch_sharding),
                                      jax.device_put(y, batch_sharding))
    total += float(loss)
    if step % mc.log_every == 0 or step == mc.steps:
      n = mc.log_every if step % mc.log_every == 0 else step % mc.log_every
      log.append({'step': step, 'loss': total / n, 'seconds': time.perf_counter() - tic})
      logging.info('round %d step %d/%d: loss %.4f', round_index, step, mc.steps, total / n)
      total = 0.
  return params, log


# -------------------------------------------------------------------------------------------- evaluation


def summarise(conf: np.ndarray, class_names: Sequence[str]) -> dict:
  """Confusion matrix [K, K] -> the dense evaluator's metrics (per-class IoU by name)."""
  m = metrics.segmentation_metrics(conf)
  out = {k: m[k] for k in ('miou', 'fg_iou', 'pixel_acc', 'mean_acc')}
  out['iou'] = {n: float(v) for n, v in zip(class_names, m['iou']) if not np.isnan(v)}
  return out


def eval_source(s: Setup, split: str):
  name, feature = common.parse_dataset(s.mc.dense.datasets[0], s.mc.dense.mask_feature)
  source, _ = common.load_source(s.ctx, name, split, s.mc.eval_examples)
  return source, feature


def evaluate_segmenter(s: Setup, seg_params, split: str, overlay_dir: str) -> dict:
  """The segmenter's metrics on `split` (first `eval_examples`), overlays of its first `num_overlays` images."""
  source, feature = eval_source(s, split)
  images, masks = read_images(source, len(source), feature)
  if masks is None:
    raise ConfigError(f'split {split!r} has no mask feature {feature!r}; set config.dense.mask_feature.')
  k, ignore = len(s.class_names), s.config.evals.dense.ignore_index
  conf, preds = np.zeros((k, k), np.int64), []
  for rows, probs in zip(_batches(len(images), s.ctx.batch_size),
                         segmenter_probs(s, seg_params, images, masks.shape[1:3])):
    pred = probs.argmax(-1)
    conf += metrics.confusion_matrix(pred, masks[rows], k, ignore)
    preds.extend(pred[:max(s.mc.num_overlays - len(preds), 0)])
  if preds and jax.process_index() == 0:
    overlays.write_overlays(overlay_dir, images[:len(preds)], preds, masks[:len(preds)], s.class_names, ignore)
  return summarise(conf, s.class_names)


def evaluate_maskclip(s: Setup, split: str, overlay_dir: str) -> dict:
  """The dense evaluator itself, with its configured setting, on `split` (first `eval_examples`)."""
  cfg = ml_collections.ConfigDict(s.config.evals.dense.to_dict())
  cfg.update(split=split, max_examples=s.mc.eval_examples, num_overlays=s.mc.num_overlays, sweep=False)
  scratch = overlay_dir + '.tmp'
  ev = dense.Dense(dataclasses.replace(s.ctx, workdir=scratch), cfg)
  res = ev.run(s.params)
  key = common.metric_name(ev.data[0].name)
  written = os.path.join(scratch, 'dense_overlays', f'{key}_{ev.main.name}')
  if os.path.isdir(written):
    os.makedirs(os.path.dirname(overlay_dir), exist_ok=True)
    os.replace(written, overlay_dir)
  shutil.rmtree(scratch, ignore_errors=True)
  prefix = f'dense/{key}/'
  out = {m: res[prefix + m] for m in ('miou', 'fg_iou', 'pixel_acc', 'mean_acc')}
  out['iou'] = {k[len(prefix) + 4:]: v for k, v in res.items() if k.startswith(prefix + 'iou/')}
  return out


# ------------------------------------------------------------------------------------------------ rounds


def _read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def round_dir(workdir: str, r: int) -> str:
  return os.path.join(workdir, f'round_{r}')


def make_pseudo_masks(s: Setup, r: int, seg_params, images: np.ndarray, truth) -> tuple[np.ndarray, dict]:
  """Round 0: from the dense evaluator's setting; round r >= 1: from the previous round's segmenter."""
  mc, ignore, k = s.mc, s.config.evals.dense.ignore_index, len(s.class_names)
  size = images.shape[1:3]
  if r == 0:
    threshold = mc.confidence
    labels = np.concatenate([pseudo_labels(maskclip_scores(s, images[rows]), threshold, ignore)
                             for rows in _batches(len(images), 4 * s.ctx.batch_size)])
  else:
    threshold = mc.self_confidence
    # Over every image at once: the per-class fraction is of the class's pixels in the whole set.
    labels = pseudo_labels(np.concatenate(list(segmenter_probs(s, seg_params, images, size))), threshold, ignore,
                           mc.self_class_fraction)
  source = 'maskclip' if r == 0 else f'round_{r - 1}'
  info = {'source': source, 'threshold': threshold, 'count': len(labels),
          **pseudo_stats(labels, truth, k, ignore)}
  return labels, info


def run(mc, workdir: str, devices=None, invocation: str = '') -> dict[str, float]:
  """Every stage (module docstring); finished stages are read back. Returns the flat results."""
  s = build(mc, workdir, devices)
  os.makedirs(workdir, exist_ok=True)
  stages = {}
  base_path = os.path.join(workdir, MASKCLIP, RESULTS_FILE)
  stages[MASKCLIP] = _read_json(base_path)
  if stages[MASKCLIP] is None:
    stages[MASKCLIP] = {split: evaluate_maskclip(s, split, os.path.join(workdir, MASKCLIP, 'overlays', split))
                        for split in mc.eval_splits}
    write_json(base_path, stages[MASKCLIP])
  name, feature = common.parse_dataset(mc.dense.datasets[0], mc.dense.mask_feature)
  source, _ = common.load_source(s.ctx, name, mc.train_split, mc.train_examples)
  images, truth = read_images(source, len(source), feature)
  views = np.stack([s.spec.resize(im) for im in images])  # The segmenter's input size, uint8.
  seg_params = None
  for r in range(mc.rounds + 1):
    rdir = round_dir(workdir, r)
    done = _read_json(os.path.join(rdir, RESULTS_FILE))
    if done is not None:
      stages[f'round_{r}'], seg_params = done, None  # Restored only if a later round needs them.
      continue
    if seg_params is None:
      seg_params = init_segmenter(s) if r == 0 else restore_segmenter(s, round_dir(workdir, r - 1))
    stored = load_pseudo_masks(rdir, len(images))
    labels, info = stored or make_pseudo_masks(s, r, seg_params, images, truth)
    if stored is None:
      save_pseudo_masks(rdir, labels, info)
    seg_params, log = train_round(s, seg_params, views, labels, r)
    shutil.rmtree(os.path.join(rdir, 'checkpoints'), ignore_errors=True)  # A round trained again replaces it.
    checkpoint_lib.save_params(rdir, seg_params)
    stages[f'round_{r}'] = {split: evaluate_segmenter(s, seg_params, split, os.path.join(rdir, 'overlays', split))
                            for split in mc.eval_splits}
    stages[f'round_{r}'].update(pseudo=info, train=log)
    write_json(os.path.join(rdir, RESULTS_FILE), stages[f'round_{r}'])
  results = flat_results(stages, mc.eval_splits)
  write_json(os.path.join(workdir, RESULTS_FILE), results)
  with open(os.path.join(workdir, REPORT_FILE), 'w') as f:
    f.write(report(stages, mc, invocation))
  return results


def restore_segmenter(s: Setup, directory: str) -> dict:
  abstract = jax.eval_shape(lambda: init_segmenter(s))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(s.ctx.mesh)),
                        abstract)
  return checkpoint_lib.restore_params(directory, target, fix=f'{directory} was written with other segmenter '
                                       'settings; use them again, or another --workdir.')


def flat_results(stages: dict, splits: Sequence[str]) -> dict[str, float]:
  """{'<stage>/<split>/<metric>': value, '<stage>/pseudo/<stat>': value}."""
  out = {}
  for stage, res in stages.items():
    for split in splits:
      out.update({f'{stage}/{split}/{k}': v for k, v in res[split].items() if k != 'iou'})
    for k, v in res.get('pseudo', {}).items():
      if isinstance(v, float):
        out[f'{stage}/pseudo/{k}'] = v
  return out


def stage_title(stage: str) -> str:
  if stage == MASKCLIP:
    return 'MaskCLIP (training-free)'
  r = int(stage.split('_')[1])
  return 'MaskCLIP+ (pseudo-masks)' if r == 0 else f'self-training round {r}'


def report(stages: dict, mc, invocation: str) -> str:
  """report.md: the mIoU / fg_iou table of every stage on every split, pseudo-mask quality, overlays, command."""
  d = mc.dense
  head = ['stage'] + [f'{split} {m}' for split in mc.eval_splits for m in ('mIoU', 'fg_iou')] + [
      'pseudo coverage', 'pseudo accuracy', 'pseudo mIoU', 'train loss (last)']
  rows = []
  for stage, res in stages.items():
    p = res.get('pseudo', {})
    cells = [f'{res[split][m]:.4f}' for split in mc.eval_splits for m in ('miou', 'fg_iou')]
    cells += [f'{p[k]:.3f}' if k in p else '' for k in ('coverage', 'accuracy', 'miou')]
    cells.append(f'{res["train"][-1]["loss"]:.4f}' if res.get('train') else '')
    rows.append([stage_title(stage)] + cells)
  lines = ['# MaskCLIP+ on ' + d.datasets[0], '',
           f'Model: `{mc.model}`. Pseudo-masks and the training-free baseline: dense setting method={d.method}, '
           f'key_smoothing={d.key_smoothing}, prompt_denoising={d.prompt_denoising}, background={d.background} '
           f'{tuple(d.background_prompts)}, input sizes {tuple(d.input_sizes) or (d.input_size,)}. Segmenter: '
           f'head={mc.head}, features={mc.features}, {mc.image_size or "model"} px, {mc.steps} steps of '
           f'{mc.batch_size} per round on {mc.train_examples} unlabelled `{mc.train_split}` images; confidence '
           f'{mc.confidence} (MaskCLIP scores) / {mc.self_confidence} (self-training); {mc.rounds} self-training '
           f'round(s). Evaluation: {"all" if not mc.eval_examples else f"the first {mc.eval_examples}"} images of '
           'each split. Pseudo-mask accuracy / mIoU: against the training images\' true masks (unused in '
           'training; unconfident pixels count as background for the mIoU).', '',
           '| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  lines += ['', 'Overlays (image | prediction | truth) of the same images per stage: '
            '`<stage>/overlays/<split>/NNN.png`.', '']
  if invocation:
    lines += ['Command:', '', '```', invocation, '```', '']
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------ command line


def define_flags():
  """The command line's flags, defined only when this module runs as the program (as vitclip.sweep's)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'MaskCLIP+ config (configs/maskclip_plus_shapes.py).',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory: stages, results.json, report.md.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  with entry.reported_errors(_WORKDIR.value, 'segmentation'):
    invocation = shlex.join(['python', '-m', 'vitclip.segmentation', *sys.argv[1:]])
    results = run(_CONFIG.value, _WORKDIR.value, invocation=invocation)
    entry.print_results(results)


if __name__ == '__main__':
  from vitclip import host_malloc, sweep
  host_malloc.reexec_if_needed()
  define_flags()
  if sweep.REPO_ROOT not in sys.path:  # configs/ is a top-level package next to vitclip/.
    sys.path.insert(0, sweep.REPO_ROOT)
  app.run(main, flags_parser=entry.parse_flags)
