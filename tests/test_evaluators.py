"""Tests of the evaluators: metrics against hand-computed cases, Key Smoothing and Prompt Denoising on hand-made
arrays, retrieval and dense (MaskCLIP) end to end on a tiny generated `shapes` data set with a micro model
against independent re-computations (8 simulated CPU devices, eval batch 8), the suite (built once, no
retracing; evaluation follows the training data) and the config checks before the first step."""

import copy
import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import base
from configs import shapes as shapes_config
from vitclip import config as config_lib
from vitclip import evaluators, sharding
from vitclip.data import folder, shapes, sources
from vitclip.errors import ConfigError
from vitclip.evaluators import EVALUATORS, common, dense, metrics, overlays, retrieval
from vitclip.models import build_model
from vitclip.tokenizer import Tokenizer, train_bpe

SETTINGS = dict(image_size=32, num_train=16, num_validation=13, num_test=8, seed=0)  # 13: last batch padded.


# ---------------------------------------------------------------------------------------------- metrics


def test_confusion_matrix_ignores_and_counts():
  pred = np.array([[0, 1], [1, 2]])
  gt = np.array([[0, 1], [2, 255]])
  conf = metrics.confusion_matrix(pred, gt, 3)
  np.testing.assert_array_equal(conf, [[1, 0, 0], [0, 1, 0], [0, 1, 0]])


def test_confusion_matrix_rejects_unknown_classes():
  with pytest.raises(ValueError, match='outside'):
    metrics.confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 3)


def test_segmentation_metrics_excludes_absent_classes():
  # gt:   [0, 1, 2]; pred: [0, 1, 1]; class 3 appears nowhere (union 0 -> NaN, excluded from the mean).
  conf = metrics.confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 2]), 4)
  m = metrics.segmentation_metrics(conf)
  np.testing.assert_allclose(m['iou'][:3], [1.0, 0.5, 0.0])
  assert np.isnan(m['iou'][3])
  assert m['miou'] == pytest.approx(0.5)
  assert m['pixel_acc'] == pytest.approx(2 / 3)
  assert m['mean_acc'] == pytest.approx(2 / 3)
  empty = metrics.segmentation_metrics(np.zeros((3, 3)))
  assert empty['miou'] == 0.0 and empty['pixel_acc'] == 0.0


def test_foreground_iou_and_true_background():
  # gt:   [0, 0, 1, 2, 2]; pred: [0, 1, 2, 2, 0] -> foreground in both at pixels 2, 3; in either at 1-4.
  gt, pred = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 2, 2, 0])
  assert metrics.segmentation_metrics(metrics.confusion_matrix(pred, gt, 3))['fg_iou'] == pytest.approx(2 / 4)
  assert metrics.segmentation_metrics(np.diag([5, 0, 0]))['fg_iou'] == 0.0  # No foreground anywhere.
  np.testing.assert_array_equal(metrics.with_true_background(np.array([1, 1, 2, 2, 1]), gt), [0, 0, 2, 2, 1])


def test_retrieval_recall_several_captions_and_ties():
  txt_to_img = np.array([0, 0, 1, 2, 2])
  sim = np.array([
      [0.9, 0.1, 0.5, 0.2, 0.2],  # Image 0: its caption 0 is the best text -> rank 0.
      [0.8, 0.7, 0.6, 0.1, 0.1],  # Image 1: two other texts above its caption -> rank 2.
      [0.4, 0.4, 0.4, 0.4, 0.2],  # Image 2: its best caption ties with three others -> rank 3 (pessimistic).
  ])
  # t2i ranks: caption 0: 0, caption 1: 2 (0.7, 0.4 above 0.1), caption 2: 0, caption 3: 0,
  # caption 4: 1 (image 0 ties at 0.2).
  for chunk in (1024, 2):
    r = metrics.retrieval_recall(sim, txt_to_img, ks=(1, 2, 3, 4), chunk=chunk)
    assert r['i2t_r1'] == pytest.approx(1 / 3)
    assert r['i2t_r2'] == pytest.approx(1 / 3)
    assert r['i2t_r3'] == pytest.approx(2 / 3)
    assert r['i2t_r4'] == pytest.approx(1.0)
    assert r['t2i_r1'] == pytest.approx(3 / 5)
    assert r['t2i_r2'] == pytest.approx(4 / 5)
    assert r['t2i_r3'] == pytest.approx(1.0)


