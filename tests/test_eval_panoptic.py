"""Tests of evaluators/panoptic.py: hand-made maps, the COCO panoptic sample
(panopticapi's own sample data, ground truth only) and a full split."""
import json
import os

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from evaluators import panoptic
from uvimx import sharding

# Things a, b, c; stuff s, t. c never occurs below.
CATS = {1: {"name": "a", "isthing": True}, 2: {"name": "b", "isthing": True},
        3: {"name": "s", "isthing": False},
        4: {"name": "t", "isthing": False}, 5: {"name": "c", "isthing": 1}}
A, B, S, T = 1, 2, 3, 4


def _pan(semantics, instances=None):
  """(H, W, 2) from a semantic map and an instance map (default 0)."""
  semantics = np.array(semantics)
  instances = (np.zeros_like(semantics) if instances is None
               else np.array(instances))
  return np.stack([semantics, instances], axis=-1)


def _stats(gt, pred, crowd=None):
  """{class name: (iou sum, TP, FP, FN)} of the classes that occur."""
  stats = panoptic.pq_stats(gt, pred, CATS, crowd)
  names = [CATS[i]["name"] for i in sorted(CATS)]
  return {n: tuple(s) for n, s in zip(names, stats) if s.any()}


def test_perfect_prediction():
  gt = _pan([[A, A, B, 0], [S, S, T, T], [A, A, S, 9]],
            [[1, 2, 1, 0], [0, 0, 0, 0], [3, 3, 0, 0]])
  got = panoptic.panoptic_quality([gt, gt[:2]], [gt, gt[:2]], CATS)
  for group in ("", "_things", "_stuff"):
    for m in ("pq", "sq", "rq"):
      assert got[m + group] == 100
  # a, b, s, t occur (9 is void); c is in no mean.
  assert (got["n"], got["n_things"], got["n_stuff"]) == (4, 2, 2)
  assert got["pq/a"] == 100 and np.isnan(got["pq/c"])
  # Image 1 has three a segments (instances 1, 2, 3), each a TP with IoU 1.
  assert _stats(gt, gt)["a"] == (3, 3, 0, 0)


def test_thing_split_in_two():
  gt = _pan([[A] * 4] * 2, [[1] * 4] * 2)
  # 6 + 2 pixels: the 6 match (IoU 6/8), the 2 are a FP (IoU 2/8).
  pred = _pan([[A] * 4] * 2, [[1, 1, 1, 1], [1, 1, 2, 2]])
  assert _stats(gt, pred) == {"a": (0.75, 1, 1, 0)}
  got = panoptic.panoptic_quality([gt], [pred], CATS)
  # PQ = 0.75 / (1 + 1/2); SQ = 0.75 / 1; RQ = 1 / 1.5.
  assert got["pq"] == pytest.approx(50)
  assert got["sq"] == pytest.approx(75)
  assert got["rq"] == pytest.approx(200 / 3)
  # 4 + 4: both halves have IoU 0.5, not > 0.5: 1 FN and 2 FPs.
  pred = _pan([[A] * 4] * 2, [[1, 1, 2, 2]] * 2)
  assert _stats(gt, pred) == {"a": (0, 0, 2, 1)}
  assert panoptic.panoptic_quality([gt], [pred], CATS)["pq"] == 0


def test_iou_of_exactly_one_half_is_no_match():
  gt = _pan([[A] * 6], [[1] * 6])
  # IoU 3/6 = 0.5 (exact in floating point): a FN and a FP for a, and s is a
  # FP (no s in the ground truth).
  half = _pan([[A, A, A, S, S, S]], [[1, 1, 1, 0, 0, 0]])
  assert _stats(gt, half) == {"a": (0, 0, 1, 1), "s": (0, 0, 1, 0)}
  # IoU 4/6 matches.
  more = _pan([[A, A, A, A, S, S]], [[1, 1, 1, 1, 0, 0]])
  assert _stats(gt, more) == {"a": (pytest.approx(2 / 3), 1, 0, 0),
                              "s": (0, 0, 1, 0)}


