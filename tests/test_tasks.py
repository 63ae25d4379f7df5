"""Label encodings, losses and decoding of the semseg and depth tasks."""
import math
import os

import jax
import ml_collections
import numpy as np
import pytest

from uvimx import tasks
from uvimx.tasks import common
from uvimx.tasks import depth
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


def test_semseg_loss_by_hand_with_ignore_label():
  config = _config((2, 2), (2, 4), name="semseg", num_classes=3,
                   ignore_label=255)
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
        if labels[b, i, j] != 255:
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


def test_task_args_errors():
  with pytest.raises(ValueError, match="Unknown config.task keys.*max_dept"):
    depth.model_outputs(_config((2, 2), (4, 4), name="depth", max_dept=10.0))
  with pytest.raises(ValueError, match="needs config.task keys.*num_classes"):
    semseg.model_outputs(_config((2, 2), (4, 4), name="semseg"))
  with pytest.raises(ValueError, match="Unknown config.task.name 'sem'"):
    tasks.get_task("sem")
  assert tasks.get_task("depth") is depth
  assert depth.model_outputs(_config((2, 2), (4, 4), name="depth")) == {
      "depth": 256}
