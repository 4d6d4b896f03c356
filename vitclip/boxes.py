"""Boxes: IoU, greedy non-maximum suppression, average precision and average recall, ground-truth boxes of the
shapes world, and region proposals (connected components, a multi-scale grid, selective-search-style merging).

Conventions (numpy throughout; everything here runs on the host):
  * A box is float32 (x0, y0, x1, y1) in pixel-edge coordinates: pixel (row r, column c) covers
    [c, c + 1) x [r, r + 1), so the tight box of a set of pixels is (min c, min r, max c + 1, max r + 1) and
    its area is the pixel count of a filled rectangle.
  * Detections are ranked by score, highest first; equal scores keep their input order (stable sorts), so
    every result here is deterministic.
"""

from typing import Sequence

import numpy as np
from scipy import ndimage

# Eight-connectivity: shapes' thin parts (a star's points, a cross's arms) touch diagonally after upsampling.
_CONNECTIVITY = np.ones((3, 3), bool)
# Selective search (Uijlings et al. 2013) describes a region's colour by 25 bins per channel.
_COLOR_BINS = 25
# COCO's IoU thresholds of average recall: 0.5, 0.55, ..., 0.95.
AR_IOUS = np.linspace(0.5, 0.95, 10)

# ------------------------------------------------------------------------------------------ geometry


