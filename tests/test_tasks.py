"""Label encodings, model inputs, losses and decoding of every task."""
import math
import os

import jax
import ml_collections
import numpy as np
import pytest

from uvimx import tasks
from uvimx.tasks import colorization
from uvimx.tasks import common
from uvimx.tasks import depth
from uvimx.tasks import normals
from uvimx.tasks import panoptic
from uvimx.tasks import semseg

FIXTURES = "/work/shared/fixtures/big_vision_uvim"


def _config(patch_size, input_size, **task):
  return ml_collections.ConfigDict(dict(
      model=dict(patch_size=patch_size, input_size=input_size), task=task))


def test_patchify_unpatchify_round_trip():
  x = np.random.RandomState(0).normal(size=(2, 12, 20, 3))
  patches = common.patchify(x, (4, 5))
  assert patches.shape == (2, 12, 3, 20)
  # Patch 1 is the second patch of the top row; its pixels in raster order.
  np.testing.assert_array_equal(patches[0, 1, 2], x[0, :4, 5:10, 2].ravel())
  np.testing.assert_array_equal(
      common.unpatchify(patches, (4, 5), (12, 20)), x)


@pytest.mark.skipif(not os.path.exists(f"{FIXTURES}/stage1_io.npz"),
                    reason="big_vision UViM fixtures not found")
def test_patch_layout_is_big_vision_uvims():
  io = np.load(f"{FIXTURES}/stage1_io.npz")
  classes = common.patchify(io["labels"][..., :1], (4, 4))[:, :, 0]
  np.testing.assert_array_equal(jax.nn.one_hot(classes, 9, axis=-2),
                                io["x/semantics"])


def test_depth_bins_round_trip_within_half_a_bin():
  config = _config((2, 2), (4, 4), name="depth", num_bins=256,
                   min_depth=0.5, max_depth=10.5)
  d = np.random.RandomState(0).uniform(0.5, 10.5, size=(1000,)).astype("f4")
  bins = depth.to_bins(d, config)
  assert bins.min() >= 0 and bins.max() <= 255
  half_bin = 10 / 256 / 2
  assert np.abs(depth.from_bins(bins, config) - d).max() <= half_bin + 1e-6
  # Depths out of range fall into the first and last bins.
  np.testing.assert_array_equal(
      depth.to_bins(np.array([0.1, 0.5, 10.5, 20.0]), config), [0, 0, 255, 255])