def test_retrieval_recall_collapsed_model_scores_zero():
  r = metrics.retrieval_recall(np.ones((20, 40)), np.repeat(np.arange(20), 2), ks=(1, 5, 10))
  assert all(v == 0.0 for v in r.values())


# ------------------------------------------------------------------------------------ KS, PD, background


OPTS = dense.ScoreOptions(background='prompt', num_bg=1, temperature=100.0, pd_threshold=0.5)


def test_prompt_denoising_drops_unconfident_class_keeps_confident_one():
  # Classes: background, A, B. Patch 0: A is confident (p ~ 0.99). Patch 1: B is the argmax but never reaches
  # probability 0.5 anywhere (~0.45), so PD drops it and the patch falls back to the background.
  logits = jnp.array([[[[0.20, 0.25, 0.10]], [[0.200, 0.199, 0.205]]]])  # [B=1, h=2, w=1, K=3]
  plain = dense.class_scores(logits, None, OPTS, ks=False, pd=False)
  denoised = dense.class_scores(logits, None, OPTS, ks=False, pd=True)
  np.testing.assert_array_equal(np.argmax(plain, -1).ravel(), [1, 2])
  np.testing.assert_array_equal(np.argmax(denoised, -1).ravel(), [1, 0])
  assert float(denoised[..., 2].max()) == 0.0  # B is gone everywhere.
  np.testing.assert_allclose(np.sum(denoised, -1), 1.0, rtol=1e-6)  # Still a distribution over kept classes.
  keep = dense.prompt_denoising_keep(jax.nn.softmax(100 * logits.reshape(1, 2, 3)), 0.5)
  np.testing.assert_array_equal(keep[0, 0, 1:], [True, False])  # (The background is never dropped.)


def test_key_smoothing_identical_keys_average_predictions():
  rng = np.random.default_rng(0)
  scores = jnp.asarray(rng.random((2, 6, 4)), jnp.float32)
  direction = rng.normal(size=5)
  # Same direction, different lengths: cosine 1 between all patches, whatever the key norms.
  keys = jnp.asarray(np.abs(rng.normal(size=(2, 6, 1))) * direction, jnp.float32)
  out = dense.key_smoothing(scores, keys)
  np.testing.assert_allclose(out, np.broadcast_to(scores.mean(1, keepdims=True), out.shape), rtol=1e-5)


def test_key_smoothing_uses_cosine_between_patches():
  scores = jnp.asarray(np.random.default_rng(1).random((1, 3, 2)), jnp.float32)
  keys = jnp.asarray([[[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0]]])  # Orthogonal / opposite patches.
  cos = np.array([[1, 0, -1], [0, 1, 0], [-1, 0, 1]], np.float32)
  np.testing.assert_allclose(dense.key_smoothing(scores, keys)[0], cos @ scores[0] / 3, rtol=1e-5, atol=1e-7)


def test_background_prompts_merge_and_threshold():
  # Prompt mode with two background rows: the background logit is their max.
  logits = jnp.array([[[[0.1, 0.3, 0.2, 0.25]]]])  # bg1, bg2, A, B
  s = dense.class_scores(logits, None, dense.ScoreOptions('prompt', num_bg=2), ks=False, pd=False)
  np.testing.assert_allclose(s[0, 0, 0], jax.nn.softmax(100 * jnp.array([0.3, 0.2, 0.25])), rtol=1e-5)
  # Threshold mode: background where the max foreground probability < bg_threshold.
  logits = jnp.array([[[[0.30, 0.20]], [[0.25, 0.249]]]])  # Patch 0 confident A; patch 1 A/B nearly tied.
  s = dense.class_scores(logits, None, dense.ScoreOptions('threshold', num_bg=0, bg_threshold=0.6),
                         ks=False, pd=False)
  np.testing.assert_array_equal(np.argmax(s, -1).ravel(), [1, 0])
  np.testing.assert_allclose(s[..., 0], 0.6)


