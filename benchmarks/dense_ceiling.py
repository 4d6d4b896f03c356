r"""The best mIoU any patch-level dense method can reach at a given token grid, from the ground-truth masks.

Each image's mask is cut into patch x patch cells; an oracle gives every cell a score per class (its class
fractions, or a one-hot of its majority class), and the scores go through the same bilinear upsampling and
argmax as `eval.py`'s dense evaluator. A model's patch features can at best reproduce these per-cell labels,
so this bounds MaskCLIP-style probing at that resolution.

  python benchmarks/dense_ceiling.py --config configs/shapes.py --patch 8 [--patch 4] [--max_examples 500]

A patch size smaller than the model's stands for running the model on upscaled input (the dense evaluator's
`input_size` / sliding windows): patch 4 at 48 px is the grid of a /8 model run at 96 px.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vitclip import config as config_lib  # noqa: E402
from vitclip.data import generated, sources  # noqa: E402
from vitclip.evaluators import common, dense, metrics  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (data set and dense settings).',
                                          lock_config=False)
_PATCH = flags.DEFINE_multi_integer('patch', [8], 'Cell size(s) in input pixels.')
_MAX = flags.DEFINE_integer('max_examples', 500, 'Images to score (0: the whole split).')
_JSON = flags.DEFINE_string('json', '', 'Write the results here as JSON.')
flags.mark_flags_as_required(['config'])


def cell_scores(masks: np.ndarray, num_classes: int, patch: int, ignore_index: int) -> dict[str, np.ndarray]:
  """masks int [N, H, W] -> {oracle name: float [N, H // patch, W // patch, num_classes]}."""
  n, h, w = masks.shape
  gh, gw = h // patch, w // patch
  cropped = masks[:, :gh * patch, :gw * patch]
  onehot = (cropped[..., None] == np.arange(num_classes)) & (cropped[..., None] != ignore_index)
  fractions = onehot.reshape(n, gh, patch, gw, patch, num_classes).mean(axis=(2, 4))
  majority = np.eye(num_classes)[fractions.argmax(-1)]
  return {'fractions': fractions, 'majority': majority}


def ceiling(masks: np.ndarray, num_classes: int, patch: int, ignore_index: int) -> dict[str, float]:
  """mIoU of each oracle after bilinear upsampling to the mask size, as the dense evaluator scores."""
  out = {}
  for name, scores in cell_scores(masks, num_classes, patch, ignore_index).items():
    pred = np.asarray(dense.upsample_argmax(jnp.asarray(scores, jnp.float32), masks.shape[1:]))
    out[name] = metrics.segmentation_metrics(
        metrics.confusion_matrix(pred, masks, num_classes, ignore_index))['miou']
  return out


def main(argv):
  del argv
  config = config_lib.resolve(_CONFIG.value)
  cfg = config.evals.dense
  results = {}
  for spec in cfg.datasets:
    name, feature = common.parse_dataset(spec, cfg.mask_feature)
    source, info = sources.load_source(generated.resolve(name, config.data), cfg.split,
                                       sources.data_dir(config))
    count = len(source) if _MAX.value <= 0 else min(_MAX.value, len(source))
    masks = np.stack([dense.read_mask(source[i], feature) for i in range(count)])
    num_classes = 1 + len(common.classnames_for(cfg, info, name, cfg.class_feature))
    for patch in _PATCH.value:
      for oracle, miou in ceiling(masks, num_classes, patch, cfg.ignore_index).items():
        key = f'{name}/patch{patch}/{oracle}'
        results[key] = miou
        print(f'{key:40s} mIoU {miou:.3f}  ({masks.shape[1] // patch} x {masks.shape[2] // patch} cells, '
              f'{count} images)')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