def area(boxes: np.ndarray) -> np.ndarray:
  """boxes [..., 4] -> areas [...] (0 for empty boxes)."""
  boxes = np.asarray(boxes, np.float32)
  return np.maximum(boxes[..., 2] - boxes[..., 0], 0) * np.maximum(boxes[..., 3] - boxes[..., 1], 0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a [N, 4], b [M, 4] -> float32 [N, M] intersection over union (0 where the union is empty)."""
  a = np.asarray(a, np.float32).reshape(-1, 4)
  b = np.asarray(b, np.float32).reshape(-1, 4)
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.maximum(hi - lo, 0), axis=-1)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0).astype(np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
  """bool [H, W] -> float32 [4] tight box of the True pixels, or None when there is none."""
  rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
  if not rows.any():
    return None
  r0, r1 = np.flatnonzero(rows)[[0, -1]]
  c0, c1 = np.flatnonzero(cols)[[0, -1]]
  return np.array([c0, r0, c1 + 1, r1 + 1], np.float32)


def expand(boxes: np.ndarray, fraction: float, height: int, width: int) -> np.ndarray:
  """Grows every box by `fraction` of its width / height on each side, clipped to the image: [N, 4] -> [N, 4]."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  pad = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1) * fraction
  out = boxes + pad * np.array([-1, -1, 1, 1], np.float32)
  return np.clip(out, 0, np.array([width, height, width, height], np.float32))


# ---------------------------------------------------------------------------------------- suppression


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Greedy NMS: take the best remaining box, drop every other box whose IoU with it exceeds `iou_threshold`.

  boxes [N, 4], scores [N] -> int [K] indices of the kept boxes, best first.
  """
  order = np.argsort(-np.asarray(scores), kind='stable')
  ious = iou_matrix(boxes, boxes)
  keep, dropped = [], np.zeros(len(order), bool)
  for i in order:
    if dropped[i]:
      continue
    keep.append(i)
    dropped |= ious[i] > iou_threshold
  return np.asarray(keep, np.int64)


def per_class_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                  max_detections: int) -> np.ndarray:
  """NMS within each class (boxes of different classes never suppress each other), then the `max_detections`
  best over all classes. boxes [N, 4], scores [N], classes int [N] -> int [K] indices, best first."""
  classes = np.asarray(classes)
  keep = [np.flatnonzero(classes == c)[nms(boxes[classes == c], scores[classes == c], iou_threshold)]
          for c in np.unique(classes)]
  keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
  keep = keep[np.argsort(-np.asarray(scores)[keep], kind='stable')]
  return keep[:max_detections]


# ---------------------------------------------------------------------------------- precision / recall


def match(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Which detections of one image and class are true positives (COCO's matching): in score order, each
  detection takes the not yet matched ground-truth box it overlaps most, if that IoU >= `iou_threshold`.

  det_boxes [N, 4], det_scores [N], gt_boxes [G, 4] -> bool [N] (in the input order).
  """
  tp = np.zeros(len(det_boxes), bool)
  if not len(det_boxes) or not len(gt_boxes):
    return tp
  ious = iou_matrix(det_boxes, gt_boxes)
  taken = np.zeros(len(gt_boxes), bool)
  for i in np.argsort(-np.asarray(det_scores), kind='stable'):
    candidates = np.where(taken, -1.0, ious[i])
    j = int(np.argmax(candidates))
    if candidates[j] >= iou_threshold:
      tp[i], taken[j] = True, True
  return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
  """Area under the all-point interpolated precision-recall curve (VOC 2010+; COCO samples the same envelope at
  101 recalls): precision at recall r is the best precision at any recall >= r.

  scores [N], tp bool [N]: every detection of one class over the data set. Returns nan when num_gt is 0.
  """
  if num_gt == 0:
    return float('nan')
  order = np.argsort(-np.asarray(scores), kind='stable')
  tp = np.asarray(tp, bool)[order]
  ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
  recall = np.concatenate([[0.], ctp / num_gt])
  precision = np.concatenate([[1.], ctp / np.maximum(ctp + cfp, 1)])
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  return float(np.sum((recall[1:] - recall[:-1]) * envelope[1:]))


def detection_ap(dets: Sequence[tuple], gts: Sequence[tuple], num_classes: int,
                 iou_threshold: float = 0.5) -> np.ndarray:
  """Per-class AP over a data set.

  Args:
    dets: per image (boxes [N, 4], scores [N], classes int [N]).
    gts: per image (boxes [G, 4], classes int [G]).
    num_classes: C; class ids are 0..C-1.
    iou_threshold: IoU a detection needs with its ground-truth box.

  Returns:
    float [C]: AP per class, nan for classes without ground truth (mAP = nanmean).
  """
  out = np.full(num_classes, np.nan)
  for c in range(num_classes):
    scores, tps, num_gt = [], [], 0
    for (boxes, s, cls), (gt_boxes, gt_cls) in zip(dets, gts):
      mine, gt = np.asarray(cls) == c, np.asarray(gt_boxes).reshape(-1, 4)[np.asarray(gt_cls) == c]
      num_gt += len(gt)
      scores.append(np.asarray(s)[mine])
      tps.append(match(np.asarray(boxes).reshape(-1, 4)[mine], np.asarray(s)[mine], gt, iou_threshold))
    out[c] = average_precision(np.concatenate(scores), np.concatenate(tps), num_gt)
  return out


def average_recall(proposals: Sequence[np.ndarray], gts: Sequence[np.ndarray], top_n: int,
                   ious: np.ndarray = AR_IOUS) -> float:
  """Average recall of the first `top_n` proposals (Hosang et al. 2016): for every ground-truth box its best
  IoU with any of them (no one-to-one matching: proposals are not detections), recall at each threshold of
  `ious`, averaged over the thresholds.

  proposals: per image float [N, 4], ranked best first; gts: per image float [G, 4]. nan without ground truth.
  """
  best = [iou_matrix(g, p[:top_n]).max(axis=1) if len(p) else np.zeros(len(g))
          for p, g in zip(proposals, gts) if len(g)]
  if not best:
    return float('nan')
  best = np.concatenate(best)
  return float(np.mean(best[:, None] >= np.asarray(ious)[None, :]))


# ------------------------------------------------------------------------------------- ground truth


def shapes_gt_boxes(objects: np.ndarray, mask: np.ndarray, extent: float) -> tuple[np.ndarray, np.ndarray]:
  """Ground-truth boxes of a shapes scene: per object, the tight box of the mask pixels of its shape class
  whose centres lie within `extent` x radius of its centre (vitclip.data.shapes.EXTENT: every shape lies within
  it, and the generator keeps these discs of different objects apart, so no other object's pixel is inside).

  Args:
    objects: float [K, 6] rows (shape, color, size, centre x, centre y, radius); rows with shape < 0 are absent.
    mask: int [H, W], 0 background, shape k -> k + 1.

  Returns:
    (boxes float32 [G, 4], classes int32 [G]) of the objects that have at least one pixel.
  """
  h, w = mask.shape
  ys, xs = np.mgrid[0:h, 0:w] + 0.5  # Pixel centres, as the renderer tests them.
  boxes, classes = [], []
  for shape, _, _, cx, cy, radius in np.asarray(objects, np.float32):
    if shape < 0:
      continue
    near = (xs - cx) ** 2 + (ys - cy) ** 2 <= (extent * radius) ** 2
    box = mask_box(near & (mask == int(shape) + 1))
    if box is not None:
      boxes.append(box)
      classes.append(int(shape))
  return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)


# ----------------------------------------------------------------------------------------- proposals


