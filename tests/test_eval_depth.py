"""Tests of evaluators/depth.py: hand-computed metrics and a full split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from evaluators import depth
from pp import ops_dense
from uvimx import sharding

# Two 2x3 images, valid depths (0.5, 8); the crop (0, 2, 0, 2) keeps columns
# 0 and 1 only.
#   A: gt 9 (> max) and 0 (< min) are invalid; pred 16 is clipped to 8.
#      Valid (gt, pred): (2, 3), (2, 8).
#   B: pred 0.25 is clipped to 0.5. Valid: (1, 0.5), (4, 4), (4, 4), (4, 4).
#   Column 2 (cropped away): A (1, 7), (1, 7); B (5, 1), (5, 1).
GT = np.array([[[2, 2, 1], [9, 0, 1]],
               [[1, 4, 5], [4, 4, 5]]], np.float32)
PRED = np.array([[[3, 16, 7], [3, 3, 7]],
                 [[0.25, 4, 1], [4, 4, 1]]], np.float32)
KW = dict(min_depth=0.5, max_depth=8.0, crop=(0, 2, 0, 2))
LN2 = np.log(2)

# Per image (A | B), then their mean.
EXPECTED = {
    # A: sqrt((1 + 36) / 2) = 4.3012 | B: sqrt(0.5^2 / 4) = 0.25
    "rmse": (np.sqrt(18.5) + 0.25) / 2,                       # 2.2756
    # A: (1/2 + 6/2) / 2 = 1.75 | B: (0.5/1) / 4 = 0.125
    "abs_rel": (1.75 + 0.125) / 2,                            # 0.9375
    # A: (1/2 + 36/2) / 2 = 9.25 | B: (0.25/1) / 4 = 0.0625
    "sq_rel": (9.25 + 0.0625) / 2,                            # 4.65625
    # d = ln(pred / gt). A: d = ln 1.5, ln 4 | B: d = -ln 2, 0, 0, 0.
    # A: sqrt((ln²1.5 + ln²4) / 2) = 1.0213 | B: sqrt(ln²2 / 4) = ln2 / 2
    "rmse_log": (np.sqrt((np.log(1.5) ** 2 + np.log(4) ** 2) / 2)
                 + LN2 / 2) / 2,                              # 0.6839
    # A: (log10 1.5 + log10 4) / 2 = log10(6) / 2 | B: log10(2) / 4
    "log10": (np.log10(6) / 2 + np.log10(2) / 4) / 2,         # 0.2322
    # 100 * population std of d.
    # A: two values: |ln 4 - ln 1.5| / 2 = ln(8/3) / 2 = 0.4904
    # B: mean(d²) - mean(d)² = ln²2 / 4 - ln²2 / 16 = 3/16 ln²2 -> 0.3001
    "silog": 100 * (np.log(8 / 3) / 2 + np.sqrt(3) / 4 * LN2) / 2,  # 39.528
    # max ratios: A: 1.5, 4 | B: 2, 1, 1, 1; 1.25^i = 1.25, 1.5625, 1.9531.
    "delta1": (0 + 0.75) / 2,
    "delta2": (0.5 + 0.75) / 2,
    "delta3": (0.5 + 0.75) / 2,
}


def test_depth_metrics_hand_computed():
  got = depth.depth_metrics(GT, PRED, **KW)
  assert sorted(got) == sorted(depth.METRICS)
  for name, value in EXPECTED.items():
    assert got[name] == pytest.approx(value, rel=1e-6), name


def test_depth_metrics_average_images_not_pixels():
  got = depth.depth_metrics(GT, PRED, **KW)
  # Pooling the 6 valid pixels would give abs_rel (0.5 + 3 + 0.5) / 6 and
  # rmse sqrt((1 + 36 + 0.25) / 6) instead.
  assert got["abs_rel"] != pytest.approx(4 / 6)
  assert got["rmse"] != pytest.approx(np.sqrt(37.25 / 6))


def test_depth_metrics_crop_and_empty_images():
  no_crop = depth.depth_metrics(GT, PRED, min_depth=0.5, max_depth=8.0)
  # A adds (1, 7) twice: (0.5 + 3 + 6 + 6) / 4 = 3.875; B adds (5, 1) twice:
  # (0.5 + 0.8 + 0.8) / 6 = 0.35.
  assert no_crop["abs_rel"] == pytest.approx((3.875 + 0.35) / 2)
  # An image without valid pixels (all 0, like padding) is not averaged in.
  with_empty = depth.depth_metrics(
      np.concatenate([GT, np.zeros_like(GT[:1])]),
      np.concatenate([PRED, np.ones_like(PRED[:1])]), **KW)
  assert with_empty == pytest.approx(depth.depth_metrics(GT, PRED, **KW))


def test_depth_metrics_perfect_prediction():
  got = depth.depth_metrics(GT, GT, **KW)
  for name in ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "silog"):
    assert got[name] == pytest.approx(0, abs=1e-12), name
  assert got["delta1"] == 1


def test_depth_metrics_non_finite_predictions():
  # As AdaBins: NaN and -inf -> min_depth 0.5, +inf -> max_depth 8, so the
  # (gt, pred) pairs are (2, 0.5), (2, 8), (2, 0.5), (4, 4).
  gt = np.array([[[2, 2, 2, 4]]], np.float32)
  pred = np.array([[[np.nan, np.inf, -np.inf, 4]]], np.float32)
  got = depth.depth_metrics(gt, pred, min_depth=0.5, max_depth=8.0)
  # Errors 1.5, 6, 1.5, 0: rmse sqrt(40.5 / 4), abs_rel 4.5 / 4.
  assert got["rmse"] == pytest.approx(np.sqrt(40.5 / 4), rel=1e-12)
  assert got["abs_rel"] == pytest.approx(1.125, rel=1e-12)
  # d = -ln 4, ln 4, -ln 4, 0: mean(d^2) - mean(d)^2 = (3/4 - 1/16) ln^2 4.
  assert got["silog"] == pytest.approx(100 * np.log(4) * np.sqrt(11) / 4,
                                       rel=1e-12)
  # Ratios 4, 4, 4, 1.
  assert got["delta1"] == got["delta3"] == 0.25


def test_depth_metrics_errors():
  with pytest.raises(ValueError, match="same size"):
    depth.depth_metrics(GT, PRED[:, :, :2])
  with pytest.raises(ValueError, match="does not fit"):
    depth.depth_metrics(GT, PRED, crop=depth.NYU_CROP)
  with pytest.raises(ValueError, match="min_depth"):
    depth.depth_metrics(GT, PRED, min_depth=0.0)
  with pytest.raises(ValueError, match="No image has a valid"):
    depth.depth_metrics(GT, PRED, min_depth=20.0, max_depth=30.0)


def test_nyu_crop_is_the_eigen_crop():
  assert depth.NYU_CROP == ops_dense.EIGEN_CROP == (45, 471, 41, 601)


PP = "decode|decode_depth_png|keep('image', 'depth')"


def _evaluate(predict_fn, data_dir, **kwargs):
  # 24 validation examples in batches of 16 on 8 devices: the second batch
  # has 8 padding examples.
  evaluator = depth.Evaluator(
      predict_fn, mesh=sharding.make_mesh([("data", -1)]),
      data=dict(name="synthetic_scenes/tiny", split="validation",
                data_dir=data_dir),
      pp=PP, batch_size=16, **kwargs)
  return dict(evaluator.run({}))


def _raw_depth(data_dir):
  """The validation depth maps straight from TFDS, in metres: (24, H, W)."""
  ds = tfds.builder("synthetic_scenes/tiny", data_dir=data_dir).as_dataset(
      split="validation")
  return np.stack([ex["depth"][..., 0] * 0.001 for ex in tfds.as_numpy(ds)])


def test_evaluator_ground_truth_is_perfect(tfds_data_dir):
  got = _evaluate(lambda v, b: {"depth": b["depth"][..., 0]}, tfds_data_dir)
  assert sorted(got) == sorted(depth.METRICS)
  for name in ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "silog"):
    assert got[name] == pytest.approx(0, abs=1e-5), name
  assert got["delta1"] == 1


def test_evaluator_constant_prediction(tfds_data_dir):
  # max_depth makes the far pixels (the data go up to ~7 m) invalid. Depths
  # are whole millimetres: neither it nor the delta thresholds around the
  # prediction c (c / 1.25^i, c * 1.25^i) are, so float32 (pp) and float64
  # (here) depths fall on the same side of them.
  c, max_depth = 3.1416, 4.9995
  got = _evaluate(lambda v, b: {"depth": jnp.full(b["depth"].shape, c)},
                  tfds_data_dir, max_depth=max_depth)
  gt = _raw_depth(tfds_data_dir)
  assert len(gt) == 24 and gt.max() > max_depth
  # Independently: per image over 1e-3 < gt < max_depth, then over images.
  rmse, abs_rel, delta1 = [], [], []
  for g in gt:
    g = g[(g > 1e-3) & (g < max_depth)]
    rmse.append(np.sqrt(np.mean((g - c) ** 2)))
    abs_rel.append(np.mean(np.abs(g - c) / g))
    delta1.append(np.mean(np.maximum(g / c, c / g) < 1.25))
  assert got["rmse"] == pytest.approx(np.mean(rmse), rel=1e-5)
  assert got["abs_rel"] == pytest.approx(np.mean(abs_rel), rel=1e-5)
  assert got["delta1"] == pytest.approx(np.mean(delta1), rel=1e-5)
  assert got == pytest.approx(depth.depth_metrics(
      gt, np.full_like(gt, c), max_depth=max_depth), rel=1e-5)


def test_evaluator_leaves_out_masked_examples(tfds_data_dir):
  # Real padding has no valid pixel anyway; here a masked-out example has
  # valid pixels, so only `_mask` keeps it out.
  evaluator = depth.Evaluator(
      lambda v, b: {}, mesh=sharding.make_mesh([("data", -1)]),
      data=dict(name="synthetic_scenes/tiny", split="validation",
                data_dir=tfds_data_dir), pp=PP, batch_size=16, **KW)
  evaluator.predictions = lambda variables: iter([(
      {"depth": GT[..., None], "_mask": np.array([True, False])},
      {"depth": PRED})])
  assert dict(evaluator.run({})) == pytest.approx(
      depth.depth_metrics(GT[:1], PRED[:1], **KW))


def test_evaluator_size_mismatch(tfds_data_dir):
  with pytest.raises(ValueError, match="resized to the label size"):
    _evaluate(lambda v, b: {"depth": b["depth"][:, ::2, ::2, 0]},
              tfds_data_dir)


def test_resize_nearest_half_pixel_centres():
  x = np.arange(8.0).reshape(1, 2, 4)
  # Output pixel i reads floor((i + 0.5) * in / out): rows 0.33, 1, 1.67 ->
  # 0, 1, 1; columns 0.4, 1.2, 2, 2.8, 3.6 -> 0, 1, 2, 2, 3.
  np.testing.assert_array_equal(depth.resize_nearest(x, (3, 5)),
                                [[[0, 1, 2, 2, 3], [4, 5, 6, 6, 7],
                                  [4, 5, 6, 6, 7]]])
  # The convention of jax.image.resize (and the pp's tf.image.resize).
  np.testing.assert_array_equal(
      depth.resize_nearest(x, (3, 5)),
      jax.image.resize(x, (1, 3, 5), "nearest"))


def test_evaluator_resizes_predictions_to_the_labels(tfds_data_dir):
  # A 2x2 prediction against a 4x4 label of 2 m: resized, each predicted
  # depth covers a 2x2 quarter: four pixels each of 1, 2, 3 and 4 m.
  gt = np.full((1, 4, 4, 1), 2.0, np.float32)
  pred = np.array([[[1, 2], [3, 4]]], np.float32)
  evaluators = [depth.Evaluator(
      lambda v, b: {}, mesh=sharding.make_mesh([("data", -1)]),
      data=dict(name="synthetic_scenes/tiny", split="validation",
                data_dir=tfds_data_dir), pp=PP, batch_size=16,
      resize_pred=resize_pred) for resize_pred in ("nearest", None)]
  for evaluator in evaluators:
    evaluator.predictions = lambda variables: iter([(
        {"depth": gt, "_mask": np.array([True])}, {"depth": pred})])
  got = dict(evaluators[0].run({}))
  # Errors 1, 0, 1, 2 (4 pixels each); ratios 2, 1, 1.5, 2.
  assert got["rmse"] == pytest.approx(np.sqrt((4 + 4 + 16) / 16), rel=1e-12)
  assert got["abs_rel"] == pytest.approx((2 + 2 + 4) / 16, rel=1e-12)
  assert got["delta1"] == 0.25
  assert got["delta2"] == 0.5
  with pytest.raises(ValueError, match="resize_pred='nearest'"):
    dict(evaluators[1].run({}))
  with pytest.raises(ValueError, match="resize_pred='bilinear'"):
    depth.Evaluator(lambda v, b: {}, mesh=None, data=None, pp=None,
                    batch_size=16, resize_pred="bilinear")
