"""Tests of uvimx/losses.py against hand-computed values and invariances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvimx import losses

LN2 = np.log(2)
# Depth maps are (1, 2, 2) unless said otherwise; "garbage" pixels are
# invalid and hold 0 or huge depths that must change nothing.
ALL = np.ones((1, 2, 2), bool)
LEFT = np.array([[[True, False], [True, False]]])  # Column 0 valid only.


def _garbage(x, valid, *values):
  """`x` with its invalid pixels set to `values` in turn (0, 1e30, ...)."""
  x = np.array(x, np.float32)
  x[~valid] = np.resize(np.array(values, np.float32), (~valid).sum())
  return x


def test_silog_hand_computed():
  gt = np.array([[[1, 2], [1, 2]]], np.float32)
  pred = np.array([[[2, 8], [1, 1]]], np.float32)
  # g = ln(pred / gt) = ln2 * (1, 2, 0, -1):
  # mean(g) = ln2 / 2, mean(g^2) = ln2^2 * (1 + 4 + 0 + 1) / 4 = 1.5 ln2^2.
  # lam = 0.85: 1.5 - 0.85 / 4 = 1.2875 (x ln2^2).
  expected = 10 * LN2 * np.sqrt(1.2875)
  np.testing.assert_allclose(losses.silog(pred, gt, ALL), [expected],
                             rtol=1e-6)
  # lam = 1, scale 1: 1.5 - 0.25 = 1.25 -> ln2 * sqrt(1.25).
  np.testing.assert_allclose(losses.silog(pred, gt, ALL, lam=1.0, scale=1.0),
                             [LN2 * np.sqrt(1.25)], rtol=1e-6)
  # lam = 7 would give 1.5 - 7 / 4 < 0 under the root.
  with pytest.raises(ValueError, match=r"lam .*in \[0, 1\]; got 7"):
    losses.silog(pred, gt, ALL, lam=7)
  # Column 0 only: g = ln2 * (1, 0): mean(g^2) = ln2^2 / 2, mean(g) = ln2 / 2
  # -> 0.5 - 0.85 / 4 = 0.2875. Garbage at column 1 changes nothing.
  expected = 10 * LN2 * np.sqrt(0.2875)
  for bad in (0.0, 1e30):
    np.testing.assert_allclose(
        losses.silog(_garbage(pred, LEFT, bad), _garbage(gt, LEFT, 0.0, bad),
                     LEFT), [expected], rtol=1e-6)


def test_silog_scale_invariant_with_lam_1():
  rng = np.random.RandomState(0)
  gt = rng.uniform(0.5, 10, (3, 4, 5)).astype(np.float32)
  pred = rng.uniform(0.5, 10, (3, 4, 5)).astype(np.float32)
  valid = rng.rand(3, 4, 5) > 0.3
  loss = losses.silog(pred, gt, valid, lam=1.0)
  assert np.all(loss > 1)
  np.testing.assert_allclose(losses.silog(7.5 * pred, gt, valid, lam=1.0),
                             loss, rtol=1e-4)
  # With lam < 1 the absolute scale error counts.
  assert np.all(losses.silog(7.5 * pred, gt, valid) > losses.silog(
      pred, gt, valid))


def test_relative_squared_error_hand_computed():
  gt = np.array([[[2, 4], [1, 5]]], np.float32)
  pred = np.array([[[3, 2], [1, 5]]], np.float32)
  # (pred - gt) / gt = (0.5, -0.5, 0, 0): sqrt((0.25 + 0.25) / 4).
  np.testing.assert_allclose(
      losses.relative_squared_error(pred, gt, ALL), [np.sqrt(0.125)],
      rtol=1e-6)
  # Column 0: (0.5, 0) -> sqrt(0.25 / 2).
  np.testing.assert_allclose(losses.relative_squared_error(
      _garbage(pred, LEFT, 1e30, 0), _garbage(gt, LEFT, 0, 1e-30), LEFT),
                             [np.sqrt(0.125)], rtol=1e-6)


def test_gradient_matching_hand_computed():
  # (1, 2, 3) maps; R = ln(pred / gt) = ln2 * [[0, 1, 3], [2, 2, 0]].
  gt = np.array([[[1, 2, 1], [1, 3, 2]]], np.float32)
  pred = gt * 2.0 ** np.array([[[0, 1, 3], [2, 2, 0]]], np.float32)
  # Scale 0 (6 pixels): horizontal |1-0| + |3-1| + |2-2| + |0-2| = 5,
  # vertical |2-0| + |2-1| + |0-3| = 6 -> 11 / 6.
  # Scale 1 (every 2nd row and column: [[0, 3]], 2 pixels): |3-0| / 2 = 1.5.
  np.testing.assert_allclose(
      losses.gradient_matching(pred, gt, np.ones_like(gt, bool), scales=1),
      [LN2 * 11 / 6], rtol=1e-6)
  np.testing.assert_allclose(
      losses.gradient_matching(pred, gt, np.ones_like(gt, bool), scales=2),
      [LN2 * (11 / 6 + 1.5)], rtol=1e-6)
  # Pixel (0, 1) invalid: its 3 pairs drop out. Scale 0: horizontal
  # |2-2| + |0-2| = 2, vertical |2-0| + |0-3| = 5 -> 7 / 5 valid pixels.
  # Scale 1 does not sample it: 1.5 again.
  valid = np.ones_like(gt, bool)
  valid[0, 0, 1] = False
  for bad in (0.0, 1e30):
    np.testing.assert_allclose(losses.gradient_matching(
        _garbage(pred, valid, bad), _garbage(gt, valid, 0.0), valid,
        scales=2), [LN2 * (7 / 5 + 1.5)], rtol=1e-6)


def test_gradient_matching_scale_invariant():
  rng = np.random.RandomState(1)
  gt = rng.uniform(0.5, 10, (2, 16, 12)).astype(np.float32)
  pred = rng.uniform(0.5, 10, (2, 16, 12)).astype(np.float32)
  valid = rng.rand(2, 16, 12) > 0.2
  loss = losses.gradient_matching(pred, gt, valid)
  assert np.all(loss > 1)
  np.testing.assert_allclose(losses.gradient_matching(0.3 * pred, gt, valid),
                             loss, rtol=1e-5)
  np.testing.assert_allclose(losses.gradient_matching(4.0 * gt, gt, valid),
                             [0, 0], atol=1e-6)


def test_charbonnier_hand_computed():
  gt = np.array([[[1, 2], [3, 4]]], np.float32)
  pred = np.array([[[2.5, 2], [-1, 4]]], np.float32)
  # c = 2: (pred - gt) / c = (0.75, 0, -2, 0):
  # sqrt(0.5625 + 1) - 1 = 0.25, 0, sqrt(5) - 1, 0.
  np.testing.assert_allclose(losses.charbonnier(pred, gt, ALL, c=2.0),
                             [(0.25 + np.sqrt(5) - 1) / 4], rtol=1e-6)
  # Default c = 1, column 0: errors 1.5 and -4: sqrt(3.25) - 1, sqrt(17) - 1.
  np.testing.assert_allclose(
      losses.charbonnier(_garbage(pred, LEFT, 1e30), _garbage(gt, LEFT, 0),
                         LEFT),
      [(np.sqrt(3.25) + np.sqrt(17) - 2) / 2], rtol=1e-6)


def test_charbonnier_quadratic_then_linear():
  gt = np.zeros((1, 1, 2), np.float32)
  valid = np.ones((1, 1, 2), bool)
  small = losses.charbonnier(np.full_like(gt, 1e-2), gt, valid)
  large = losses.charbonnier(np.full_like(gt, 1e3), gt, valid)
  # x^2 / 2 - x^4 / 8: the direct sqrt(x^2 + 1) - 1 is 1e-3 off in float32.
  np.testing.assert_allclose(small, [0.5e-4 - 1.25e-9], rtol=1e-6)
  np.testing.assert_allclose(large, [1e3 - 1], rtol=1e-6)  # |x| - 1


# Normals: (1, 2, 2, 3); pixel order (0, 0), (0, 1), (1, 0), (1, 1).
Z = (0, 0, 1)
NORMALS_GT = np.array([[[Z, Z], [Z, (0, 1, 0)]]], np.float32)
NORMALS_PRED = np.array([[[(1, 0, 1), (0, 3, 0)], [(0, 0, -2), (0, 5, 0)]]],
                        np.float32)


def test_normals_l2_hand_computed():
  # |pred - gt|^2: (1, 0, 0) -> 1; (0, 3, -1) -> 10; (0, 0, -3) -> 9;
  # (0, 4, 0) -> 16.
  np.testing.assert_allclose(
      losses.normals_l2(NORMALS_PRED, NORMALS_GT, ALL), [36 / 4], rtol=1e-6)
  pred = NORMALS_PRED.copy()
  pred[0, :, 1] = 1e30
  gt = NORMALS_GT.copy()
  gt[0, :, 1] = 0
  np.testing.assert_allclose(losses.normals_l2(pred, gt, LEFT), [10 / 2],
                             rtol=1e-6)


def test_normals_angular_hand_computed():
  # Angles: 45 degrees, 90 degrees, 180 degrees, 0 (same direction).
  np.testing.assert_allclose(
      losses.normals_angular(NORMALS_PRED, NORMALS_GT, ALL),
      [(np.pi / 4 + np.pi / 2 + np.pi) / 4], rtol=1e-6)
  # A 1e-7 rad angle, far below float32 arccos's resolution near 1 (~3e-4).
  pred = np.array([[[(1e-7, 0, 1)]]], np.float32)
  np.testing.assert_allclose(losses.normals_angular(
      pred, np.array([[[Z]]], np.float32), np.ones((1, 1, 1), bool)), [1e-7],
                             rtol=1e-6)
  # A zero prediction counts as pi / 2.
  pred = NORMALS_PRED.copy()
  pred[0, 0, 0] = 0
  np.testing.assert_allclose(
      losses.normals_angular(pred, NORMALS_GT, LEFT),
      [(np.pi / 2 + np.pi) / 2], rtol=1e-6)


def test_dice_hand_computed():
  # (1, 1, 2) pixels, 3 classes; labels 0 and 1; class 2 absent and not
  # predicted.
  probs = np.array([[[[0.8, 0.2, 0], [0.4, 0.6, 0]]]], np.float32)
  targets = np.array([[[[1, 0, 0], [0, 1, 0]]]], np.float32)
  valid = np.ones((1, 1, 2), bool)
  # Class 0: sum p t = 0.8, sum p = 1.2, sum t = 1: 1 - 2.6 / 3.2 = 0.1875.
  # Class 1: sum p t = 0.6, sum p = 0.8, sum t = 1: 1 - 2.2 / 2.8 = 3 / 14.
  # Class 2: 1 - (0 + 1) / (0 + 1) = 0; averaged in all the same.
  expected = (0.1875 + 3 / 14 + 0) / 3
  np.testing.assert_allclose(losses.dice(probs, targets, valid), [expected],
                             rtol=1e-6)
  # Pixel 1 invalid: class 0: 1 - 2.6 / 2.8 = 1 / 14; class 1: sum p = 0.2,
  # sum t = 0: 1 - 1 / 1.2 = 1 / 6; class 2: 0.
  valid = np.array([[[True, False]]])
  garbage = probs.copy()
  garbage[0, 0, 1] = 1e30
  np.testing.assert_allclose(losses.dice(garbage, targets, valid),
                             [(1 / 14 + 1 / 6) / 3], rtol=1e-6)
  # Predicted mass on an absent class costs: sum p / (sum p + 1) = 0.5 / 1.5.
  probs = np.array([[[[0.5, 0.5, 0], [0, 1, 0]]]], np.float32)
  targets = np.array([[[[0, 1, 0], [0, 1, 0]]]], np.float32)
  # Class 1: 1 - (3 + 1) / (1.5 + 2 + 1) = 1 / 9.
  np.testing.assert_allclose(
      losses.dice(probs, targets, np.ones((1, 1, 2), bool)),
      [(1 / 3 + 1 / 9) / 3], rtol=1e-6)


def test_softmax_xent_hand_computed():
  logits = np.array([[[[0, np.log(3)], [0, 0], [5, -5]]]], np.float32)
  labels = np.array([[[1, 0, 255]]])
  # Label 1 of (0, ln3): -ln(3 / 4); label 0 of (0, 0): ln2. Pixel 2 holds
  # an out-of-range label and is invalid.
  valid = np.array([[[True, True, False]]])
  np.testing.assert_allclose(losses.softmax_xent(logits, labels, valid),
                             [(np.log(4 / 3) + LN2) / 2], rtol=1e-6)


def _depth_example():
  gt = np.array([[[1, 2], [3, 4]], [[0, 0], [0, 0]]], np.float32)
  pred = np.array([[[2, 2], [1, 4]], [[1e30, 0], [-1, 0]]], np.float32)
  valid = np.array([[[True, True], [True, False]], [[False] * 2] * 2])
  return pred, gt, valid


def _normals_example():
  gt = np.zeros((2, 1, 2, 3), np.float32)
  gt[0] = [Z, Z]
  pred = np.array([[[(1, 0, 1), (0, 0, 0)]], [[(0, 0, 0), (1e30, 0, 0)]]],
                  np.float32)
  valid = np.array([[[True, True]], [[False, False]]])
  return pred, gt, valid


def _dice_example():
  probs = np.array([[[[0.8, 0.2], [0.4, 0.6]]], [[[0, 0], [1e30, 0]]]],
                   np.float32)
  targets = np.array([[[[1, 0], [0, 1]]], [[[0, 0], [0, 0]]]], np.float32)
  return probs, targets, np.array([[[True, True]], [[False, False]]])


def _xent_example():
  logits = np.array([[[[0, 1], [2, 0]]], [[[1e30, 0], [0, 0]]]], np.float32)
  labels = np.array([[[1, 0]], [[255, -1]]])
  return logits, labels, np.array([[[True, True]], [[False, False]]])


@pytest.mark.parametrize("loss, example", [
    (losses.silog, _depth_example),
    (lambda p, g, v: losses.silog(p, g, v, lam=1.0), _depth_example),
    (losses.relative_squared_error, _depth_example),
    (losses.gradient_matching, _depth_example),
    (losses.charbonnier, _depth_example),
    (losses.normals_l2, _normals_example),
    (losses.normals_angular, _normals_example),
    (losses.dice, _dice_example),
    (losses.softmax_xent, _xent_example),
])
def test_all_invalid_example_is_zero_with_finite_gradients(loss, example):
  # Example 0 has valid pixels (including a perfect one, or a zero normal
  # prediction), example 1 none; both hold garbage at invalid pixels.
  pred, gt, valid = example()
  values = loss(pred, gt, valid)
  assert values.shape == (2,)
  assert np.all(np.isfinite(values)) and values[1] == 0
  grad = jax.grad(lambda p: jnp.sum(loss(p, gt, valid)))(jnp.asarray(pred))
  assert np.all(np.isfinite(grad))
  assert np.all(grad[1] == 0)


def test_silog_perfect_prediction_has_finite_gradient():
  gt = np.array([[[1, 2], [3, 4]]], np.float32)
  for lam in (0.85, 1.0):
    assert losses.silog(gt, gt, ALL, lam=lam)[0] == 0
    grad = jax.grad(lambda p: losses.silog(p, gt, ALL, lam=lam)[0])(gt)
    np.testing.assert_array_equal(grad, 0)
  grad = jax.grad(lambda p: losses.silog(p, gt, ALL, lam=1.0)[0])(2.0 * gt)
  assert np.all(np.isfinite(grad))
