"""The detection evaluator end to end on a tiny generated shapes data set with a micro model and random params:
its AP / AR of the grid and component proposals against an independent re-computation (crops through
`encode_image`, the per-class map through `dense_image_features`, numpy softmax, vitclip.boxes for NMS and the
metrics), its overlays, and its config checks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from vitclip import boxes, config as config_lib, evaluators, sharding
from vitclip.data import shapes, sources
from vitclip.errors import ConfigError
from vitclip.evaluators import common, detection
from vitclip.models import build_model
from vitclip.tokenizer import Tokenizer, train_bpe

SETTINGS = dict(image_size=32, num_train=16, num_validation=5, num_test=4, seed=0)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(evaluator, params) over the first 5 validation scenes, eval batch 8 (the last batch padded)."""
  data_dir = str(tmp_path_factory.mktemp('data'))
  shapes.prepare(data_dir, **SETTINGS)
  train, _ = sources.load_source(shapes.full_name(**SETTINGS), 'train', data_dir)
  tok_path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.json')
  train_bpe([c for i in range(len(train)) for c in sources.decode_captions(train[i])], 300).save(tok_path)
  c = shapes_config.get_config()
  c.data.shapes.update(SETTINGS)
  c.model.embed_dim = 32
  c.model.image.update(variant='micro/8', image_size=32, stem='patch', pool='tok', cls_token=True,
                       posemb='learn', attention_radius=0)
  c.model.text.variant, c.model.text.max_len = 'micro', 16
  tok = Tokenizer.from_file(tok_path, c.model.text.max_len)
  c.model.text.vocab_size, c.model.text.eos_id, c.model.text.pad_id = tok.vocab_size, tok.eos_id, tok.pad_id
  c.evals.names = ('detection',)
  c.evals.batch_size = 8
  c.evals.detection.update(datasets=('shapes',), templates='a {}.|a small {}.', score_threshold=0.3,
                           grid_scales=(0.375, 0.75), num_overlays=2, ar_at=(1, 10))
  c = config_lib.resolve(c)
  evaluators.check_config(c, data_dir)
  model = build_model(c.model)
  shapes_ = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                           jnp.zeros((1, 16), jnp.int32))['params']
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(0.2 * rng.normal(size=x.shape), jnp.float32), shapes_)
  suite = evaluators.Suite(c, model, tok, sharding.make_mesh([('data', -1)]),
                           str(tmp_path_factory.mktemp('work')), data_dir)
  return suite.evaluators['detection'], params


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference(ev, params, method: str):
  """Detections and ranked proposals of every validation image, recomputed from the model directly."""
  ctx, cfg = ev.ctx, ev.cfg
  source = ev.data[0].source
  names = list(cfg.background_prompts) + list(shapes.SHAPE_NAMES)
  classifier = common.build_classifier(ctx, params, names, ev.templates)
  spec = ctx.image_spec()
  encode = jax.jit(lambda p, x: ctx.model.apply({'params': p}, x, method='encode_image'))
  feats = jax.jit(lambda p, x: ctx.model.apply({'params': p}, x, 'maskclip', method='dense_image_features'))
  dets, ranked, gts = [], [], []
  for i in range(len(source)):
    record = source[i]
    image = sources.decode_image(record)
    gts.append(boxes.shapes_gt_boxes(record['objects'], record['mask'], shapes.EXTENT))
    if method == 'grid':
      props = boxes.grid_boxes(32, 32, cfg.grid_scales, cfg.grid_stride)
    else:  # Per-class map at the model size (32 px = the image size here), bilinear upsampling of the probs.
      f = np.asarray(feats(params, spec.eval_view(image)[None]))[0]  # [4, 4, D]
      logits = 100 * f @ classifier.T
      probs = _softmax(np.concatenate([logits[..., :1], logits[..., 1:]], -1))
      up = np.asarray(jax.image.resize(probs, (32, 32, probs.shape[-1]), 'bilinear'))
      props = np.array([boxes.mask_box(m) for _, m in boxes.components(up.argmax(-1), cfg.min_area)],
                       np.float32).reshape(-1, 4)
    crops = np.stack([spec.normalize(spec.resize(image, box=tuple(b)))
                      for b in boxes.expand(props, cfg.crop_context, 32, 32)]) if len(props) else None
    if crops is None:
      dets.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)))
      ranked.append(np.zeros((0, 4)))
      continue
    padded = np.zeros((64,) + crops.shape[1:], np.float32)  # One compiled shape for every image.
    padded[:len(crops)] = crops
    emb = np.asarray(encode(params, padded))[:len(crops)]
    p = _softmax(100 * emb @ classifier.T)[:, 1:]  # One background row.
    scores, classes = p.max(-1), p.argmax(-1)
    ranked.append(props[np.argsort(-scores, kind='stable')])
    sure = np.flatnonzero(scores >= cfg.score_threshold)
    keep = sure[boxes.per_class_nms(props[sure], scores[sure], classes[sure], cfg.nms_iou, cfg.max_detections)]
    dets.append((props[keep], scores[keep], classes[keep]))
  return dets, ranked, gts