def components(labels: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
  """Connected components (8-connected) of every foreground class of a label map.

  labels: int [H, W], 0 background, k + 1 class k -> [(class k, bool [H, W] region)] of the components with at
  least `min_area` pixels, by class then position.
  """
  out = []
  for value in np.unique(labels):
    if value <= 0:
      continue
    regions, n = ndimage.label(labels == value, structure=_CONNECTIVITY)
    for i in range(1, n + 1):
      region = regions == i
      if region.sum() >= min_area:
        out.append((int(value) - 1, region))
  return out


def grid_boxes(height: int, width: int, scales: Sequence[float], stride: float) -> np.ndarray:
  """Square sliding boxes at several scales: side = scale x the shorter image side, a box every stride x side
  pixels along each axis, the last one flush with the border. -> float32 [N, 4]."""
  out = []
  for scale in scales:
    side = max(1, int(round(scale * min(height, width))))
    step = max(1, int(round(stride * side)))
    ys, xs = _starts(height, side, step), _starts(width, side, step)
    out += [(x, y, x + side, y + side) for y in ys for x in xs]
  return np.asarray(out, np.float32).reshape(-1, 4)


def _starts(size: int, window: int, step: int) -> list[int]:
  last = max(size - window, 0)
  return sorted({min(i * step, last) for i in range(last // step + 2)})


def merge_boxes(regions: Sequence[np.ndarray], image: np.ndarray, gap: int) -> np.ndarray:
  """Selective search's hierarchical grouping (Uijlings et al. 2013) started from `regions`: repeatedly merge
  the most similar pair of neighbouring regions (within `gap` pixels of each other) until no pair is left;
  every region of the hierarchy (the initial ones included) is a proposal.

  Similarity = colour (histogram intersection, 25 bins per channel) + size (1 - joint area / image area,
  merges small regions first) + fill (1 - the part of their joint box neither covers / image area).

  Args:
    regions: bool [H, W] masks (disjoint).
    image: uint8 [H, W, 3].
    gap: pixels of background two regions may have between them and still be neighbours (0: overlapping only,
      1: touching, including diagonally).

  Returns:
    float32 [M, 4]: the initial regions' boxes, then one box per merge.
  """
  h, w = image.shape[:2]
  full = float(h * w)
  masks = [np.asarray(r, bool) for r in regions]
  hists = [_color_hist(image, m) for m in masks]
  boxes = [mask_box(m) for m in masks]
  grown = [_grow(m, gap) for m in masks]
  active = set(range(len(masks)))

  def similarity(i, j):
    a = masks[i].sum() + masks[j].sum()
    joint = area(np.concatenate([np.minimum(boxes[i][:2], boxes[j][:2]), np.maximum(boxes[i][2:], boxes[j][2:])]))
    return np.minimum(hists[i], hists[j]).sum() + (1 - a / full) + (1 - (joint - a) / full)

  sims = {(i, j): similarity(i, j) for i in active for j in active if i < j and (grown[i] & masks[j]).any()}
  while sims:
    i, j = max(sims, key=lambda k: (sims[k], -k[0], -k[1]))
    k = len(masks)
    masks.append(masks[i] | masks[j])
    ai, aj = masks[i].sum(), masks[j].sum()
    hists.append((ai * hists[i] + aj * hists[j]) / (ai + aj))
    boxes.append(mask_box(masks[k]))
    grown.append(grown[i] | grown[j])
    active -= {i, j}
    sims = {p: s for p, s in sims.items() if i not in p and j not in p}
    sims.update({(m, k): similarity(m, k) for m in active if (grown[m] & masks[k]).any()})
    active.add(k)
  return np.asarray(boxes, np.float32).reshape(-1, 4)


def _grow(mask: np.ndarray, gap: int) -> np.ndarray:
  return ndimage.binary_dilation(mask, _CONNECTIVITY, iterations=gap) if gap > 0 else mask


def _color_hist(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """float [3 x 25] colour histogram of the masked pixels, L1-normalized."""
  pixels = image[mask].astype(np.int64) * _COLOR_BINS // 256  # [n, 3] bin per channel
  hist = np.concatenate([np.bincount(pixels[:, c], minlength=_COLOR_BINS) for c in range(3)]).astype(np.float64)
  return hist / max(hist.sum(), 1.0)


def unique_rows(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """boxes [N, 4] -> (the distinct boxes [U, 4] in first-seen order, int [N] index of each input among them)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  _, first, inverse = np.unique(boxes, axis=0, return_index=True, return_inverse=True)
  order = np.argsort(first)  # Sorted-unique position -> first-seen position.
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  return boxes[np.sort(first)], rank[inverse.reshape(-1)]
