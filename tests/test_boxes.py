"""Box utilities against hand-worked cases: IoU, greedy and per-class NMS, AP (matching + all-point interpolation),
average recall, ground-truth boxes from a hand-drawn shapes mask, and the three proposal generators."""

import numpy as np
import pytest

from vitclip import boxes


def test_iou_matrix_by_hand():
  a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], np.float32)
  b = np.array([[1, 1, 3, 3], [2, 0, 4, 2], [0, 0, 2, 2]], np.float32)
  expected = np.array([[1 / 7, 0, 1], [4 / 16, 4 / 16, 4 / 16]])
  np.testing.assert_allclose(boxes.iou_matrix(a, b), expected, rtol=1e-6)
  assert boxes.iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)
  np.testing.assert_array_equal(boxes.area(b), [4, 4, 4])


# A, B = A shifted by 1 (IoU 90/110), C far away, D = A shifted by 5 (IoU(A, D) = 50/150, IoU(B, D) = 60/140).
NMS_BOXES = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [5, 0, 15, 10]], np.float32)
NMS_SCORES = np.array([0.9, 0.8, 0.7, 0.85])


def test_nms_by_hand():
  # Order A .9, D .85, B .8, C .7. At 0.5: A drops B (0.82); D survives (0.33 with A); C survives.
  np.testing.assert_array_equal(boxes.nms(NMS_BOXES, NMS_SCORES, 0.5), [0, 3, 2])
  # At 0.3 A also drops D.
  np.testing.assert_array_equal(boxes.nms(NMS_BOXES, NMS_SCORES, 0.3), [0, 2])
  # At 0.4, D is kept (0.33 with A) and B, whose IoU with D is 0.43, is gone already (A dropped it).
  np.testing.assert_array_equal(boxes.nms(NMS_BOXES, NMS_SCORES, 0.4), [0, 3, 2])


def test_per_class_nms_keeps_other_classes_and_caps():
  classes = np.array([0, 1, 0, 0])  # B is another class: A cannot suppress it.
  np.testing.assert_array_equal(boxes.per_class_nms(NMS_BOXES, NMS_SCORES, classes, 0.3, 10), [0, 1, 2])
  np.testing.assert_array_equal(boxes.per_class_nms(NMS_BOXES, NMS_SCORES, classes, 0.3, 2), [0, 1])
  assert len(boxes.per_class_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5, 5)) == 0


def _ap_case():
  """Class 0: image 1 has ground truth g1, g2, image 2 has g3. Detections by score: d1 on g1 (TP), d2 a
  duplicate of g1 (FP: g1 taken), d3 on g3 (TP), d4 on nothing (FP), d5 on g2 with IoU 0.6 (TP at 0.5).
  Class 1 has a ground-truth box and no detection; class 2 has neither."""
  g1, g2, g3 = [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 8, 8]
  d5 = [20, 20, 30, 26]  # IoU 60 / 100 with g2.
  dets = [(np.array([g1, g1, [40, 40, 45, 45], d5], np.float32), np.array([0.9, 0.8, 0.6, 0.5]),
           np.array([0, 0, 0, 0])),
          (np.array([g3], np.float32), np.array([0.7]), np.array([0]))]
  gts = [(np.array([g1, g2, [50, 50, 60, 60]], np.float32), np.array([0, 0, 1])),
         (np.array([g3], np.float32), np.array([0]))]
  return dets, gts


def test_average_precision_by_hand():
  dets, gts = _ap_case()
  # Ranked TP F T F T: precision 1, 1/2, 2/3, 2/4, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1; the envelope is 1, 2/3,
  # 3/5 on the three recall steps: AP = (1 + 2/3 + 3/5) / 3 = 34/45.
  ap = boxes.detection_ap(dets, gts, num_classes=3, iou_threshold=0.5)
  assert ap[0] == pytest.approx(34 / 45)
  assert ap[1] == 0.0 and np.isnan(ap[2])
  # At IoU 0.7 d5 is a false positive: T F T F F -> (1 + 2/3) / 3 = 5/9.
  assert boxes.detection_ap(dets, gts, 3, 0.7)[0] == pytest.approx(5 / 9)
  assert boxes.average_precision(np.array([0.5]), np.array([True]), 0) != boxes.average_precision(
      np.array([0.5]), np.array([True]), 0)  # nan without ground truth


