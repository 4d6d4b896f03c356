"""MaskCLIP+ (vitclip/segmentation.py): pseudo-mask thresholds, the loss with ignored pixels, both heads, and one
short run on the tiny model (pseudo-masks, training, self-training, evaluation, resumption)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import maskclip_plus_shapes
from vitclip import segmentation as seg
from vitclip.errors import ConfigError
from vitclip.models.vit import VisionTransformer

IGNORE = 255


def test_pseudo_labels_hand_case():
  # One image of 2 x 2 pixels, 3 classes (background first).
  scores = np.array([[[[0.7, 0.2, 0.1],    # confident background: share 0.7
                       [0.2, 0.5, 0.3]],   # class 1, share 0.5 (exactly the threshold: kept)
                      [[0.3, 0.3, 0.4],    # class 2, share 0.4: ignored
                       [0.6, -0.2, 0.3]]]],  # Key-smoothed scores may be negative: share 0.6 / 0.9
                    np.float32)
  np.testing.assert_allclose(seg.confidence(scores), [[[0.7, 0.5], [0.4, 0.6 / 0.9]]], rtol=1e-6)
  np.testing.assert_array_equal(seg.pseudo_labels(scores, 0.5, IGNORE), [[[0, 1], [IGNORE, 0]]])
  np.testing.assert_array_equal(seg.pseudo_labels(scores, 0.0, IGNORE), [[[0, 1], [2, 0]]])
  np.testing.assert_array_equal(seg.pseudo_labels(scores, 0.8, IGNORE), np.full((1, 2, 2), IGNORE))


def test_pseudo_labels_keep_each_classs_most_confident_fraction():
  """Background is confident (0.9, 0.95), the shape is not (0.55, 0.6, 0.7, 0.65): a global threshold of 0.8
  keeps background only; half of each class adds the two most confident shape pixels (0.7, 0.65), and alone (a
  threshold no pixel reaches) the surer background pixel."""
  top = np.array([[0.9, 0.55, 0.6], [0.95, 0.7, 0.65]], np.float32)
  cls = np.array([[0, 1, 1], [0, 1, 1]])
  scores = np.stack([np.where(cls == 0, top, 1 - top), np.where(cls == 1, top, 1 - top)], -1)[None]
  np.testing.assert_array_equal(seg.pseudo_labels(scores, 0.8, IGNORE), [[[0, IGNORE, IGNORE], [0, IGNORE, IGNORE]]])
  np.testing.assert_array_equal(seg.pseudo_labels(scores, 0.8, IGNORE, class_fraction=0.5),
                                [[[0, IGNORE, IGNORE], [0, 1, 1]]])
  np.testing.assert_array_equal(seg.pseudo_labels(scores, 1.0, IGNORE, class_fraction=0.5),
                                [[[IGNORE, IGNORE, IGNORE], [0, 1, 1]]])


def test_confidence_of_probabilities_is_the_top_probability():
  probs = np.asarray(jax.nn.softmax(np.random.default_rng(0).normal(size=(3, 4, 5, 6)) * 3, axis=-1))
  np.testing.assert_allclose(seg.confidence(probs), probs.max(-1), rtol=1e-5)


def _numpy_ce(logits, labels, ignore):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  keep = labels != ignore
  picked = np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0]
  return -picked[keep].mean() if keep.any() else 0.0


def test_loss_ignores_ignored_pixels():
  ce = jax.jit(seg.pixel_cross_entropy, static_argnums=2)
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32) * 2
  labels = rng.integers(0, 3, size=(2, 4, 5)).astype(np.uint8)
  labels[rng.random((2, 4, 5)) < 0.4] = IGNORE
  loss = float(ce(jnp.asarray(logits), jnp.asarray(labels), IGNORE))
  np.testing.assert_allclose(loss, _numpy_ce(logits, labels, IGNORE), rtol=1e-5)
  # Ignored pixels neither count nor receive gradient, whatever their logits.
  grad_fn = jax.jit(jax.grad(seg.pixel_cross_entropy), static_argnums=2)
  grad = np.asarray(grad_fn(jnp.asarray(logits), jnp.asarray(labels), IGNORE))
  assert np.all(grad[labels == IGNORE] == 0) and np.any(grad[labels != IGNORE] != 0)
  changed = np.where((labels == IGNORE)[..., None], 100.0, logits)
  np.testing.assert_allclose(float(ce(jnp.asarray(changed), jnp.asarray(labels), IGNORE)),
                             loss, rtol=1e-6)
  assert float(ce(jnp.asarray(logits), jnp.full(labels.shape, IGNORE), IGNORE)) == 0.0


@pytest.mark.parametrize('head', seg.HEADS)
def test_head_output_shapes(head):
  tower = VisionTransformer(variant='micro/8', image_size=32, embed_dim=32, pool='gap', cls_token=False)
  model = seg.Segmenter(tower, num_classes=9, head=head, decoder_channels=(16, 8, 8), aspp_channels=16,
                        aspp_rates=(1, 2))
  images = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), images)['params']  # Shapes only: nothing compiles.
  assert set(params) == {'img', 'head', 'classifier'}
  assert jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params, images).shape == (2, 32, 32, 9)
  # Another input size: a 5 x 5 patch grid upsampled past 40 px is resized to the input.
  assert jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params,
                        jnp.zeros((1, 40, 40, 3))).shape == (1, 40, 40, 9)


def test_pseudo_masks_store_and_resume(tmp_path):
  masks = np.random.default_rng(2).integers(0, 9, size=(5, 6, 6)).astype(np.uint8)
  seg.save_pseudo_masks(str(tmp_path), masks, {'coverage': 0.5})
  loaded, info = seg.load_pseudo_masks(str(tmp_path), 5)
  np.testing.assert_array_equal(loaded, masks)
  assert info == {'coverage': 0.5}
  assert seg.load_pseudo_masks(str(tmp_path), 6) is None  # Another number of training images: recomputed.
  os.remove(tmp_path / seg.PSEUDO_INFO)  # Interrupted before the JSON: incomplete, recomputed.
  assert seg.load_pseudo_masks(str(tmp_path), 5) is None


def test_check_config_names_fields():
  mc = maskclip_plus_shapes.get_config()
  with pytest.raises(ConfigError, match='config.model'):
    seg.check_config(mc)
  mc.model = '/nonexistent'
  mc.update(head='unet', confidence=1.5, warmup_steps=mc.steps)
  with pytest.raises(ConfigError) as e:
    seg.check_config(mc)
  for field in ('config.head', 'config.confidence', 'config.warmup_steps'):
    assert field in str(e.value)
  mc.update(head='aspp', confidence=0.5, warmup_steps=0)
  with pytest.raises(ConfigError, match='config.json does not exist'):
    seg.build(mc, '/tmp/unused')


def test_one_short_run_then_resume(tiny_run, tmp_path, monkeypatch):
  model_dir, _ = tiny_run
  mc = maskclip_plus_shapes.get_config()
  mc.model = model_dir
  mc.dense.update(input_sizes=(32,), templates='a {}.')
  mc.update(train_examples=16, eval_examples=16, eval_batch_size=16, steps=2, warmup_steps=0, batch_size=8,
            rounds=1, num_overlays=1, decoder_channels=(8, 8, 8), self_confidence=0.0, log_every=1,
            eval_splits=('test',))
  out = str(tmp_path / 'out')
  results = seg.run(mc, out, devices=jax.devices()[:1])
  for stage in ('maskclip', 'round_0', 'round_1'):
    for split in mc.eval_splits:
      assert 0 <= results[f'{stage}/{split}/miou'] <= 1 and f'{stage}/{split}/fg_iou' in results
      assert os.path.isfile(os.path.join(out, stage, 'overlays', split, '000.png'))
  assert results['round_1/pseudo/coverage'] == 1.0  # Threshold 0: every pixel of the segmenter's masks kept.
  assert 0 <= results['round_0/pseudo/coverage'] <= 1
  masks = np.load(os.path.join(out, 'round_0', seg.PSEUDO_FILE))
  assert masks.shape == (16, 32, 32) and masks.dtype == np.uint8
  assert set(np.unique(masks)) <= set(range(9)) | {IGNORE}
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f) == pytest.approx(results)
  assert '| self-training round 1 |' in open(os.path.join(out, 'report.md')).read()
  # A rerun reads every finished stage back: nothing is trained or scored again.
  monkeypatch.setattr(seg, 'train_round', lambda *a: pytest.fail('a finished round was trained again'))
  monkeypatch.setattr(seg, 'evaluate_maskclip', lambda *a: pytest.fail('the baseline was scored again'))
  assert seg.run(mc, out, devices=jax.devices()[:1]) == pytest.approx(results)