def _pixel_logits_to_patches(pixel_logits, patch):
  """(B, H, W, C) -> (B, N, C, P) by explicit indexing, to test `patchify`."""
  b, h, w, c = pixel_logits.shape
  hp, wp = patch
  out = np.zeros((b, (h // hp) * (w // wp), c, hp * wp), pixel_logits.dtype)
  for i in range(h):
    for j in range(w):
      n = (i // hp) * (w // wp) + j // wp
      out[:, n, :, (i % hp) * wp + j % wp] = pixel_logits[:, i, j]
  return out


# Labels outside [0, num_classes) (255 here) count as ignored too: without
# an ignore_label they would be NaN.
@pytest.mark.parametrize("ignore_label, ignored", [
    (255, {255}), (None, {255}), (1, {1, 255})])
def test_semseg_loss_by_hand_with_ignore_label(ignore_label, ignored):
  config = _config((2, 2), (2, 4), name="semseg", num_classes=3,
                   ignore_label=ignore_label)
  labels = np.array([[[0, 1, 2, 255], [1, 1, 0, 2]],
                     [[255, 255, 255, 255], [255, 255, 255, 2]]])
  pixel_logits = np.random.RandomState(0).normal(size=(2, 2, 4, 3))
  logits = {"semantics": _pixel_logits_to_patches(pixel_logits, (2, 2))}
  per_example, m = semseg.loss(logits, {"semantics": labels[..., None]},
                               config)
  expected, correct, valid = [], 0, 0
  for b in range(2):
    nll = []
    for i in range(2):
      for j in range(4):
        if labels[b, i, j] not in ignored:
          z = pixel_logits[b, i, j]
          nll.append(math.log(sum(math.exp(v) for v in z)) - z[labels[b, i, j]])
          correct += int(np.argmax(z) == labels[b, i, j])
          valid += 1
    expected.append(sum(nll) / len(nll))
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)
  assert m["semantics_xent"] == pytest.approx(np.mean(expected), rel=1e-5)
  assert m["semantics_acc"] == pytest.approx(correct / valid)


def test_semseg_predict_outputs_of_one_hot_logits_are_the_labels():
  config = _config((4, 2), (8, 6), name="semseg", num_classes=5)
  labels = np.random.RandomState(0).randint(0, 5, size=(3, 8, 6, 1))
  logits = jax.nn.one_hot(common.patchify(labels, (4, 2))[:, :, 0], 5, axis=-2)
  pred = semseg.predict_outputs({"semantics": logits}, config)["semantics"]
  assert pred.dtype == np.int32
  np.testing.assert_array_equal(pred, labels[..., 0])


def test_depth_loss_skips_unmeasured_pixels_and_predicts_bin_centres():
  config = _config((2, 2), (4, 4), name="depth", num_bins=16, min_depth=0.0,
                   max_depth=8.0)
  d = np.random.RandomState(0).uniform(0.1, 8.0, size=(2, 4, 4, 1))
  d[1, :2] = 0.0  # No measurement in the top half of example 1.
  bins = depth.targets({"depth": d}, config)[0]
  logits = {"depth": 2.0 * jax.nn.one_hot(bins, 16, axis=-2)}
  pred = depth.predict_outputs(logits, config)["depth"]
  assert pred.dtype == np.float32 and pred.shape == (2, 4, 4)
  measured = d[..., 0] > 0
  assert np.abs(pred - d[..., 0])[measured].max() <= 0.25 + 1e-6
  # Every pixel's logits put 2 on its true bin: loss log(1 + 15 e^-2).
  per_example, m = depth.loss(logits, {"depth": d}, config)
  np.testing.assert_allclose(per_example, [math.log1p(15 * math.exp(-2))] * 2,
                             rtol=1e-4)
  rmse = np.sqrt(np.mean((pred - d[..., 0])[measured] ** 2))
  assert m["depth_rmse"] == pytest.approx(rmse, rel=1e-5)


def test_depth_soft_targets_and_mean_decoding_by_hand():
  # 4 bins of 1 m over 0-4 m; a 1x1 "patch" grid of one pixel at 1.5 m
  # (bin 1) and one unmeasured pixel that must not count.
  config = _config((1, 2), (1, 2), name="depth", num_bins=4, min_depth=0.0,
                   max_depth=4.0, target_sigma=1.0, decoding="mean")
  d = np.array([1.5, 0.0], np.float32).reshape(1, 1, 2, 1)
  z = np.array([0.3, 1.2, -0.5, 0.1])
  logits = np.zeros((1, 1, 4, 2), np.float32)
  logits[0, 0, :, 0] = z
  logits[0, 0, :, 1] = [9.0, 0, 0, 0]  # The unmeasured pixel.
  # Target: Gaussian over bin ids around bin 1, sigma 1 bin.
  q = np.exp(-0.5 * (np.arange(4) - 1.0) ** 2)
  q /= q.sum()
  logp = z - np.log(np.exp(z).sum())
  per_example, m = depth.loss({"depth": logits}, {"depth": d}, config)
  np.testing.assert_allclose(per_example, [-(q * logp).sum()], rtol=1e-5)
  # Mean decoding: sum_k p_k (k + 0.5) for the measured pixel.
  p = np.exp(logp)
  mean = (p * (np.arange(4) + 0.5)).sum()
  pred = depth.predict_outputs({"depth": logits}, config)["depth"]
  np.testing.assert_allclose(pred[0, 0, 0], mean, rtol=1e-5)
  assert m["depth_rmse"] == pytest.approx(abs(mean - 1.5), rel=1e-5)


def test_task_args_errors():
  with pytest.raises(ValueError, match="Unknown config.task keys.*max_dept"):
    depth.model_outputs(_config((2, 2), (4, 4), name="depth", max_dept=10.0))
  with pytest.raises(ValueError, match="needs config.task keys.*num_classes"):
    semseg.model_outputs(_config((2, 2), (4, 4), name="semseg"))
  with pytest.raises(ValueError, match="Unknown config.task.name 'sem'"):
    tasks.get_task("sem")
  assert tasks.get_task("depth") is depth
  with pytest.raises(ValueError, match="Unknown config.task keys.*num_bins"):
    colorization.model_outputs(_config((2, 2), (4, 4), name="colorization",
                                       num_bins=3))
  assert depth.model_outputs(_config((2, 2), (4, 4), name="depth")) == {
      "depth": 256}
  with pytest.raises(ValueError, match="max_depth > min_depth.*2.0 and 2.0"):
    depth.model_outputs(_config((2, 2), (4, 4), name="depth", min_depth=2.0,
                                max_depth=2.0))
  with pytest.raises(ValueError, match="target_sigma .*-1.0"):
    depth.model_outputs(_config((2, 2), (4, 4), name="depth",
                                target_sigma=-1.0))


def _unit_normals(rng, shape):
  n = rng.normal(size=(*shape, 3))
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  n[:, :3, :2] = 0.0  # Pixels without a normal.
  return n.astype("f4")


def _panoptic_labels(rng, shape, num_classes, max_instances):
  """Instance ids in [0, max_instances), each with one class, as the pp's."""
  instances = rng.randint(0, max_instances, size=shape)
  classes = rng.randint(0, num_classes, size=(shape[0], max_instances))
  semantics = np.take_along_axis(classes, instances.reshape(shape[0], -1),
                                 axis=1).reshape(shape)
  return np.stack([semantics, instances], axis=-1).astype("i4")


# task: (task arguments, labels of a batch of 3 8x8 examples, the prediction
# key with what it must equal, where, to what tolerance, and a logit scale
# that makes the inputs confident logits: large for classes, 1 for values).
# Ignored, unmeasured and normal-less pixels are the invalid ones.
_ROUND_TRIPS = {
    "semseg": (
        dict(num_classes=5, ignore_label=0),  # An ignore label in range.
        lambda rng: {"semantics": rng.randint(0, 5, (3, 8, 8, 1)).astype("i4")},
        lambda b: ("semantics", b["semantics"][..., 0],
                   b["semantics"][..., 0] != 0, 0.0),
        30.0),
    "depth": (
        dict(num_bins=16, min_depth=0.0, max_depth=8.0),
        lambda rng: {"depth": np.where(
            rng.uniform(size=(3, 8, 8, 1)) < 0.2, 0.0,
            rng.uniform(0.1, 8.0, (3, 8, 8, 1))).astype("f4")},
        lambda b: ("depth", b["depth"][..., 0], b["depth"][..., 0] > 0,
                   0.25 + 1e-6),
        30.0),
    "panoptic": (
        dict(num_classes=4, max_instances=6),
        lambda rng: {"labels": _panoptic_labels(rng, (3, 8, 8), 4, 6)},
        lambda b: ("panoptic", b["labels"], np.ones((3, 8, 8), bool), 0.0),
        30.0),
    "colorization": (
        {},
        lambda rng: {"labels": rng.uniform(-1, 1, (3, 8, 8, 3)).astype("f4")},
        lambda b: ("color", b["labels"], np.ones((3, 8, 8), bool), 0.0),
        1.0),
    "normals": (
        {},
        lambda rng: {"normals": _unit_normals(rng, (3, 8, 8))},
        lambda b: ("normals", b["normals"], np.any(b["normals"] != 0, -1),
                   1e-6),
        1.0),
}


@pytest.mark.parametrize("name", sorted(_ROUND_TRIPS))
def test_round_trip_label_inputs_perfect_logits_prediction(name):
  args, make_labels, expect, scale = _ROUND_TRIPS[name]
  config = _config((2, 4), (8, 8), name=name, **args)
  task = tasks.get_task(name)
  batch = make_labels(np.random.RandomState(0))
  assert {k: (v.shape[1:], v.dtype) for k, v in batch.items()} == {
      k: (s.shape, s.dtype) for k, s in task.label_spec(config).items()}

  inputs = task.model_inputs(batch, config)
  channels = task.model_outputs(config)
  assert {k: v.shape for k, v in inputs.items()} == {
      k: (3, 8, c, 8) for k, c in channels.items()}
  assert all(v.dtype == np.float32 for v in inputs.values())
  key, label, valid, atol = expect(batch)
  for v in inputs.values():  # Invalid pixels are no input at all.
    assert not np.any(common.to_pixels(v, config)[~valid])

  # The inputs are perfect logits: one-hot at the true class, or the values.
  pred = task.predict_outputs(inputs, config)[key]
  assert pred.shape == label.shape and pred.dtype == label.dtype
  np.testing.assert_allclose(pred[valid], label[valid], rtol=0, atol=atol)

  per_example, _ = task.loss({k: scale * v for k, v in inputs.items()}, batch,
                             config)
  assert per_example.shape == (3,)
  np.testing.assert_allclose(per_example, 0.0, atol=1e-6)


def _nll(z, c):
  """Softmax cross-entropy of the logits vector `z` for class `c`."""
  return math.log(sum(math.exp(v) for v in z)) - z[c]


@pytest.mark.skipif(not os.path.exists(f"{FIXTURES}/stage1_io.npz"),
                    reason="big_vision UViM fixtures not found")
def test_panoptic_model_inputs_are_big_vision_uvims():
  config = _config((4, 4), (32, 32), name="panoptic", num_classes=9,
                   max_instances=5)
  io = np.load(f"{FIXTURES}/stage1_io.npz")
  inputs = panoptic.model_inputs({"labels": io["labels"]}, config)
  assert set(inputs) == set(panoptic.CHANNELS)
  for k in panoptic.CHANNELS:
    np.testing.assert_array_equal(inputs[k], io[f"x/{k}"])


@pytest.mark.skipif(not os.path.exists(f"{FIXTURES}/stage2_io.npz"),
                    reason="big_vision UViM fixtures not found")
def test_panoptic_predict_outputs_are_big_vision_uvims():
  config = _config((4, 4), (32, 32), name="panoptic", num_classes=9,
                   max_instances=5)
  io = np.load(f"{FIXTURES}/stage2_io.npz")
  logits = {k: io[f"pipeline_logits/{k}"] for k in panoptic.CHANNELS}
  pred = panoptic.predict_outputs(logits, config)["panoptic"]
  assert pred.dtype == np.int32
  np.testing.assert_array_equal(pred, io["pipeline_pred/panoptic"])
  # The vote matters here: it overrules some pixels' own argmax class.
  per_pixel = common.argmax_map(logits["semantics"], config)
  assert np.any(pred[..., 0] != per_pixel)


def test_panoptic_vote_sums_logits_and_small_segments_become_void():
  instances = np.array([[1, 1, 1, 0],
                        [1, 1, 1, 0],
                        [2, 2, 2, 0],
                        [2, 2, 2, 3]])
  semantics = np.zeros((4, 4, 3))
  semantics[instances == 0] = [1.0, 0.0, 0.0]
  semantics[instances == 3] = [0.0, 5.0, 0.0]
  # Instance 1: four pixels say class 1 (logit 1), two say class 2 (1.5):
  # summed logits 4 > 3, class 1. Instance 2: the same pixel majority, but
  # the two say class 2 with logit 3: summed 6 > 4, class 2.
  semantics[:2, :3] = [0.0, 1.0, 0.0]
  semantics[0, :2] = [0.0, 0.0, 1.5]
  semantics[2:, :3] = [0.0, 1.0, 0.0]
  semantics[3, :2] = [0.0, 0.0, 3.0]
  logits = {
      "semantics": _pixel_logits_to_patches(semantics[None], (2, 2)),
      "instances": _pixel_logits_to_patches(
          2.0 * np.eye(4)[instances][None], (2, 2)),
  }
  expected = np.zeros((4, 4, 2), int)
  expected[:2, :3] = (1, 1)
  expected[2:, :3] = (2, 2)
  for min_fraction, last_pixel in ((0.0, (1, 3)), (1 / 16, (0, 0))):
    # Instance 3 covers 1/16 of the image: kept only below that fraction.
    config = _config((2, 2), (4, 4), name="panoptic", num_classes=3,
                     max_instances=4, min_fraction=min_fraction)
    expected[3, 3] = last_pixel
    pred = panoptic.predict_outputs(logits, config)["panoptic"]
    np.testing.assert_array_equal(pred[0], expected)


def test_panoptic_loss_by_hand_skips_out_of_range_ids():
  config = _config((2, 2), (2, 4), name="panoptic", num_classes=3,
                   max_instances=2)
  rng = np.random.RandomState(0)
  labels = np.stack([rng.randint(0, 3, (2, 2, 4)),
                     rng.randint(0, 2, (2, 2, 4))], axis=-1)
  labels[0, 1, 2, 1] = 5  # An instance id beyond max_instances.
  pixel_logits = {"semantics": rng.normal(size=(2, 2, 4, 3)),
                  "instances": rng.normal(size=(2, 2, 4, 2))}
  logits = {k: _pixel_logits_to_patches(v, (2, 2))
            for k, v in pixel_logits.items()}
  per_example, m = panoptic.loss(logits, {"labels": labels}, config)
  expected = {}
  for c, (k, n) in enumerate((("semantics", 3), ("instances", 2))):
    expected[k] = []
    for b in range(2):
      nll = [_nll(pixel_logits[k][b, i, j], labels[b, i, j, c])
             for i in range(2) for j in range(4) if labels[b, i, j, c] < n]
      expected[k].append(sum(nll) / len(nll))
  np.testing.assert_allclose(
      per_example, np.add(expected["semantics"], expected["instances"]),
      rtol=1e-5)
  for k, v in expected.items():
    assert m[f"{k}_xent"] == pytest.approx(np.mean(v), rel=1e-5)


def test_colorization_loss_by_hand_and_clipped_predictions():
  config = _config((2, 2), (2, 4), name="colorization")
  rng = np.random.RandomState(0)
  labels = rng.uniform(-1, 1, (2, 2, 4, 3)).astype("f4")
  out = rng.uniform(-1.5, 1.5, (2, 2, 4, 3))
  per_example, m = colorization.loss(
      {"color": _pixel_logits_to_patches(out, (2, 2))}, {"labels": labels},
      config)
  expected = [np.mean((out[b] - labels[b]) ** 2) for b in range(2)]
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)
  assert m["color_mse"] == pytest.approx(np.mean(expected), rel=1e-5)
  pred = colorization.predict_outputs(
      {"color": _pixel_logits_to_patches(out, (2, 2))}, config)["color"]
  np.testing.assert_allclose(pred, np.clip(out, -1, 1), rtol=1e-6)


def test_normals_loss_by_hand_over_valid_pixels():
  config = _config((2, 2), (2, 4), name="normals")
  rng = np.random.RandomState(0)
  n = _unit_normals(rng, (2, 2, 4))  # Example 0: 4 invalid pixels.
  n[1] = 0.0  # Example 1 has no normals at all: loss 0.
  out = rng.normal(size=(2, 2, 4, 3))
  per_example, m = normals.loss(
      {"normals": _pixel_logits_to_patches(out, (2, 2))}, {"normals": n},
      config)
  valid = np.linalg.norm(n[0], axis=-1) > 0
  assert valid.sum() == 4
  l2 = np.sum((out[0] - n[0]) ** 2, axis=-1)[valid].mean()
  np.testing.assert_allclose(per_example, [l2, 0.0], rtol=1e-5)
  assert m["normals_l2"] == pytest.approx(l2 / 2, rel=1e-5)
  cos = np.sum(out[0] * n[0], -1) / np.linalg.norm(out[0], axis=-1)
  assert m["normals_angle"] == pytest.approx(
      np.degrees(np.arccos(cos[valid])).mean(), rel=1e-4)