def test_match_takes_best_unmatched_ground_truth():
  gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], np.float32)
  det = np.array([[1, 0, 11, 10], [0, 0, 10, 10]], np.float32)
  # The first (best) detection overlaps both equally well (IoU 9/11); it takes g1 (first), so the exact copy of
  # g1 falls back to g2 (IoU 8/12 = 0.67).
  np.testing.assert_array_equal(boxes.match(det, np.array([0.9, 0.8]), gt, 0.6), [True, True])
  np.testing.assert_array_equal(boxes.match(det, np.array([0.9, 0.8]), gt, 0.7), [True, False])


def test_average_recall_by_hand():
  gts = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)]
  proposals = [np.array([[0, 0, 10, 10], [20, 0, 30, 7.2]], np.float32)]  # IoU 1 and 0.72.
  # IoU 1 recalls at all 10 thresholds, 0.72 at 0.5 ... 0.7 (5 of 10).
  assert boxes.average_recall(proposals, gts, 2) == pytest.approx((1 + 0.5) / 2)
  assert boxes.average_recall(proposals, gts, 1) == pytest.approx(0.5)
  assert boxes.average_recall([np.zeros((0, 4))], gts, 5) == 0.0
  assert np.isnan(boxes.average_recall(proposals, [np.zeros((0, 4))], 5))


def test_shapes_gt_boxes_from_a_hand_drawn_mask():
  mask = np.zeros((12, 12), np.uint8)
  mask[1:5, 2:5] = 3  # Triangle (shape 2) around (3, 3).
  mask[8:11, 7:11] = 3  # Another triangle around (9, 9).
  mask[0, 11] = 3  # A stray pixel of the same class, outside both discs.
  mask[5, 8] = 1  # A circle pixel near the second object: another class.
  objects = np.array([[2, 0, 0, 3, 3, 2], [2, 5, 1, 9, 9, 2], [-1] * 6], np.float32)
  got, classes = boxes.shapes_gt_boxes(objects, mask, extent=1.15)
  np.testing.assert_array_equal(got, [[2, 1, 5, 5], [7, 8, 11, 11]])
  np.testing.assert_array_equal(classes, [2, 2])


def test_components_eight_connected_and_min_area():
  labels = np.zeros((6, 6), np.int32)
  labels[0:2, 0:2] = 1
  labels[2, 2] = 1  # Touches the first block diagonally: same component.
  labels[4:6, 4:6] = 1
  labels[0, 5] = 2  # One pixel: below min_area.
  labels[3:5, 0:2] = 2
  got = boxes.components(labels, min_area=2)
  assert [c for c, _ in got] == [0, 0, 1]
  np.testing.assert_array_equal([boxes.mask_box(m) for _, m in got], [[0, 0, 3, 3], [4, 4, 6, 6], [0, 3, 2, 5]])


def test_grid_boxes_cover_the_image():
  grid = boxes.grid_boxes(10, 10, scales=(0.5, 1.0), stride=0.5)
  # Side 5, step round(2.5) = 2: starts 0, 2, 4 and 5 (flush): 16 boxes; side 10: one box.
  assert len(grid) == 17
  np.testing.assert_array_equal(grid[0], [0, 0, 5, 5])
  np.testing.assert_array_equal(grid[15], [5, 5, 10, 10])
  np.testing.assert_array_equal(grid[16], [0, 0, 10, 10])


def test_merge_boxes_follows_the_hierarchy():
  image = np.zeros((12, 12, 3), np.uint8)
  a, b, c = (np.zeros((12, 12), bool) for _ in range(3))
  a[0:3, 0:3] = True
  b[0:3, 3:5] = True  # Touches a.
  c[8:12, 8:12] = True  # Five background rows below b.
  got = boxes.merge_boxes([a, b, c], image, gap=1)
  np.testing.assert_array_equal(got, [[0, 0, 3, 3], [3, 0, 5, 3], [8, 8, 12, 12], [0, 0, 5, 3]])
  got = boxes.merge_boxes([a, b, c], image, gap=6)  # c neighbours too; a + b merge first (the best fill).
  np.testing.assert_array_equal(got[3:], [[0, 0, 5, 3], [0, 0, 12, 12]])


def test_unique_rows_and_expand():
  rows = np.array([[1, 1, 2, 2], [0, 0, 1, 1], [1, 1, 2, 2]], np.float32)
  unique, index = boxes.unique_rows(rows)
  np.testing.assert_array_equal(unique, rows[:2])
  np.testing.assert_array_equal(index, [0, 1, 0])
  np.testing.assert_allclose(boxes.expand(np.array([[2, 2, 6, 4]]), 0.25, 5, 10), [[1, 1.5, 7, 4.5]])
  np.testing.assert_allclose(boxes.expand(np.array([[0, 0, 4, 4]]), 0.5, 5, 5), [[0, 0, 5, 5]])
