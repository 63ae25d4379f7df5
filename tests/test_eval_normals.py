"""Tests of evaluators/normals.py: hand-computed angles and a full split."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from evaluators import normals
from pp import builder
from uvimx import sharding

Z = (0.0, 0.0, 1.0)


def _tilted(degrees):
  """Unit normals at `degrees` from Z, tilted towards x: (N, 3)."""
  t = np.radians(degrees)
  return np.stack([np.sin(t), np.zeros_like(t), np.cos(t)], axis=-1)


def test_angles_hand_computed():
  pred = [(1, 0, 1), (0, 1, 0), (0, 0, -3), (0, 0, 2), (0, 0, 0)]
  # 45 degrees; 90; opposite: 180; same direction, any length: 0; a zero
  # prediction has no direction and counts as 90.
  np.testing.assert_allclose(normals.angles([Z] * 5, pred),
                             [45, 90, 180, 0, 90], rtol=1e-12, atol=1e-12)


def test_angles_exact_for_nearly_parallel_normals():
  n = np.array([1, 2, 3]) / np.sqrt(14)
  assert normals.angles(n, n) == 0
  assert normals.angles(np.float32(n), np.float32(n)) == 0
  # (tan t, 0, 1) is at t from Z. For t = 1e-7, arccos(cos t) would give
  # 0 in float32 and be ~1% off in float64.
  for t in (1e-4, 1e-7):
    np.testing.assert_allclose(normals.angles(Z, (np.tan(t), 0, 1)),
                               np.degrees(t), rtol=1e-6)
    # In float32: cos t rounds to 1, still t to float32 precision.
    np.testing.assert_allclose(
        normals.angles(np.float32(Z), np.float32((np.tan(t), 0, 1))),
        np.degrees(t), rtol=1e-6)


# Five pixels with a normal, at 0, 10, 20, 45 and 90 degrees, and two with
# the zero vector as ground truth (left out whatever their prediction).
GT = np.concatenate([np.tile(Z, (5, 1)), np.zeros((2, 3))]).reshape(1, 7, 3)
PRED = np.concatenate([_tilted(np.array([0, 10, 20, 45, 90])),
                       [(1, 0, 0), (0, 0, 0)]]).reshape(1, 7, 3)


def test_normal_metrics_hand_computed():
  got = normals.normal_metrics(GT, PRED)
  assert sorted(got) == sorted(normals.METRICS)
  assert "within_30" in got
  expected = {
      "mean": (0 + 10 + 20 + 45 + 90) / 5,                        # 33
      "median": 20,
      "rmse": np.sqrt((0 + 100 + 400 + 2025 + 8100) / 5),         # 46.10
      "within_11.25": 100 * 2 / 5,  # 0, 10
      "within_22.5": 100 * 3 / 5,   # 0, 10, 20
      "within_30": 100 * 3 / 5,
  }
  assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_normal_metrics_valid_mask():
  # Leaving out the 90 degree pixel: 0, 10, 20, 45; the median of an even
  # count is the mean of the two middle angles.
  valid = np.array([[True] * 4 + [False] + [True] * 2])
  got = normals.normal_metrics(GT, PRED, valid)
  assert got["median"] == pytest.approx(15)
  assert got["mean"] == pytest.approx(75 / 4)
  assert got["within_30"] == pytest.approx(75)


# As PRED, but the 90 degree prediction has a NaN component (e.g. a zero
# vector renormalised): it counts as 180 degrees, the worst angle.
PRED_NAN = PRED.copy()
PRED_NAN[0, 4] = (np.nan, 0, 1)
NAN_EXPECTED = {
    "mean": (0 + 10 + 20 + 45 + 180) / 5,                          # 51
    "median": 20,
    "rmse": np.sqrt((0 + 100 + 400 + 2025 + 32400) / 5),           # 83.58
    "within_11.25": 100 * 2 / 5,
    "within_22.5": 100 * 3 / 5,
    "within_30": 100 * 3 / 5,
}


def test_non_finite_predictions_are_the_worst_angle():
  pred = [(np.nan, 0, 1), (np.inf, 0, 0), (0, -np.inf, 1), (1, 0, 1)]
  np.testing.assert_allclose(normals.angles([Z] * 4, pred),
                             [180, 180, 180, 45], rtol=1e-12)
  assert normals.normal_metrics(GT, PRED_NAN) == pytest.approx(
      NAN_EXPECTED, rel=1e-9, abs=1e-9)


def test_normal_metrics_errors():
  with pytest.raises(ValueError, match="same size"):
    normals.normal_metrics(GT, PRED[:, :5])
  with pytest.raises(ValueError, match="No pixel"):
    normals.normal_metrics(GT, PRED, np.zeros((1, 7), bool))


@pytest.mark.parametrize("n", [1, 2, 999, 1000])
def test_histogram_median_precision(n):
  angle = np.random.RandomState(n).uniform(0, 180, n)
  counts = np.bincount((angle / normals.BIN).astype(int),
                       minlength=round(180 / normals.BIN))
  assert abs(normals._histogram_median(counts) - np.median(angle)) <= (
      normals.BIN / 2 + 1e-9)


PP = "decode|decode_normals_png|keep('image', 'normals')"
# Added to the ground truth, it gives predictions at angles of 0 to
# arcsin(|OFFSET|) = 33 degrees (|OFFSET| < 1, so never the zero vector).
OFFSET = np.array([0.5, -0.2, 0.1], np.float32)


def _evaluator(predict_fn, data_dir):
  # 24 validation examples in batches of 16 on 8 devices: the second batch
  # has 8 padding examples.
  return normals.Evaluator(
      predict_fn, mesh=sharding.make_mesh([("data", -1)]),
      data=dict(name="synthetic_scenes/tiny", split="validation",
                data_dir=data_dir),
      pp=PP, batch_size=16)


def _raw_normals(data_dir):
  """The validation normals straight from TFDS, decoded: (24, H, W, 3)."""
  ds = tfds.builder("synthetic_scenes/tiny", data_dir=data_dir).as_dataset(
      split="validation")
  decode = builder.get_preprocess_fn("decode_normals_png")
  return np.stack([decode({"normals": ex["normals"]})["normals"].numpy()
                   for ex in tfds.as_numpy(ds)])


def test_evaluator_pools_the_split(tfds_data_dir):
  evaluator = _evaluator(lambda v, b: {"normals": b["normals"] + OFFSET},
                         tfds_data_dir)
  got = dict(evaluator.run({}))
  assert sorted(got) == sorted(normals.METRICS)
  gt = _raw_normals(tfds_data_dir)
  assert len(gt) == 24
  expected = normals.normal_metrics(gt, gt + OFFSET)
  # The metrics span the thresholds, so that the percentages are tested.
  assert 0 < expected["within_11.25"] < expected["within_30"] < 100
  median = expected.pop("median")
  assert got.pop("median") == pytest.approx(median, abs=normals.BIN / 2)
  assert got == pytest.approx(expected, rel=1e-9)


def test_evaluator_ground_truth_is_perfect(tfds_data_dir):
  got = dict(_evaluator(lambda v, b: {"normals": b["normals"]},
                        tfds_data_dir).run({}))
  assert got["mean"] == pytest.approx(0, abs=1e-4)
  assert got["median"] <= normals.BIN / 2
  assert got["within_11.25"] == 100


def test_evaluator_masks_padding_and_missing_normals(tfds_data_dir):
  # Two batches of 2 examples of 7 pixels; the last example is padding with
  # normals, which only `_mask` keeps out.
  evaluator = _evaluator(lambda v, b: {}, tfds_data_dir)
  rng = np.random.RandomState(0)
  gt = rng.normal(size=(4, 1, 7, 3))
  gt[:3, :, 5:] = 0  # Missing normals.
  pred = rng.normal(size=gt.shape)
  mask = np.array([True, True, True, False])
  evaluator.predictions = lambda variables: iter([
      ({"normals": gt[i:i + 2], "_mask": mask[i:i + 2]},
       {"normals": pred[i:i + 2]}) for i in (0, 2)])
  got = dict(evaluator.run({}))
  expected = normals.normal_metrics(gt[:3], pred[:3])
  assert got.pop("median") == pytest.approx(expected.pop("median"),
                                            abs=normals.BIN / 2)
  assert got == pytest.approx(expected, rel=1e-12)
  # The padding example would change the result.
  assert normals.normal_metrics(gt, pred)["mean"] != pytest.approx(
      got["mean"])


def test_evaluator_size_mismatch(tfds_data_dir):
  with pytest.raises(ValueError, match="resized to the label size"):
    dict(_evaluator(lambda v, b: {"normals": b["normals"][:, ::2, ::2]},
                    tfds_data_dir).run({}))


def test_evaluator_counts_non_finite_predictions_as_180(tfds_data_dir):
  # NaN angles made np.bincount of the histogram raise mid-run.
  evaluator = _evaluator(lambda v, b: {}, tfds_data_dir)
  evaluator.predictions = lambda variables: iter([
      ({"normals": GT, "_mask": np.array([True])}, {"normals": PRED_NAN})])
  got = dict(evaluator.run({}))
  expected = dict(NAN_EXPECTED)
  assert got.pop("median") == pytest.approx(expected.pop("median"),
                                            abs=normals.BIN / 2)
  assert got == pytest.approx(expected, rel=1e-9)