def test_slide_windows_cover_the_image():
  assert dense.slide_windows(64, 32, 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]
  wins = dense.slide_windows(40, 16, 16)  # Last window flush with the border.
  assert sorted({y for y, _ in wins}) == [0, 16, 24]


def test_parse_dataset_spec():
  assert common.parse_dataset('shapes', 'mask') == ('shapes', 'mask')
  assert common.parse_dataset('voc:seg', 'mask') == ('voc', 'seg')
  assert common.parse_dataset('voc/cfg:1.0.0', 'mask') == ('voc/cfg:1.0.0', 'mask')


def test_overlays_written(tmp_path):
  image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
  gt = np.zeros((16, 16), np.int32)
  gt[4:10, 4:10] = 2
  gt[0, 0] = 255
  paths = overlays.write_overlays(str(tmp_path / 'ov'), [image, image], [gt, np.ones_like(gt)], [gt, gt],
                                  ['background', 'circle', 'square'])
  assert [os.path.basename(p) for p in paths] == ['000.png', '001.png']
  assert Image.open(paths[0]).size[0] > 300
  assert overlays.palette(30).shape == (30, 3) and len({tuple(c) for c in overlays.palette(30)}) == 30


# ------------------------------------------------------------------------------ end to end: tiny model


def random_params(model, max_len, seed=0):
  """Random params of the model's shapes without compiling `init` (slow on CPU): N(0, 0.2²) everywhere."""
  shapes_ = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                           jnp.zeros((1, max_len), jnp.int32))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(0.2 * rng.normal(size=x.shape), jnp.float32), shapes_)


def _import_folders(root, data_dir: str):
  """Two small imports next to shapes: 'pics' (image-caption pairs, train + validation) and 'classes' (a class
  folder, split 'test'): evaluation data sets that are not generated."""
  rng = np.random.default_rng(0)
  (root / 'pics').mkdir()
  lines = []
  for i in range(12):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / 'pics' / f'{i}.png')
    lines.append(json.dumps({'image': f'{i}.png', 'captions': [f'a red circle {i}.', 'a blue square.']}))
  (root / 'captions.jsonl').write_text('\n'.join(lines) + '\n')
  folder.import_folder(str(root / 'pics'), 'pics', data_dir, str(root / 'captions.jsonl'), val_fraction=0.5)
  for cls in ('cat', 'dog'):
    (root / 'classes' / cls).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / 'classes' / cls / '0.png')
  folder.import_folder(str(root / 'classes'), 'classes', data_dir, classes_from_subdirs=True)


@pytest.fixture(scope='module')
def suite(tmp_path_factory):
  """The suite of every evaluator over the tiny shapes data set: one context (and so one set of compiled
  encoders) shared by every end-to-end test."""
  data_dir = str(tmp_path_factory.mktemp('data'))
  shapes.prepare(data_dir, **SETTINGS)
  _import_folders(tmp_path_factory.mktemp('images'), data_dir)
  train, _ = sources.load_source(shapes.full_name(**SETTINGS), 'train', data_dir)
  captions = [c for i in range(len(train)) for c in sources.decode_captions(train[i])]
  tok_path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.json')
  train_bpe(captions, 300).save(tok_path)
  c = shapes_config.get_config()
  c.data.shapes.update(SETTINGS)
  c.model.embed_dim = 32
  c.model.image.variant, c.model.image.image_size = 'micro/8', 32
  c.model.text.variant, c.model.text.max_len = 'micro', 16
  tok = Tokenizer.from_file(tok_path, c.model.text.max_len)
  c.model.text.vocab_size, c.model.text.eos_id, c.model.text.pad_id = tok.vocab_size, tok.eos_id, tok.pad_id
  c.evals.names = ('zeroshot', 'retrieval', 'dense')
  c.evals.batch_size = 8
  c.evals.zeroshot.datasets = ('shapes', 'shapes:color')
  c.evals.dense.num_overlays = 3
  # The references below recompute MaskCLIP's single-scale path (configs/shapes.py picks another default).
  c.evals.dense.update(method='maskclip', key_smoothing=False, prompt_denoising=False, input_sizes=())
  c = config_lib.resolve(c)
  evaluators.check_config(c, data_dir)
  model = build_model(c.model)
  mesh = sharding.make_mesh([('data', -1)])
  workdir = str(tmp_path_factory.mktemp('work'))
  return evaluators.Suite(c, model, tok, mesh, workdir, data_dir)


