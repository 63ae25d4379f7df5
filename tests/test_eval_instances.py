"""Tests of evaluators/instances.py: COCO AP of hand-made cases."""
import numpy as np
from pycocotools import mask as mask_api
import pytest

from evaluators import instances as inst_eval

STUFF = 5  # A stuff class of synthetic_scenes (>= NUM_THINGS = 4).


def _maps(shape, objects):
  """(instances, semantics) of one image from [(mask slices, class)]."""
  instances = np.zeros(shape, np.int32)
  semantics = np.full(shape, STUFF, np.int32)
  for i, (where, cls) in enumerate(objects):
    instances[where] = i + 1
    semantics[where] = cls
  return instances, semantics


def _square(top, left, size, shape=(16, 16)):
  mask = np.zeros(shape, bool)
  mask[top:top + size, left:left + size] = True
  return mask


# Two 16x16 images with 3 and 2 instances of classes 0 and 1. Image A's
# instance 2 is an L (rows 8-13, columns 1-2 and row 13, columns 3-6), whose
# box is bigger than its mask.
_L = np.zeros((16, 16), bool)
_L[8:14, 1:3] = True
_L[13, 3:7] = True
MAPS_A = _maps((16, 16), [((slice(1, 5), slice(2, 7)), 0), (_L, 1),
                          ((slice(10, 15), slice(10, 14)), 0)])
MAPS_B = _maps((16, 16), [((slice(0, 16), slice(0, 3)), 1),
                          ((slice(3, 9), slice(8, 15)), 0)])
INSTANCES = np.stack([MAPS_A[0], MAPS_B[0]])
SEMANTICS = np.stack([MAPS_A[1], MAPS_B[1]])


def _perfect(instances, semantics, slots=4):
  """Ground truth as padded predictions: score 1, exact masks and boxes."""
  num_images, height, width = instances.shape
  pred = dict(boxes=np.zeros((num_images, slots, 4)),
              scores=np.zeros((num_images, slots)),
              classes=np.zeros((num_images, slots), np.int32),
              masks=np.zeros((num_images, slots, height, width), bool))
  for b in range(num_images):
    for k, i in enumerate(np.unique(instances[b][instances[b] > 0])):
      mask = instances[b] == i
      pred["boxes"][b, k] = inst_eval.mask_box(mask)
      pred["scores"][b, k] = 1
      pred["classes"][b, k] = semantics[b][mask][0]
      pred["masks"][b, k] = mask
  return pred


def test_ground_truth_annotations():
  gt = inst_eval.coco_ground_truth(INSTANCES, SEMANTICS, 4, [7, 9])
  assert gt["images"] == [{"id": 7, "height": 16, "width": 16},
                          {"id": 9, "height": 16, "width": 16}]
  assert [c["id"] for c in gt["categories"]] == [1, 2, 3, 4]
  anns = gt["annotations"]
  assert [a["id"] for a in anns] == [1, 2, 3, 4, 5]
  assert [a["image_id"] for a in anns] == [7, 7, 7, 9, 9]
  assert [a["category_id"] for a in anns] == [1, 2, 1, 2, 1]  # class + 1
  assert all(a["iscrowd"] == 0 for a in anns)
  # Rows 1-4, columns 2-6: x 2, y 1, 5 wide, 4 high.
  assert anns[0]["bbox"] == [2, 1, 5, 4] and anns[0]["area"] == 20
  # The L: columns 1-6, rows 8-13, 6 x 2 + 4 = 16 pixels.
  assert anns[1]["bbox"] == [1, 8, 6, 6] and anns[1]["area"] == 16
  np.testing.assert_array_equal(
      mask_api.decode(anns[1]["segmentation"]), _L)


def test_ground_truth_rejects_mixed_or_stuff_instances():
  instances, semantics = _maps((8, 8), [((slice(0, 4), slice(0, 4)), 0)])
  semantics[0, 0] = 1
  with pytest.raises(ValueError, match="one thing class"):
    inst_eval.coco_ground_truth(instances[None], semantics[None], 4, [1])
  semantics[:] = STUFF
  with pytest.raises(ValueError, match="one thing class"):
    inst_eval.coco_ground_truth(instances[None], semantics[None], 4, [1])