def test_ground_truth_segments():
  gt = _pan([[A, A, A, A], [A, A, B, B], [S, S, S, S]],
            [[1, 1, 1, 1], [1, 1, 2, 2], [0, 0, 0, 0]])
  pred = _pan([[A, A, A, 0], [A, A, A, B], [S, S, T, T]],
              [[1, 1, 1, 0], [1, 1, 1, 2], [0, 0, 0, 0]])
  got = panoptic.ground_truth_segments(gt, pred, CATS)
  # a: 5 shared pixels of 6 + 6, IoU 5/7; b: 1 of 2 + 1, 1/2; s: 2 of 4 + 2,
  # 1/2. Only a is a PQ true positive.
  np.testing.assert_array_equal(got["class_id"], [A, B, S])
  np.testing.assert_array_equal(got["isthing"], [True, True, False])
  np.testing.assert_array_equal(got["area"], [6, 2, 4])
  np.testing.assert_allclose(got["iou"], [5 / 7, 1 / 2, 1 / 2])
  np.testing.assert_array_equal(got["matched"], [True, False, False])
  assert _stats(gt, pred)["a"] == (pytest.approx(5 / 7), 1, 0, 0)
  # A predicted segment of another class counts for nothing.
  wrong_class = _pan([[B] * 4, [B] * 4, [T] * 4], [[1] * 4, [1] * 4, [0] * 4])
  got = panoptic.ground_truth_segments(gt, wrong_class, CATS)
  np.testing.assert_array_equal(got["iou"], [0, 2 / 8, 0])
  assert not got["matched"].any()


def test_void_handling():
  # The prediction covers the gt segment and as many void pixels: the union
  # leaves out the predicted void pixels, so IoU = 2 / (2 + 4 - 2 - 2) = 1
  # (it would be 0.5, no match, with them). Semantic id 7 is no category:
  # void as well.
  gt = _pan([[A, A, 0, 7]], [[1, 1, 0, 0]])
  pred = _pan([[A, A, A, A]], [[1, 1, 1, 1]])
  assert _stats(gt, pred) == {"a": (1, 1, 0, 0)}
  # Unmatched predictions: b on 3 void + 2 s pixels (3/5 void) is ignored;
  # b on 2 void + 2 s pixels (exactly half) is a FP. s (6 pixels) keeps
  # IoU 4/6 and 4/6 with the pixels b takes.
  gt = _pan([[S] * 6 + [0] * 3])
  mostly_void = _pan([[S, S, S, S, B, B, B, B, B]], [[0] * 4 + [1] * 5])
  assert _stats(gt, mostly_void) == {"s": (pytest.approx(2 / 3), 1, 0, 0)}
  half_void = _pan([[S, S, S, S, B, B, B, B, 0]], [[0] * 4 + [1] * 5])
  assert _stats(gt, half_void) == {"b": (0, 0, 1, 0),
                                   "s": (pytest.approx(2 / 3), 1, 0, 0)}
  # A predicted id that is no category is void too: no segment, no FP; the
  # gt segment under it is a FN.
  assert _stats(_pan([[A, S]], [[1, 0]]), _pan([[9, S]], [[1, 0]])) == {
      "a": (0, 0, 0, 1), "s": (1, 1, 0, 0)}