@pytest.fixture(scope='module')
def ctx(suite):
  return suite.ctx


@pytest.fixture(scope='module')
def params(ctx):
  return random_params(ctx.model, ctx.config.model.text.max_len)


def _validation(ctx):
  source, _ = sources.load_source(shapes.full_name(**SETTINGS), 'validation', ctx.data_dir)
  return [source[i] for i in range(len(source))]


def test_registry_and_config():
  assert {'zeroshot', 'retrieval', 'dense'} <= set(EVALUATORS)
  c = shapes_config.get_config()
  assert c.evals.names == ('zeroshot',)
  assert c.evals.dense.method in dense.METHODS and c.evals.dense.background in dense.BACKGROUNDS


def test_base_config_names_no_data_set():
  c = base.get_config()
  assert c.evals.names == ('retrieval',)
  assert c.evals.zeroshot.datasets == c.evals.retrieval.datasets == c.evals.dense.datasets == ()
  evaluators.check_config(c, None)
  assert evaluators.datasets(c) == []  # No training data named: nothing to read.
  c.data.name = 'my_data'
  assert evaluators.datasets(c) == ['my_data']
  s = shapes_config.get_config()
  s.evals.names = ('zeroshot', 'retrieval', 'dense')
  assert evaluators.datasets(s) == ['shapes']  # 'shapes:color' and dense read the same data set.


def test_retrieval_matches_direct_computation(suite, ctx, params):
  results = suite.run(params, ['retrieval'])
  assert sorted(results) == sorted(f'retrieval/shapes/{d}_r{k}' for d in ('i2t', 't2i') for k in (1, 5, 10))
  records = _validation(ctx)
  spec = ctx.image_spec()
  images = np.stack([spec.eval_view(sources.decode_image(r)) for r in records])
  zimg = encode_images(ctx, params, images)
  texts, owner = [], []
  for i, r in enumerate(records):
    caps = sources.decode_captions(r)
    texts += caps
    owner += [i] * len(caps)
  ztxt = ctx.encode_texts(params, texts)
  expected = metrics.retrieval_recall(zimg @ ztxt.T, np.array(owner))
  for k, v in expected.items():
    assert results[f'retrieval/shapes/{k}'] == pytest.approx(v, abs=1e-6), k


def encode_images(ctx, params, images):
  """All images in one go through the context's (already compiled) image encoder, padded to the batch size."""
  n, bs = len(images), ctx.batch_size
  padded = np.concatenate([images, np.zeros((-n % bs,) + images.shape[1:], images.dtype)])
  out = [ctx.encode_image_batch(params, jax.device_put(padded[i:i + bs], sharding.batch_sharding(ctx.mesh)))
         for i in range(0, len(padded), bs)]
  return np.concatenate(out)[:n]


def dense_features(ctx, params, images, method):
  """The model's own dense features: float32 [B, h, w, D]."""
  return jax.jit(lambda p, x: ctx.model.apply({'params': p}, x, method, method='dense_image_features'))(
      params, images)


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_retrieval_skips_bad_records_and_caps_examples(ctx, params, monkeypatch):
  records = _validation(ctx)
  broken = [dict(r) for r in records]
  broken[4]['image'] = b'not an image'
  broken[7]['captions'] = ['', ' ']
  monkeypatch.setattr(common, 'load_source', lambda c, name, split, n: (common.limit_source(broken, n), None))
  cfg = ctx.config.evals.retrieval
  with cfg.unlocked():
    cfg.max_examples = 12
  try:
    results = retrieval.Retrieval(ctx, cfg).run(params)
  finally:
    with cfg.unlocked():
      cfg.max_examples = 0
  kept = [r for i, r in enumerate(records[:12]) if i not in (4, 7)]
  spec = ctx.image_spec()
  zimg = encode_images(ctx, params, np.stack([spec.eval_view(sources.decode_image(r)) for r in kept]))
  caps = [sources.decode_captions(r) for r in kept]
  ztxt = ctx.encode_texts(params, [c for cs in caps for c in cs])
  owner = np.repeat(np.arange(len(kept)), [len(cs) for cs in caps])
  expected = metrics.retrieval_recall(zimg @ ztxt.T, owner)
  for k, v in expected.items():
    assert results[f'retrieval/shapes/{k}'] == pytest.approx(v, abs=1e-6), k