def test_detections_skip_empty_slots_and_convert_boxes():
  masks = np.zeros((1, 4, 8, 8), bool)
  masks[0, 1, 1:4, 2:7] = True
  results = inst_eval.coco_detections(
      boxes=np.array([[[0, 0, 1, 1], [1, 2, 4, 7], [0, 0, 2, 2],
                       [2.5, 1, 6, 3.25]]]),
      scores=np.array([[0.2, 0.9, 0.0, -1.0]]),
      classes=np.array([[3, 1, 0, 2]]), masks=masks, image_ids=[5])
  # Slots 2 (score 0) and 3 (< 0) hold no detection; by decreasing score.
  assert [r["score"] for r in results] == [0.9, 0.2]
  assert [r["category_id"] for r in results] == [2, 4]
  assert all(r["image_id"] == 5 for r in results)
  # [ymin, xmin, ymax, xmax] = [1, 2, 4, 7] -> [x, y, w, h] = [2, 1, 5, 3].
  assert results[0]["bbox"] == [2, 1, 5, 3]
  np.testing.assert_array_equal(
      mask_api.decode(results[0]["segmentation"]), masks[0, 1])
  top = inst_eval.coco_detections(
      boxes=np.array([[[1, 2, 4, 7]] * 3]), scores=np.array([[0.1, 0.3, 0.2]]),
      classes=np.zeros((1, 3), int), masks=np.ones((1, 3, 8, 8), bool),
      image_ids=[5], max_detections=2)
  assert [r["score"] for r in top] == [0.3, 0.2]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_prediction_is_perfect(iou_type):
  gt = inst_eval.coco_ground_truth(INSTANCES, SEMANTICS, 4, [1, 2])
  dt = inst_eval.coco_detections(**_perfect(INSTANCES, SEMANTICS),
                                 image_ids=[1, 2])
  stats = inst_eval.coco_ap(gt, dt, iou_type)
  assert sorted(stats) == sorted(inst_eval.STATS)
  for name in ("AP", "AP50", "AP75", "APs", "AR10", "AR100", "ARs"):
    assert stats[name] == pytest.approx(100, abs=1e-6), name
  # AR1 counts 1 detection per image and class: class 0 finds 2 of its 3
  # objects (image A has 2), class 1 both of its 2.
  assert stats["AR1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
  # 16x16 images: every object is small (< 32^2 pixels).
  assert np.isnan(stats["APm"]) and np.isnan(stats["APl"])


def _ap(gt_objects, detections, iou_type):
  """AP stats of one 16x16 image: [(mask, class)], [(mask, class, score)]."""
  instances, semantics = _maps((16, 16), gt_objects)
  gt = inst_eval.coco_ground_truth(instances[None], semantics[None], 4, [1])
  masks, classes, scores = zip(*detections)
  dt = inst_eval.coco_detections(
      boxes=np.array([[inst_eval.mask_box(m) for m in masks]]),
      scores=np.array([scores]), classes=np.array([classes]),
      masks=np.array([masks]), image_ids=[1])
  return inst_eval.coco_ap(gt, dt, iou_type)


GT_SQUARE = _square(3, 3, 10)      # 100 pixels.
OTHER_SQUARE = _square(13, 13, 3)  # Disjoint from GT_SQUARE.


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_partial_overlap(iou_type):
  # An 8x8 square in the 10x10 one: IoU = 64 / 100 = 0.64 for masks and
  # boxes. It matches at IoU thresholds 0.5, 0.55, 0.6 (<= 0.64, none equal,
  # so pycocotools' >= is not put to the test), not at 0.65..0.95: AP is
  # 3 of 10 thresholds with precision 1, the other 7 with 0.
  stats = _ap([(GT_SQUARE, 0)], [(_square(3, 3, 8), 0, 0.9)], iou_type)
  assert stats["AP"] == pytest.approx(30)
  assert stats["AP50"] == pytest.approx(100)
  assert stats["AP75"] == pytest.approx(0)


# Exact detections (TP) and disjoint ones of the GT's class (FP), one or two
# ground-truth objects. COCO's AP at a threshold is the mean over recalls
# r = 0, 0.01, ..., 1 of the highest precision at a recall >= r.
TWO_GT = [(GT_SQUARE, 0), (OTHER_SQUARE, 0)]
RANKING_CASES = {
    # Class 1 (category 2) has no ground truth and is left out; class 0 has
    # one object and no detection: AP 0.
    "wrong_class": ([(GT_SQUARE, 0)], [(GT_SQUARE, 1, 0.9)], 0.0),
    # TP then a duplicate FP: precision 1 up to recall 1 already.
    "duplicate_after": ([(GT_SQUARE, 0)],
                        [(GT_SQUARE, 0, 0.9), (GT_SQUARE, 0, 0.5)], 100.0),
    # FP then TP: recall 1 only at precision 1/2.
    "fp_first": ([(GT_SQUARE, 0)],
                 [(OTHER_SQUARE, 0, 0.9), (GT_SQUARE, 0, 0.5)], 50.0),
    # TP, FP, TP on two objects: (recall, precision) = (1/2, 1), (1/2, 1/2),
    # (1, 2/3). r = 0 .. 0.5 (51 points) get 1, r = 0.51 .. 1 (50) get 2/3.
    "fp_between": (TWO_GT, [(GT_SQUARE, 0, 0.9), (_square(0, 14, 2), 0, 0.8),
                            (OTHER_SQUARE, 0, 0.7)],
                   100 * (51 + 50 * 2 / 3) / 101),  # 83.498
}


@pytest.mark.parametrize("case", sorted(RANKING_CASES))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ranking(case, iou_type):
  gt_objects, detections, expected = RANKING_CASES[case]
  assert _ap(gt_objects, detections, iou_type)["AP"] == pytest.approx(
      expected, abs=1e-9)


def test_no_detections():
  gt = inst_eval.coco_ground_truth(INSTANCES, SEMANTICS, 4, [1, 2])
  for iou_type in ("bbox", "segm"):
    stats = inst_eval.coco_ap(gt, [], iou_type)
    assert stats["AP"] == 0 and stats["AR100"] == 0
  with pytest.raises(ValueError, match="iou_type"):
    inst_eval.coco_ap(gt, [], "keypoints")


def _evaluator(monkeypatch, batches):
  """An Evaluator whose predictions are the given (batch, outputs) pairs."""
  monkeypatch.setattr(inst_eval.common, "Predictions",
                      lambda predict_fn, **kw: lambda variables: iter(batches))
  return inst_eval.Evaluator(None, mesh=None, data=None, pp=None,
                             batch_size=2)


def _batch(instances, semantics, mask, pred):
  # Labels with a channel axis, as pp gives them.
  return ({"instances": instances[..., None], "semantics": semantics[..., None],
           "_mask": np.array(mask)}, pred)


def test_evaluator_skips_padding(monkeypatch):
  # The padding example (a copy of image A with no detection) would add 3
  # missed objects if counted.
  pred_a = _perfect(INSTANCES[:1], SEMANTICS[:1])
  no_pred = {k: np.zeros_like(v) for k, v in pred_a.items()}
  first = _batch(np.concatenate([INSTANCES[:1]] * 2),
                 np.concatenate([SEMANTICS[:1]] * 2), [True, False],
                 {k: np.concatenate([pred_a[k], no_pred[k]]) for k in pred_a})
  second = _batch(INSTANCES[1:], SEMANTICS[1:], [True],
                  _perfect(INSTANCES[1:], SEMANTICS[1:]))
  got = dict(_evaluator(monkeypatch, [first, second]).run({}))
  assert sorted(got) == sorted(f"{p}_{m}" for p in ("box", "mask")
                               for m in inst_eval.METRICS)
  for name, value in got.items():
    assert value == pytest.approx(100, abs=1e-6), name


def test_evaluator_image_ids_are_unique_over_the_split(monkeypatch):
  # Batch 1: an object, not detected. Batch 2: no object, and a detection
  # where batch 1's object is. Were both images numbered 1, that would be a
  # hit (AP 100); they are two images: one miss, one FP, AP 0.
  instances, semantics = _maps((16, 16), [(GT_SQUARE, 0)])
  empty = _perfect(np.zeros((1, 16, 16), int), semantics[None])
  first = _batch(instances[None], semantics[None], [True], empty)
  second = _batch(np.zeros((1, 16, 16), int), semantics[None], [True],
                  _perfect(instances[None], semantics[None]))
  got = dict(_evaluator(monkeypatch, [first, second]).run({}))
  assert got["box_AP"] == 0 and got["mask_AP"] == 0


def test_evaluator_mask_size_mismatch(monkeypatch):
  pred = _perfect(INSTANCES, SEMANTICS)
  pred["masks"] = pred["masks"][..., ::2, ::2]
  evaluator = _evaluator(monkeypatch,
                         [_batch(INSTANCES, SEMANTICS, [True, True], pred)])
  with pytest.raises(ValueError, match="resized to the label size"):
    dict(evaluator.run({}))
