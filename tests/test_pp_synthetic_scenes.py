"""Whole pipe strings on synthetic_scenes/tiny, run inside tf.data."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pp import builder as pp_builder
from uvimx import input_pipeline
from uvimx.datasets.synthetic_scenes import render

LABEL_KEYS = ("semantics", "instances", "boundaries")


@pytest.fixture(scope="module")
def raw_examples(tfds_data_dir):
  ds = tfds.load("synthetic_scenes/tiny", split="validation",
                 data_dir=tfds_data_dir)
  return list(tfds.as_numpy(ds))


def _validation(data_dir, pipe):
  data = dict(name="synthetic_scenes/tiny", split="validation",
              data_dir=data_dir)
  ds, _ = input_pipeline.evaluation(data, pipe, batch_size=24)
  batch, = list(ds.as_numpy_iterator())  # tiny's 24 validation examples.
  assert batch["_mask"].all()
  return batch


def test_decoding_pipe_reproduces_the_stored_labels(tfds_data_dir,
                                                    raw_examples):
  batch = _validation(
      tfds_data_dir,
      "decode|coco_panoptic|make_canonical|decode_depth_png|"
      "decode_normals_png|keep('image', 'semantics', 'instances', 'depth', "
      "'normals')")
  for i, raw in enumerate(raw_examples):
    np.testing.assert_array_equal(batch["image"][i], raw["image"])
    # coco_panoptic reserves 0 for void, which synthetic_scenes never has.
    np.testing.assert_array_equal(batch["semantics"][i] - 1, raw["semantics"])
    np.testing.assert_allclose(batch["depth"][i], raw["depth"] * 1e-3,
                               rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batch["normals"][i], axis=-1),
                               1.0, atol=1e-6)
    # make_canonical numbers all panoptic segments 1..M in raster order of
    # their centres; on thing pixels it must induce the stored instances.
    instances = batch["instances"][i][..., 0]
    ids = np.unique(instances)
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert len(ids) == len(raw["panoptic_objects"]["id"])
    rows, cols = np.indices(instances.shape)
    centres = [rows[instances == k].mean() * instances.shape[1]
               + cols[instances == k].mean() for k in ids]
    assert np.all(np.diff(centres) > 0)
    things = raw["instances"][..., 0] > 0
    pairs = set(zip(raw["instances"][..., 0][things], instances[things]))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_augmentation_pipe_crops_and_flips_all_keys_alike(tfds_data_dir):
  augment = "|".join(f"crop_box(key='{k}')|det_fliplr(key='{k}')"
                     for k in ("image",) + LABEL_KEYS)
  batch = _validation(
      tfds_data_dir,
      f"decode|inception_box(area=(0.3, 0.6))|randu('fliplr')|{augment}|"
      f"resize(32)|" + "|".join(
          f"resize(32, key='{k}', method='nearest')" for k in LABEL_KEYS) +
      "|value_range(-1, 1)|keep('image', 'semantics', 'instances', "
      "'boundaries')")
  assert batch["image"].shape == (24, 32, 32, 3)
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  assert batch["semantics"].max() < len(render.CLASS_NAMES)
  for i in range(24):
    # A crop of area <= 60% is smaller than the 64x64 frame, so resizing to
    # 32x32 is a nearest-neighbour subsampling by less than 2: any label
    # change between neighbours of the output has a stored boundary on at
    # least one side, if the keys were cropped and flipped identically.
    semantics = batch["semantics"][i][..., 0]
    instances = batch["instances"][i][..., 0]
    bounds = batch["boundaries"][i][..., 0]
    for axis in (0, 1):
      change = ((np.diff(semantics, axis=axis) != 0)
                | (np.diff(instances, axis=axis) != 0))
      side_a = np.delete(bounds, -1, axis=axis)
      side_b = np.delete(bounds, 0, axis=axis)
      assert np.all(side_a[change] | side_b[change])


def test_fliplr_mirrors_the_normals_of_the_side_walls(raw_examples):
  preprocess = pp_builder.get_preprocess_fn(
      "decode_normals_png|det_fliplr(key='normals')|"
      "det_fliplr(key='semantics')")
  checked = 0
  for raw in raw_examples:
    out = preprocess({"normals": raw["normals"], "fliplr": 1.0,
                      "semantics": raw["semantics"]})
    semantics = out["semantics"].numpy()[..., 0]
    normals_x = out["normals"].numpy()[..., 0]
    left = semantics == render.LEFT_WALL
    if left.sum() > 20:
      # The left wall faces +x; mirrored, it is on the right and faces -x.
      assert np.all(normals_x[left] < -0.5)
      assert left[:, :32].sum() < left[:, 32:].sum()
      checked += 1
  assert checked >= 5