def test_stuff_is_one_segment_per_class_and_averages():
  # Image 1: a1 perfect; a2 predicted as s, so s has IoU 8 / 12. The stuff
  # instance ids 5 and 6 do not split s.
  gt1 = _pan([[S] * 4, [S] * 4, [A, A, A, A], [A, A, A, A]],
             [[0] * 4, [0] * 4, [1, 1, 2, 2], [1, 1, 2, 2]])
  pred1 = _pan([[S] * 4, [S] * 4, [A, A, S, S], [A, A, S, S]],
               [[5] * 4, [6] * 4, [1, 1, 5, 5], [1, 1, 6, 6]])
  # Image 2: t has IoU 3/4; b is a FP.
  gt2 = _pan([[T, T], [T, T]])
  pred2 = _pan([[T, T], [T, B]], [[0, 0], [0, 1]])
  got = panoptic.panoptic_quality([gt1, gt2], [pred1, pred2], CATS)
  # Per class (PQ, SQ, RQ): a: TP 1 (IoU 1), FN 1 -> (2/3, 1, 2/3);
  # b: FP 1 -> (0, 0, 0); s: TP 1 (IoU 2/3) -> (2/3, 2/3, 1);
  # t: TP 1 (IoU 3/4) -> (3/4, 3/4, 1); c: no segment, in no mean.
  pq = {"a": 2 / 3, "b": 0, "s": 2 / 3, "t": 3 / 4}
  for name, value in pq.items():
    assert got[f"pq/{name}"] == pytest.approx(100 * value)
  assert np.isnan(got["pq/c"])
  expected = {
      "pq": (2 / 3 + 0 + 2 / 3 + 3 / 4) / 4, "sq": (1 + 0 + 2 / 3 + 3 / 4) / 4,
      "rq": (2 / 3 + 0 + 1 + 1) / 4,
      "pq_things": (2 / 3 + 0) / 2, "sq_things": 0.5, "rq_things": 1 / 3,
      "pq_stuff": (2 / 3 + 3 / 4) / 2, "sq_stuff": (2 / 3 + 3 / 4) / 2,
      "rq_stuff": 1,
  }
  for name, value in expected.items():
    assert got[name] == pytest.approx(100 * value), name
  assert (got["n"], got["n_things"], got["n_stuff"]) == (4, 2, 2)
  # Class means, not pooled counts: pooling all classes would give
  # PQ = (1 + 2/3 + 3/4) / (3 + (1 + 1) / 2) = 0.604 instead of 0.521.
  assert got["pq"] != pytest.approx(100 * (29 / 12) / 4)
  # No stuff anywhere (a1 alone): the stuff means are NaN.
  got = panoptic.panoptic_quality([gt1[2:, :2]], [pred1[2:, :2]], CATS)
  assert np.isnan(got["pq_stuff"]) and got["n_stuff"] == 0
  assert got["pq"] == got["pq_things"] == 100


def test_crowd():
  # a2 (top right) is a crowd region.
  gt = _pan([[A, A, A, A], [S, S, S, S]], [[1, 1, 2, 2], [0] * 4])
  crowd = np.array([[0, 0, 1, 1], [0, 0, 0, 0]], bool)
  # a8 lies on the crowd region of its class: no match, no FP; the crowd
  # region is no FN either.
  pred = _pan([[A, A, A, A], [S, S, S, S]], [[7, 7, 8, 8], [0] * 4])
  assert _stats(gt, pred, crowd) == {"a": (1, 1, 0, 0), "s": (1, 1, 0, 0)}
  # Without the crowd flag a2 is an ordinary segment, matched by a8.
  assert _stats(gt, pred) == {"a": (2, 2, 0, 0), "s": (1, 1, 0, 0)}
  # b on a crowd region of a is a FP; a8 half on crowd (1 of 2 pixels,
  # not more than half) is a FP; s keeps IoU 3/4.
  pred = _pan([[A, A, B, A], [S, S, S, A]], [[7, 7, 9, 8], [0, 0, 0, 8]])
  assert _stats(gt, pred, crowd) == {"a": (1, 1, 1, 0), "b": (0, 0, 1, 0),
                                     "s": (0.75, 1, 0, 0)}
  with pytest.raises(ValueError, match="whole ground-truth segments"):
    panoptic.pq_stats(gt, pred, CATS, np.array([[0, 0, 0, 1], [0] * 4]))
  with pytest.raises(ValueError, match="no void pixel"):
    panoptic.pq_stats(_pan([[A, 0]], [[1, 0]]), _pan([[A, 0]], [[1, 0]]),
                      CATS, np.array([[True, True]]))


def test_errors():
  gt = _pan([[A, S]], [[1, 0]])
  with pytest.raises(ValueError, match="resized to the label size"):
    panoptic.pq_stats(gt, gt[:, :1], CATS)
  with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
    panoptic.pq_stats(gt[..., 0], gt[..., 0], CATS)
  with pytest.raises(ValueError, match="0 is void"):
    panoptic.pq_stats(gt, gt, {0: {"isthing": False}, **CATS})
  with pytest.raises(ValueError, match="same positive number"):
    panoptic.panoptic_quality([gt], [], CATS)


# panopticapi's sample data: two val2017 images with their ground truth.
COCO_DIR = "/work/shared/fixtures/coco_panoptic_sample"