def test_detection_matches_reference_and_writes_overlays(setup):
  ev, params = setup
  results = ev.run(params)
  for method in ('grid', 'components'):
    dets, ranked, gts = _reference(ev, params, method)
    key = f'detection/shapes/{method}'
    ap = boxes.detection_ap(dets, gts, len(shapes.SHAPE_NAMES), 0.5)
    assert results[f'{key}/ap50'] == pytest.approx(np.nanmean(ap), abs=1e-6)
    for n in (1, 10):
      assert results[f'{key}/ar@{n}'] == pytest.approx(boxes.average_recall(ranked, [g for g, _ in gts], n))
    assert results[f'{key}/proposals_per_image'] == pytest.approx(np.mean([len(r) for r in ranked]))
    assert results[f'{key}/detections_per_image'] == pytest.approx(np.mean([len(d[0]) for d in dets]))
  # Box starts 0, 6, 12, 18, 20 (12 px boxes); 0, 8 (24 px).
  assert results['detection/shapes/grid/proposals_per_image'] == 5 * 5 + 2 * 2
  for key, value in results.items():
    assert np.isnan(value) or (0 <= value <= 1 if 'per_image' not in key else value >= 0), key
  assert 0 <= results['detection/shapes/merge/ar@10'] <= 1
  out = os.path.join(ev.ctx.workdir, 'detection_overlays', 'shapes')
  assert sorted(os.listdir(out)) == ['000.png', '001.png']


def test_merge_proposals_include_the_components(setup):
  ev, params = setup
  record = ev.data[0].source[0]
  image = sources.decode_image(record)
  probs = np.zeros((32, 32, 1 + len(shapes.SHAPE_NAMES)), np.float32)
  probs[..., 0] = 1
  probs[2:10, 2:10, 3] = 2  # Class 2 region, and two touching regions of classes 0 and 4.
  probs[20:30, 10:15, 1] = 2
  probs[20:30, 15:20, 5] = 2
  got = ev._proposals(image, probs)
  np.testing.assert_array_equal(got['components'], [[10, 20, 15, 30], [2, 2, 10, 10], [15, 20, 20, 30]])
  assert [10, 20, 20, 30] in got['merge'].tolist()  # The two touching regions merged.
  assert set(map(tuple, got['components'].tolist())) <= set(map(tuple, got['merge'].tolist()))


@pytest.mark.parametrize('overrides, message', [
    (dict(methods=('grid', 'boxes')), 'config.evals.detection.methods'),
    (dict(methods=()), 'config.evals.detection.methods'),
    (dict(dense_mode='mask'), 'config.evals.detection.dense_mode'),
    (dict(map_sizes=(30,)), 'config.evals.detection.map_sizes'),
    (dict(grid_scales=(0.5, 1.5)), 'config.evals.detection.grid_scales'),
    (dict(score_threshold=1.5), 'config.evals.detection.score_threshold'),
    (dict(nms_iou=0.0), 'config.evals.detection.nms_iou'),
    (dict(max_detections=0), 'config.evals.detection.max_detections'),
    (dict(ar_at=(0,)), 'config.evals.detection.ar_at'),
    (dict(crop_context=-0.1), 'config.evals.detection.crop_context'),
    (dict(split='extra'), 'config.evals.detection.split'),
    (dict(mask_feature='segmentation'), 'config.evals.detection.mask_feature'),
    (dict(templates='nonsense'), 'config.evals.detection.templates'),
])
def test_check_config_names_the_field(setup, overrides, message):
  ev, _ = setup
  config = ev.ctx.config.copy_and_resolve_references()
  config.evals.detection.update(overrides)
  with pytest.raises(ConfigError, match=message.replace('.', r'\.')):
    evaluators.check_config(config, ev.ctx.data_dir)
