"""Pure numpy metrics for the retrieval and dense (segmentation) evaluators.

No jax here: these functions run on host arrays gathered from the devices, and the unit tests check them
against hand-computed cases.
"""

from typing import Sequence

import numpy as np


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
  """Pixel confusion matrix.

  Args:
    pred: int [...] predicted class per pixel, values in [0, num_classes).
    gt: int [...] (same shape) ground-truth class per pixel, values in [0, num_classes) or `ignore_index`.
    num_classes: C.
    ignore_index: gt value of pixels that are not scored (their prediction is ignored too).

  Returns:
    int64 [C, C]; entry [g, p] counts pixels of ground truth g predicted as p.

  Raises:
    ValueError: shapes differ, or a value outside [0, C) (other than `ignore_index` in gt), which means the
      class list does not match the masks.
  """
  pred, gt = np.asarray(pred), np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f'prediction shape {pred.shape} != ground-truth shape {gt.shape}.')
  keep = gt != ignore_index
  pred, gt = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
  for name, x in (('ground-truth', gt), ('predicted', pred)):
    bad = (x < 0) | (x >= num_classes)
    if np.any(bad):
      raise ValueError(f'{name} class {int(x[bad][0])} is outside [0, {num_classes}) (ignore_index='
                       f'{ignore_index}); the class list has fewer entries than the mask values: check the '
                       'class names (background + one per class) and ignore_index.')
  return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(
      num_classes, num_classes)


def segmentation_metrics(conf: np.ndarray) -> dict:
  """Semantic-segmentation metrics from a confusion matrix.

  Args:
    conf: int [C, C], rows = ground truth, columns = prediction (see `confusion_matrix`).

  Returns:
    dict(
      miou: float, mean IoU over the classes present in the ground truth or the prediction (a class with
        union 0 has an undefined IoU and is excluded; 0.0 if no class is present),
      iou: float64 [C], per-class IoU, NaN where the union is 0,
      pixel_acc: float, correctly classified pixels / scored pixels (0.0 if none),
      mean_acc: float, mean over classes present in the ground truth of the per-class recall,
      fg_iou: float, class-agnostic foreground IoU with class 0 as the background: pixels of any other class
        in both the ground truth and the prediction / in either (0.0 if neither has any)).
  """
  conf = np.asarray(conf, np.float64)
  tp = np.diag(conf)
  gt_count, pred_count = conf.sum(1), conf.sum(0)
  union = gt_count + pred_count - tp
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    acc = np.where(gt_count > 0, tp / np.where(gt_count > 0, gt_count, 1), np.nan)
  total = conf.sum()
  fg_both, fg_either = conf[1:, 1:].sum(), total - conf[0, 0]
  return dict(
      miou=float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
      iou=iou,
      pixel_acc=float(tp.sum() / total) if total > 0 else 0.0,
      mean_acc=float(np.nanmean(acc)) if np.any(gt_count > 0) else 0.0,
      fg_iou=float(fg_both / fg_either) if fg_either > 0 else 0.0,
  )


def with_true_background(fg_pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """The prediction with the background taken from the ground truth: 0 where gt == 0, else `fg_pred`.

  fg_pred: int [...] foreground class per pixel (values >= 1); gt: int [...] same shape -> int [...]. Scored
  against gt, this isolates how well the foreground classes are told apart from how well the background is
  found (an upper bound for better background handling).
  """
  return np.where(np.asarray(gt) == 0, 0, fg_pred)


def retrieval_recall(sim: np.ndarray, txt_to_img: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                     chunk: int = 1024) -> dict:
  """Image<->text retrieval recall@k with several captions per image.

  Ties count against the query (pessimistic): a target is within the top k only if fewer than k
  non-target candidates score at least as high as it. A constant similarity (a collapsed model) therefore
  scores 0 (once there are k other candidates), never 1.

  Args:
    sim: float [N_img, N_txt] similarity of every image to every text.
    txt_to_img: int [N_txt], the index of the image each text describes.
    ks: the k values.
    chunk: rows / columns processed at once (memory bound only; the result does not depend on it).

  Returns:
    {'i2t_r{k}': fraction of images whose top k texts contain any of its captions,
     't2i_r{k}': fraction of texts whose top k images contain its image} for every k.
    Images without captions are excluded from i2t.
  """
  sim = np.asarray(sim, np.float32)
  txt_to_img = np.asarray(txt_to_img)
  n_img, n_txt = sim.shape
  if txt_to_img.shape != (n_txt,):
    raise ValueError(f'txt_to_img has shape {txt_to_img.shape}; expected ({n_txt},) for sim {sim.shape}.')
  if n_txt and (txt_to_img.min() < 0 or txt_to_img.max() >= n_img):
    raise ValueError(f'txt_to_img has values outside [0, {n_img}).')
  i2t_rank = np.zeros(n_img, np.int64)
  has_caption = np.zeros(n_img, bool)
  for s in range(0, n_img, chunk):  # Row chunks bound the memory of the [chunk, N_txt] temporaries.
    rows = np.arange(s, min(s + chunk, n_img))
    own = txt_to_img[None, :] == rows[:, None]  # [n, N_txt]: text describes the image.
    block = sim[rows]
    best_own = np.where(own, block, -np.inf).max(1)  # Score of the image's best caption.
    i2t_rank[rows] = np.sum(~own & (block >= best_own[:, None]), axis=1)  # Other texts scoring >= it.
    has_caption[rows] = own.any(1)
  t2i_rank = np.zeros(n_txt, np.int64)
  for s in range(0, n_txt, chunk):
    cols = np.arange(s, min(s + chunk, n_txt))
    block = sim[:, cols]  # [N_img, n]
    target = block[txt_to_img[cols], np.arange(len(cols))]
    t2i_rank[cols] = np.sum(block >= target[None, :], axis=0) - 1  # Other images scoring >= the target.
  out = {}
  for k in ks:
    out[f'i2t_r{k}'] = float(np.mean(i2t_rank[has_caption] < k)) if has_caption.any() else 0.0
    out[f't2i_r{k}'] = float(np.mean(t2i_rank < k)) if n_txt else 0.0
  return out