def _coco_sample():
  """The sample as (H, W, 2) maps, crowd masks, segment masks, categories.

  Returns:
    gts, crowds, segments (per image: {segment id: (category id, bool mask)})
    and the categories {id: category}.
  """
  with open(os.path.join(COCO_DIR, "panoptic_examples.json")) as f:
    annotations = json.load(f)
  categories = {c["id"]: c for c in annotations["categories"]}
  gts, crowds, segments = [], [], []
  for ann in annotations["annotations"]:
    rgb = np.asarray(PIL.Image.open(os.path.join(
        COCO_DIR, "panoptic_examples_" + ann["file_name"])), np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]
    gt = np.zeros(ids.shape + (2,), np.int64)
    crowd = np.zeros(ids.shape, bool)
    image_segments = {}
    for index, segment in enumerate(ann["segments_info"]):
      mask = ids == segment["id"]
      # The JSON areas are the PNG's pixel counts (panopticapi trusts them).
      assert mask.sum() == segment["area"]
      gt[mask] = segment["category_id"], index + 1
      crowd |= mask & bool(segment["iscrowd"])
      image_segments[segment["id"]] = (segment["category_id"], mask)
    # Every pixel is in a listed segment or void (id 0).
    assert np.isin(ids, [0, *image_segments]).all()
    gts.append(gt)
    crowds.append(crowd)
    segments.append(image_segments)
  return gts, crowds, segments, categories


PERSON, SPORTS_BALL = 1, 37


def test_coco_sample_ground_truth_is_perfect():
  gts, crowds, _, categories = _coco_sample()
  got = panoptic.panoptic_quality(gts, gts, categories, crowds)
  for group in ("", "_things", "_stuff"):
    for m in ("pq", "sq", "rq"):
      assert got[m + group] == pytest.approx(100), m + group
  # Things person, truck, horse, sports ball; stuff gravel, tree, sky, grass
  # (the JSON lists 18 + 32 segments of these 8 classes).
  assert (got["n"], got["n_things"], got["n_stuff"]) == (8, 4, 4)
  # 13 + 13 non-crowd persons are matched; each image's crowd person region
  # is no FN, and its prediction is no FP (all of it is crowd).
  stats = sum(panoptic.pq_stats(g, g, categories, c)
              for g, c in zip(gts, crowds))
  person = stats[sorted(categories).index(PERSON)]
  np.testing.assert_array_equal(person, [26, 26, 0, 0])
  # Without the crowd masks both crowd regions match themselves: 28 TPs.
  stats = sum(panoptic.pq_stats(g, g, categories) for g in gts)
  person = stats[sorted(categories).index(PERSON)]
  np.testing.assert_array_equal(person, [28, 28, 0, 0])


def test_coco_sample_missing_segment():
  gts, crowds, segments, categories = _coco_sample()
  preds = [g.copy() for g in gts]
  # Image 1 has 12 horse segments, 11 of them not crowd. Predict one as void:
  # one FN, the other horse segments keep IoU 1, and the void prediction
  # counts nowhere. PQ_horse = 10 / (10 + 0 + 1/2) = 20/21, SQ 1.
  horse_id = 16758454
  category, mask = segments[1][horse_id]
  assert categories[category]["name"] == "horse"
  preds[1][mask] = 0
  got = panoptic.panoptic_quality(gts, preds, categories, crowds)
  assert got["pq/horse"] == pytest.approx(100 * 20 / 21)
  # Every other class stays at 100 (8 classes, 4 things).
  assert got["pq"] == pytest.approx((700 + 100 * 20 / 21) / 8)
  assert got["pq_things"] == pytest.approx((300 + 100 * 20 / 21) / 4)
  assert got["pq_stuff"] == pytest.approx(100)
  assert got["sq"] == pytest.approx(100)


def _erode(mask):
  """Pixels of `mask` whose 4 neighbours (inside the image) are in it too."""
  padded = np.pad(mask, 1, constant_values=True)
  return (mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
          & padded[1:-1, 2:])


