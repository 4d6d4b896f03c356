r"""Does A-CLIP's EMA tower pick the object? Score maps of test images as PNG overlays, and a number for it.

  python benchmarks/aclip_scores.py --workdir RUN [--split test] [--num_overlays 3] [--num_images 500] \
      [--out RUN/aclip_scores]

RUN is an A-CLIP training run (config.aclip.enabled) on a data set whose records have a segmentation mask
(`mask`: 0 = background), e.g. shapes. For each image the EMA image tower of the last checkpoint scores the
patches (VisionTransformer.token_scores, at the resolution the run scored at) on the whole image; the tokens a
view keeps (`aclip.keep_ratio`, `aclip.unit`, 'high') are then compared with the mask:

  object_precision   mean fraction of object pixels in the kept patches,
  chance             the same over all patches (what a uniformly random keep gets on average),
  object_recall      fraction of the object pixels that lie in kept patches.

Writes `scores.json` and `overlay_<i>.png` (image | score heat map | kept tokens) to --out.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from vitclip import aclip, masking, run as run_lib  # noqa: E402
from vitclip import checkpoint as checkpoint_lib  # noqa: E402
from vitclip.data import generated, pipeline, sources  # noqa: E402
from vitclip.models import TwoTower  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True, help='an A-CLIP training run')
  p.add_argument('--split', default='test')
  p.add_argument('--num_images', type=int, default=500, help='images scored for the numbers')
  p.add_argument('--num_overlays', type=int, default=3, help='PNG overlays written')
  p.add_argument('--out', default='', help='output folder (default WORKDIR/aclip_scores)')
  return p.parse_args(argv)


def patch_object_fraction(mask: np.ndarray, grid: int) -> np.ndarray:
  """mask [S, S] (0 = background) -> [grid, grid] fraction of object pixels per patch."""
  s = mask.shape[0] // grid * grid
  obj = (mask[:s, :s] > 0).astype(np.float32)
  return obj.reshape(grid, s // grid, grid, s // grid).mean(axis=(1, 3))


def render(path: str, image: np.ndarray, scores: np.ndarray, keep: np.ndarray, title: str):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  grid = scores.shape[0]
  kept = np.zeros(grid * grid, bool)
  kept[keep] = True
  fig = Figure(figsize=(7.5, 2.8))
  FigureCanvasAgg(fig)
  panels = fig.subplots(1, 3)
  size = image.shape[0]
  extent = (0, size, size, 0)
  panels[0].imshow(image)
  panels[0].set_title('image')
  panels[1].imshow(image)
  panels[1].imshow(scores, cmap='inferno', alpha=0.6, extent=extent, interpolation='nearest')
  panels[1].set_title('EMA attention score')
  panels[2].imshow(image * np.where(kept.reshape(grid, grid), 1.0, 0.25).repeat(size // grid, 0).repeat(
      size // grid, 1)[..., None])
  panels[2].set_title(f'kept tokens ({kept.sum()}/{kept.size})')
  for ax in panels:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None):
  args = parse_args(argv)
  config = run_lib.model_dir_config(args.workdir, base.get_config())
  if not config.aclip.enabled:
    raise SystemExit(f'{args.workdir} is not an A-CLIP run (config.aclip.enabled is False).')
  run = run_lib.build(config, None, train=False, check_data=False, with_tokenizer=False)
  cfg, model = run.config, run.model
  ema = checkpoint_lib.restore_params(args.workdir, run.abstract_state.ema, item='ema')
  score_size = max(model.img.patch_size, round(cfg.model.image.image_size * cfg.aclip.score_scale))
  grid = aclip.patch_grid(model)
  source, _ = generated.load_source(cfg.data.name, args.split, cfg.data, sources.data_dir(cfg))
  spec = pipeline.ImageSpec.from_config(cfg, train=False)

  @jax.jit
  def keep_of(images):
    scores = model.apply({'params': {'img': ema}}, jax.image.resize(images, (images.shape[0], score_size,
                                                                              score_size, 3), 'linear'),
                         method=lambda m, x: m.img.token_scores(x))
    view = masking.scores_in_view(scores, *(jnp.tile(jnp.array([[0., 0., 1., 1.]]), (images.shape[0], 1)),) * 2,
                                  grid)
    return view, masking.select_by_score(view, cfg.aclip.keep_ratio, cfg.aclip.unit, 'high', jax.random.key(0))

  n = min(args.num_images, len(source))
  precision, chance, recall = [], [], []
  out = args.out or os.path.join(args.workdir, 'aclip_scores')
  os.makedirs(out, exist_ok=True)
  for start in range(0, n, 100):
    records = [source[i] for i in range(start, min(n, start + 100))]
    images = np.stack([spec.eval_view(sources.decode_image(r)) for r in records])
    scores, keep = jax.device_get(keep_of(jnp.asarray(images)))
    for j, r in enumerate(records):
      on_object = patch_object_fraction(np.asarray(r['mask']), grid).ravel()
      precision.append(on_object[keep[j]].mean())
      chance.append(on_object.mean())
      recall.append(on_object[keep[j]].sum() / max(on_object.sum(), 1e-9))
      i = start + j
      if i < args.num_overlays:
        shown = np.clip(images[j] * np.asarray(cfg.data.std) + np.asarray(cfg.data.mean), 0, 1)
        render(os.path.join(out, f'overlay_{i}.png'), shown, scores[j], keep[j],
               f'{sources.decode_captions(r)[0]}: kept patches {precision[-1]:.0%} object pixels '
               f'(all patches {chance[-1]:.0%}); {recall[-1]:.0%} of the object kept')
  result = {'workdir': os.path.abspath(args.workdir), 'split': args.split, 'num_images': n, 'grid': grid,
            'keep_ratio': cfg.aclip.keep_ratio, 'unit': cfg.aclip.unit, 'pool': cfg.model.image.pool,
            'object_precision': float(np.mean(precision)), 'chance': float(np.mean(chance)),
            'object_recall': float(np.mean(recall))}
  print(json.dumps(result, indent=1))
  with open(os.path.join(out, 'scores.json'), 'w') as f:
    json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
