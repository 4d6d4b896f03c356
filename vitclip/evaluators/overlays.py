"""PNG overlays of dense predictions: one file per image, a row image | prediction | ground truth with a legend.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so it works on
headless machines and does not disturb other matplotlib users in the process.
"""

import colorsys
import os
from typing import Sequence

import numpy as np

# 20 well-separated colours (matplotlib's tab20 order: saturated first, then light) for classes 1..20.
_TAB20 = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229)], np.uint8)
IGNORE_RGB = (255, 255, 255)
ALPHA = 0.55  # Weight of the class colour over the image in the prediction / ground-truth panels.


def palette(num_classes: int) -> np.ndarray:
  """uint8 [num_classes, 3]: class 0 (background) black, then tab20, then golden-ratio hues."""
  out = [(0, 0, 0)] + [tuple(c) for c in _TAB20[:max(num_classes - 1, 0)]]
  for i in range(len(out), num_classes):
    h = (i * 0.618033988749895) % 1.0
    out.append(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95)))
  return np.asarray(out[:num_classes], np.uint8)


def colorize(labels: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
  """int [H, W] class map -> uint8 [H, W, 3]; `ignore_index` (and any value outside the palette) white."""
  labels = np.asarray(labels)
  ok = (labels >= 0) & (labels < len(colors))
  out = np.empty(labels.shape + (3,), np.uint8)
  out[...] = IGNORE_RGB
  out[ok] = colors[labels[ok]]
  del ignore_index  # Everything outside the palette is shown the same way.
  return out


def blend(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
  """uint8 image [H, W, 3] + class map [H, W] -> uint8 [H, W, 3] with the class colours laid over the image."""
  if image.shape[:2] != labels.shape:
    from PIL import Image
    image = np.asarray(Image.fromarray(image).resize(labels.shape[::-1], Image.BILINEAR))
  color = colorize(labels, colors, ignore_index).astype(np.float32)
  return np.clip((1 - ALPHA) * image.astype(np.float32) + ALPHA * color, 0, 255).astype(np.uint8)


def render_row(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, class_names: Sequence[str],
               ignore_index: int = 255, title: str = ''):
  """-> matplotlib Figure: image | prediction | ground truth, legend of the classes in either map."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch
  colors = palette(len(class_names))
  fig = Figure(figsize=(9.5, 3.4), dpi=100)
  FigureCanvasAgg(fig)
  panels = [('image', image), ('prediction', blend(image, pred, colors, ignore_index)),
            ('ground truth', blend(image, gt, colors, ignore_index))]
  for i, (name, panel) in enumerate(panels):
    ax = fig.add_subplot(1, 3, i + 1)
    ax.imshow(panel, interpolation='nearest')
    ax.set_title(name, fontsize=9)
    ax.axis('off')
  present = sorted(set(np.unique(pred).tolist()) | set(np.unique(gt).tolist()))
  handles = [Patch(facecolor=colors[c] / 255.0, edgecolor='k', label=class_names[c])
             for c in present if 0 <= c < len(class_names)]
  fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6) or 1, fontsize=8, frameon=False)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(left=0.01, right=0.99, top=0.85, bottom=0.16, wspace=0.04)
  return fig


def write_overlays(out_dir: str, images: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                   gts: Sequence[np.ndarray], class_names: Sequence[str], ignore_index: int = 255) -> list[str]:
  """Writes out_dir/000.png, 001.png, ...: one row per image. Call on one process only.

  Args:
    images: uint8 [H, W, 3] per example (any size; resized to its mask for the overlays).
    preds, gts: int [H, W] class maps per example (class 0 = background; gt may hold ignore_index).
    class_names: name of every class index.

  Returns:
    the written paths.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, (image, pred, gt) in enumerate(zip(images, preds, gts)):
    fig = render_row(np.asarray(image), np.asarray(pred), np.asarray(gt), class_names, ignore_index)
    path = os.path.join(out_dir, f'{i:03d}.png')
    fig.savefig(path)
    paths.append(path)
  return paths