def test_coco_sample_eroded_and_shifted_segments():
  gts, crowds, segments, categories = _coco_sample()
  # The only sports ball (175 pixels, in image 0), eroded by one pixel and
  # its border predicted as void: the prediction is a subset of the gt, so
  # IoU = |eroded| / |ball|, and nothing else changes.
  (_, ball), = [(c, m) for c, m in segments[0].values() if c == SPORTS_BALL]
  eroded = _erode(ball)
  iou = eroded.sum() / ball.sum()
  assert 0.5 < iou < 1
  preds = [g.copy() for g in gts]
  preds[0][ball & ~eroded] = 0
  got = panoptic.panoptic_quality(gts, preds, categories, crowds)
  assert got["pq/sports ball"] == pytest.approx(100 * iou)
  assert got["pq"] == pytest.approx((700 + 100 * iou) / 8)

  # The ball shifted 3 pixels right: vacated pixels void, the shifted ball
  # over whatever was there. IoU = |ball & moved| / (|ball | moved| -
  # |moved on gt void|), counted here from the masks alone.
  moved = np.roll(ball, 3, axis=1)
  assert not ball[:, -3:].any()  # No wrap-around.
  void = gts[0][..., 0] == 0
  iou = (ball & moved).sum() / ((ball | moved).sum() - (moved & void).sum())
  assert 0.5 < iou < 1
  preds = [g.copy() for g in gts]
  preds[0][ball] = 0
  preds[0][moved] = gts[0][ball][0]
  got = panoptic.panoptic_quality(gts, preds, categories, crowds)
  assert got["pq/sports ball"] == pytest.approx(100 * iou)


def test_coco_sample_merged_instances():
  gts, crowds, segments, categories = _coco_sample()
  # Two persons of image 0 predicted as one segment (the instance id of the
  # larger): it matches the larger one, IoU |larger| / (|larger| + |smaller|)
  # > 0.5, and the smaller is a FN.
  (_, big), (_, small) = segments[0][4325578], segments[0][3997935]
  assert (big.sum(), small.sum()) == (4076, 153)
  preds = [g.copy() for g in gts]
  preds[0][small] = gts[0][big][0]
  stats = sum(panoptic.pq_stats(g, p, categories, c)
              for g, p, c in zip(gts, preds, crowds))
  iou = 4076 / (4076 + 153)
  # 26 non-crowd persons: 25 matched (24 with IoU 1), 1 FN.
  person = stats[sorted(categories).index(PERSON)]
  np.testing.assert_allclose(person, [24 + iou, 25, 0, 1])
  got = panoptic.pq_metrics(stats, categories)
  assert got["pq/person"] == pytest.approx(100 * (24 + iou) / 25.5)


PP = ("decode|coco_panoptic|make_canonical|"
      "concat(['semantics', 'instances'], 'labels')|keep('image', 'labels')")


def _evaluator(data_dir, predict_fn, **kwargs):
  # 24 validation examples in batches of 16 on 8 devices: the second batch
  # has 8 all-zero (all void) padding examples.
  kwargs = {"pp": PP, "categories": panoptic.SYNTHETIC_SCENES_CATEGORIES,
            **kwargs}
  return panoptic.Evaluator(
      predict_fn, mesh=sharding.make_mesh([("data", -1)]),
      data=dict(name="synthetic_scenes/tiny", split="validation",
                data_dir=data_dir),
      batch_size=16, **kwargs)


def _raw_panoptic(data_dir):
  """The validation (H, W, 2) maps straight from TFDS, ids as after pp."""
  ds = tfds.builder("synthetic_scenes/tiny", data_dir=data_dir).as_dataset(
      split="validation")
  return [np.concatenate([ex["semantics"] + 1, ex["instances"]], axis=-1
                         ).astype(np.int64) for ex in tfds.as_numpy(ds)]


@pytest.mark.parametrize("crowd_key", [None, "crowd"])
def test_evaluator_ground_truth_is_perfect(tfds_data_dir, crowd_key):
  # The pp labels number stuff segments as instances too; stuff is still one
  # segment per class. synthetic_scenes has no crowd segment: its crowd map,
  # carried through the pp, is all 0 and changes nothing.
  pp = PP if crowd_key is None else PP.replace(
      "keep('image', 'labels')", "keep('image', 'labels', 'crowd')")
  got = dict(_evaluator(tfds_data_dir, lambda v, b: {"panoptic": b["labels"]},
                        pp=pp, crowd_key=crowd_key).run({}))
  assert got["pq"] == 100 and got["pq_things"] == 100
  assert got["pq_stuff"] == 100
  assert got["n"] == 9