def _reference_confusion(ctx, params, records, classifier, method, sizes=(None,)):
  """Independent re-computation of the 'maskclip' prompt-background prediction (no KS / PD): patch features of
  the model x classifier -> softmax(100 [max bg, fg]) -> bilinear resize -> argmax -> confusion matrix; and
  the confusion matrix with the background from the ground truth (best foreground class elsewhere).
  sizes: input sizes (None: the model's); multi-scale sums the upsampled probabilities of every size."""
  up = 0
  for input_size in sizes:
    spec = ctx.image_spec() if input_size is None else dataclasses.replace(ctx.image_spec(), size=input_size)
    images = jnp.asarray(np.stack([spec.eval_view(sources.decode_image(r)) for r in records]))
    feats = np.asarray(dense_features(ctx, params, images, method))
    logits = np.einsum('bhwd,kd->bhwk', feats, classifier)
    nb = len(ctx.config.evals.dense.background_prompts)
    logits = np.concatenate([logits[..., :nb].max(-1, keepdims=True), logits[..., nb:]], -1)
    probs = softmax(100 * logits)
    size = records[0]['mask'].shape
    up = up + jax.image.resize(probs, (len(records), *size, probs.shape[-1]), 'bilinear')
  pred = np.asarray(jnp.argmax(up, -1))
  gt = np.stack([r['mask'] for r in records])
  num_classes = 1 + len(shapes.SHAPE_NAMES)
  true_bg = np.where(gt == 0, 0, np.asarray(jnp.argmax(up[..., 1:], -1)) + 1)
  return metrics.confusion_matrix(pred, gt, num_classes), gt, metrics.confusion_matrix(true_bg, gt, num_classes)


def test_dense_sweep_matches_reference_and_writes_overlays(ctx, params):
  cfg = ctx.config.evals.dense
  with cfg.unlocked():
    cfg.sweep = True
  try:
    results = dense.Dense(ctx, cfg).run(params)
  finally:
    with cfg.unlocked():
      cfg.sweep = False
  records = _validation(ctx)
  fg = list(shapes.SHAPE_NAMES)
  templates = dense.templates_lib.get_templates(cfg.templates)
  classifier, nb = dense.build_classifier(ctx, params, cfg, fg, templates)
  assert nb == len(cfg.background_prompts) and classifier.shape == (nb + len(fg), ctx.config.model.embed_dim)
  conf, gt, true_bg_conf = _reference_confusion(ctx, params, records, classifier, 'maskclip')
  ref = metrics.segmentation_metrics(conf)
  assert results['dense/shapes/miou'] == pytest.approx(ref['miou'], abs=1e-6)
  assert results['dense/shapes/fg_iou'] == pytest.approx(ref['fg_iou'], abs=1e-6)
  assert results['dense/shapes/maskclip/fg_iou'] == results['dense/shapes/fg_iou']
  assert results['dense/shapes/miou_true_background'] == pytest.approx(
      metrics.segmentation_metrics(true_bg_conf)['miou'], abs=1e-6)
  assert results['dense/shapes/pixel_acc'] == pytest.approx(ref['pixel_acc'], abs=1e-6)
  assert results['dense/shapes/maskclip/miou'] == results['dense/shapes/miou']
  for name, iou in zip(['background'] + fg, ref['iou']):
    assert results.get(f'dense/shapes/iou/{name}', np.nan) == pytest.approx(iou, nan_ok=True), name
  for method in dense.METHODS:
    for suffix in ('', '_kspd'):
      assert 0.0 <= results[f'dense/shapes/{method}{suffix}/miou'] <= 1.0
  # The all-background baseline: IoU(background) = background fraction, 0 for every shape present.
  bg_frac = np.mean(gt == 0)
  present = len(np.unique(gt))
  assert results['dense/shapes/all_background/miou'] == pytest.approx(bg_frac / present)
  out_dir = os.path.join(ctx.workdir, 'dense_overlays', 'shapes_maskclip')
  assert sorted(os.listdir(out_dir)) == ['000.png', '001.png', '002.png']