def test_evaluator_merged_things(tfds_data_dir):
  # Every thing predicted with instance 0: the things of a class in an image
  # merge into one segment.
  got = dict(_evaluator(tfds_data_dir, lambda v, b: {
      "panoptic": b["labels"].at[..., 1].set(0)}).run({}))
  gts = _raw_panoptic(tfds_data_dir)
  assert len(gts) == 24
  preds = [np.stack([g[..., 0], np.zeros_like(g[..., 1])], -1) for g in gts]
  expected = panoptic.panoptic_quality(
      gts, preds, panoptic.SYNTHETIC_SCENES_CATEGORIES)
  assert got == pytest.approx(expected, nan_ok=True)
  # Some image has two things of a class, so things lose PQ.
  assert got["pq_stuff"] == 100 and got["pq_things"] < 100


def test_evaluator_leaves_out_masked_examples(tfds_data_dir):
  evaluator = _evaluator(tfds_data_dir, lambda v, b: {})
  # Here A, B, S, T are sphere, box, cylinder, cone: things, all of them.
  gt = _pan([[A, A], [S, S]], [[1, 1], [0, 0]])
  wrong = _pan([[B, B], [T, T]])
  evaluator.predictions = lambda variables: iter([(
      {"labels": np.stack([gt, gt]), "_mask": np.array([True, False])},
      {"panoptic": np.stack([gt, wrong])})])
  got = dict(evaluator.run({}))
  assert got["pq"] == 100 and got["n"] == 2


def test_evaluator_crowd_key(tfds_data_dir):
  """The COCO sample through the Evaluator: its crowd regions, with and
  without `crowd_key`."""
  gts, crowds, segments, categories = _coco_sample()
  # The crowds of persons of images 0 (24295 pixels, image 0's only crowd)
  # and 1 (7839 pixels; image 1 also has a crowd of horses).
  (cat0, crowd0), (cat1, person1) = segments[0][3153362], segments[1][5120499]
  assert cat0 == cat1 == PERSON
  np.testing.assert_array_equal(crowd0, crowds[0])
  assert crowds[1][person1].all() and person1.sum() == 7839
  preds = [g.copy() for g in gts]
  # Image 0's crowd of persons is missed (predicted void).
  preds[0][crowd0] = 0
  # On image 1's crowd of persons, a new person segment (instance 1000) on
  # its first 3919 pixels (raster order), the rest void: IoU 3919 / 7839,
  # not above 1/2, so no match.
  first_half = person1 & (np.cumsum(person1) <= 3919).reshape(person1.shape)
  preds[1][person1] = 0
  preds[1][first_half] = PERSON, 1000
  # One image per batch, as the pp gives them: crowd int32 (1, H, W, 1).
  batches = [({"labels": g[None], "crowd": c[None, ..., None].astype(np.int32),
               "_mask": np.array([True])}, {"panoptic": p[None]})
             for g, c, p in zip(gts, crowds, preds)]

  def run(**kwargs):
    evaluator = _evaluator(tfds_data_dir, lambda v, b: {},
                           categories=categories, **kwargs)
    evaluator.predictions = lambda variables: iter(batches)
    return dict(evaluator.run({}))

  # With the crowd maps, as panopticapi: the missed crowd is no FN and the
  # segment lying (wholly) on a crowd of its class is no FP. The 26
  # non-crowd persons are matched: all 8 classes stay at 100.
  got = run(crowd_key="crowd")
  assert got["pq/person"] == pytest.approx(100)
  assert got["pq"] == pytest.approx(100) and got["n"] == 8
  # Without them the crowds are ordinary segments: 26 TPs (IoU 1), 2 FNs
  # (both crowds) and 1 FP (the new segment): PQ_person = 26 / (26 + 3/2),
  # the other 7 classes stay at 100 (image 1's crowd of horses is predicted
  # as it is: a TP like the others).
  got = run()
  assert got["pq/person"] == pytest.approx(100 * 26 / 27.5)
  assert got["pq"] == pytest.approx((700 + 100 * 26 / 27.5) / 8)
  assert got["pq_things"] == pytest.approx((300 + 100 * 26 / 27.5) / 4)
  assert got["pq_stuff"] == pytest.approx(100)
  with pytest.raises(KeyError, match="eval batch \\(crowd_key\\)"):
    run(crowd_key="iscrowd")