def test_dense_multiscale_matches_reference(ctx, params):
  """input_sizes=(32, 64): the upsampled per-class scores of both sizes are summed before the argmax."""
  cfg = ctx.config.evals.dense
  with cfg.unlocked():
    cfg.input_sizes, cfg.num_overlays = (32, 64), 0
  try:
    results = dense.Dense(ctx, cfg).run(params)
  finally:
    with cfg.unlocked():
      cfg.input_sizes, cfg.num_overlays = (), 3
  records = _validation(ctx)
  classifier, _ = dense.build_classifier(ctx, params, cfg, list(shapes.SHAPE_NAMES),
                                         dense.templates_lib.get_templates(cfg.templates))
  conf, _, true_bg_conf = _reference_confusion(ctx, params, records, classifier, 'maskclip', sizes=(32, 64))
  _, _, single_true_bg_conf = _reference_confusion(ctx, params, records, classifier, 'maskclip')
  assert not np.array_equal(true_bg_conf, single_true_bg_conf)  # The second scale changes the prediction.
  assert results['dense/shapes/miou'] == pytest.approx(metrics.segmentation_metrics(conf)['miou'], abs=1e-6)
  assert results['dense/shapes/miou_true_background'] == pytest.approx(
      metrics.segmentation_metrics(true_bg_conf)['miou'], abs=1e-6)


def test_dense_input_sizes_are_checked():
  cfg = base.get_config().evals.dense
  assert dense.scales(cfg, 48, 8) == [(48, 0, 0)]
  cfg.input_sizes, cfg.slide_size, cfg.slide_stride = (48, 96), 48, 24
  assert dense.scales(cfg, 48, 8) == [(48, 0, 0), (96, 48, 24)]  # One window covers the 48 px scale.
  for sizes, match in (((48, 48), 'repeats'), ((0,), 'positive'), ((44,), 'multiple of the patch size')):
    cfg.input_sizes = sizes
    with pytest.raises(ValueError, match=match):
      dense.scales(cfg, 48, 8)


def test_dense_batch_fn_plain_and_sliding_windows(ctx, params):
  """make_batch_fn: 'maskclip' scores = softmax of the direct logits; sliding windows average the per-window
  scores on the patch grid (windows of the model size over an image twice as large)."""
  rng = np.random.default_rng(0)
  classifier = common.l2_normalize(rng.normal(size=(1 + 8, 32))).astype(np.float32)
  images = jnp.asarray(rng.normal(size=(2, 48, 48, 3)), jnp.float32)
  opts = dense.ScoreOptions('prompt', num_bg=1)
  variants = [dense.Variant('maskclip')]
  plain = jax.jit(dense.make_batch_fn(ctx.model, variants, opts, patch=8, input_size=32))
  crop = images[:, 8:40, 16:48]
  feats = np.asarray(dense_features(ctx, params, crop, 'maskclip'))
  direct = softmax(100 * np.einsum('bhwd,kd->bhwk', feats, classifier))
  np.testing.assert_allclose(plain(params, crop, classifier)['maskclip'], direct, atol=1e-5)

  slide = jax.jit(dense.make_batch_fn(ctx.model, variants, opts, patch=8, input_size=48, slide_size=32,
                                      slide_stride=16))
  got = np.asarray(slide(params, images, classifier)['maskclip'])
  assert got.shape == (2, 6, 6, 9)
  canvas, count = np.zeros((2, 6, 6, 9)), np.zeros((6, 6, 1))
  for y, x in dense.slide_windows(48, 32, 16):
    canvas[:, y // 8:y // 8 + 4, x // 8:x // 8 + 4] += np.asarray(
        plain(params, images[:, y:y + 32, x:x + 32], classifier)['maskclip'])
    count[y // 8:y // 8 + 4, x // 8:x // 8 + 4] += 1
  np.testing.assert_allclose(got, canvas / count, atol=1e-5)


def test_templates_from_the_command_line_string():
  from vitclip import templates
  assert templates.get_templates('a photo of a {}.| a satellite photo of a {}. ') == (
      'a photo of a {}.', 'a satellite photo of a {}.')
  assert len(templates.get_templates('clip80')) == 80 and len(templates.get_templates('clip7')) == 7
  with pytest.raises(ValueError, match='unknown'):
    templates.get_templates('clip81')


def test_dense_ceiling_by_hand():
  from benchmarks import dense_ceiling
  # 8 x 8 mask, 4 x 4 cells: class 1 fills the top-left cell exactly; class 2 is one pixel of the bottom-right
  # cell, so every oracle labels that cell background.
  mask = np.zeros((1, 8, 8), np.int32)
  mask[0, :4, :4] = 1
  mask[0, 7, 7] = 2
  mask[0, 0, 7] = 255  # ignored
  scores = dense_ceiling.cell_scores(mask, 3, 4, 255)
  np.testing.assert_allclose(scores['fractions'][0, 0, 0], [0, 1, 0])
  np.testing.assert_allclose(scores['fractions'][0, 1, 1], [15 / 16, 0, 1 / 16])
  np.testing.assert_allclose(scores['fractions'][0, 0, 1], [15 / 16, 0, 0])  # the ignored pixel counts nowhere
  np.testing.assert_array_equal(scores['majority'][0].argmax(-1), [[1, 0], [0, 0]])
  # Upsampled bilinearly, class 1 keeps its cell but the inner corner pixel (3, 3), where the four cells
  # blend, goes to background: IoU 15/16. Background: 46 of 48 (that pixel and class 2's). Class 2: 0.
  expected = (15 / 16 + 46 / 48 + 0) / 3
  assert dense_ceiling.ceiling(mask, 3, 4, 255) == pytest.approx({'fractions': expected, 'majority': expected})


# ------------------------------------------------------------------------------------- suite and checks


def test_suite_runs_again_without_tracing(suite, params):
  """Built once: a second run with other params reuses every compiled function (no jaxpr is traced) and gives
  other numbers. Zero-shot colour classes use their own prompts (templates_for)."""
  first = suite.run(params)
  assert {k.split('/')[0] for k in first} == {'zeroshot', 'retrieval', 'dense'}
  assert {'zeroshot/shapes/top1', 'zeroshot/shapes_color/top1'} <= set(first)
  color = suite.evaluators['zeroshot'].data[1]
  assert color.key == 'shapes_color' and color.templates[:2] == ('a {} circle.', 'a {} square.')
  assert color.classnames == list(shapes.COLOR_NAMES)
  other = random_params(suite.ctx.model, suite.ctx.config.model.text.max_len, seed=1)
  traces = []
  listener = lambda event, duration, **kw: traces.append(kw.get('fun_name')) if 'jaxpr_trace' in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    second = suite.run(other)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert traces == []
  assert second.keys() == first.keys() and second != first


def test_evaluation_follows_the_training_data(suite, caplog):
  """Base evaluation settings and a training set that is not generated: retrieval evaluates it (it has the
  split), zero-shot has no data set and says how to add one; nothing else is read."""
  c = copy.deepcopy(suite.ctx.config)
  with c.unlocked():
    c.evals = base.get_config().evals
    c.evals.update(names=('zeroshot', 'retrieval'), batch_size=8)
    c.data.name = 'pics'
  evaluators.check_config(c, suite.ctx.data_dir)
  assert evaluators.datasets(c) == ['pics']
  ctx = suite.ctx
  params = random_params(ctx.model, c.model.text.max_len)
  with caplog.at_level(logging.INFO):
    results = evaluators.Suite(c, ctx.model, ctx.tokenizer, ctx.mesh, '', ctx.data_dir).run(params)
  assert sorted(results) == sorted(f'retrieval/pics/{d}_r{k}' for d in ('i2t', 't2i') for k in (1, 5, 10))
  assert 'zeroshot: nothing to evaluate: no data sets named; add --config.evals.zeroshot.datasets' in caplog.text
  assert 'dense: not run' in caplog.text
  # A training set without the split: retrieval is skipped too, with the way to name one.
  c.evals.retrieval.split = 'test'
  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert evaluators.Suite(c, ctx.model, ctx.tokenizer, ctx.mesh, '', ctx.data_dir).run(params) == {}
  assert "retrieval: nothing to evaluate: the training data set 'pics' has no split 'test'" in caplog.text


CHECKS = [
    ({'evals.names': ('zeroshot', 'bogus')}, "config.evals.names=('zeroshot', 'bogus') has unknown evaluators"),
    ({'evals.names': ('dense',), 'evals.dense.method': 'maskclap'}, 'config.evals.dense.method='),
    ({'evals.names': ('dense',), 'evals.dense.input_sizes': (32, 44)},
     'config.evals.dense.input_sizes / input_size: 44 px is not a multiple of the patch size 8'),
    ({'evals.names': ('dense',), 'evals.dense.input_sizes': (32, 32)}, 'config.evals.dense.input_sizes='),
    ({'evals.names': ('dense',), 'evals.dense.slide_size': 16, 'evals.dense.slide_stride': 0},
     'config.evals.dense.slide_stride='),
    ({'evals.zeroshot.templates': 'clip81'}, 'config.evals.zeroshot.templates='),
    ({'evals.zeroshot.templates_for': {'shapes_color': 'a {}.|a circle.'}},
     'config.evals.zeroshot.templates_for.shapes_color: templates'),
    ({'evals.zeroshot.datasets': ('nothing',)},
     "config.evals.zeroshot.datasets names 'nothing', which is not prepared"),
    ({'evals.zeroshot.datasets': ('pics',), 'evals.zeroshot.split': 'train'},
     "config.evals.zeroshot.datasets entry 'pics': data set 'pics' has no class feature 'label'"),
    ({'evals.zeroshot.datasets': ('classes:filename',)}, 'not a ClassLabel'),
    ({'evals.zeroshot.datasets': ('classes',), 'evals.zeroshot.split': 'validation'},
     "config.evals.zeroshot.split='validation': data set 'classes' has no such split"),
    ({'evals.names': ('retrieval',), 'evals.retrieval.datasets': ('classes',), 'evals.retrieval.split': 'test'},
     "config.evals.retrieval.datasets: data set 'classes' has no captions"),
    ({'evals.names': ('retrieval',), 'evals.retrieval.max_examples': -1}, 'config.evals.retrieval.max_examples='),
    ({'evals.names': ('dense',), 'evals.dense.datasets': ('pics',), 'evals.dense.split': 'train'},
     "config.evals.dense.mask_feature): data set 'pics' has no mask"),
    ({'evals.names': ('dense',), 'evals.dense.class_feature': 'num_objects'}, 'config.evals.dense.class_feature:'),
    ({'data.shapes.image_size': 8}, 'config.data.shapes.image_size=8'),
]


@pytest.mark.parametrize('overrides, message', CHECKS, ids=[m[:40] for _, m in CHECKS])
def test_check_config_names_the_field(suite, overrides, message):
  c = copy.deepcopy(suite.ctx.config)
  with c.unlocked():
    for key, value in overrides.items():
      *parents, leaf = key.split('.')
      node = c
      for p in parents:
        node = node[p]
      node[leaf] = value
  with pytest.raises(ConfigError) as e:
    evaluators.check_config(c, suite.ctx.data_dir)
  assert message in str(e.value)


def test_check_config_generated_data_is_built_later(suite):
  """A generated data set with other settings is not built yet: its settings resolve, so it passes (the trainer
  builds it before the first step); without a data dir only the settings are checked."""
  c = copy.deepcopy(suite.ctx.config)
  c.data.shapes.num_test = 7
  evaluators.check_config(c, suite.ctx.data_dir)
  c.evals.zeroshot.datasets = ('nothing',)
  evaluators.check_config(c, None)
