"""The nyuv2_labeled builder on the two NYU frames of the fixtures."""
import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import polymax_nyu
from pp import builder as pp_builder
from uvimx import input_pipeline
from uvimx.datasets import nyuv2_labeled

NYU = "/work/shared/fixtures/nyuv2_sample"


def _png(name):
  return np.array(Image.open(os.path.join(NYU, name)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Frame 433 (with normals) as train, 464 (without) as test, built."""
  manual = tmp_path_factory.mktemp("manual")
  for split, index in (("train", "000433"), ("test", "000464")):
    os.makedirs(manual / split)
    for name in os.listdir(NYU):
      if index in name:
        shutil.copy(os.path.join(NYU, name), manual / split)
  data_dir = tmp_path_factory.mktemp("tfds")
  nyuv2_labeled.Nyuv2Labeled(data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return str(data_dir)


def test_examples_are_the_files(data_dir):
  builder = input_pipeline.get_builder("nyuv2_labeled", data_dir)
  assert builder.info.splits["train"].num_examples == 1
  (train,), (test,) = (tfds.as_numpy(builder.as_dataset(split=s))
                       for s in ("train", "test"))
  assert train["image/id"] == 433 and test["image/id"] == 464
  np.testing.assert_array_equal(train["image"], _png("000433.png"))
  np.testing.assert_array_equal(train["semantics"][..., 0],
                                _png("segm_gt_000433.png"))
  # Normals in the camera frame: the file's (x, y, z) is (x, -z, y) here,
  # and a missing normal stays (127, 127, 127).
  raw = _png("norm_gt_000433.png")
  x, y, z = np.moveaxis(raw.astype(int), -1, 0)
  missing = np.all(raw == 127, axis=-1, keepdims=True)
  np.testing.assert_array_equal(
      train["normals"], np.where(missing, 127, np.stack([x, 255 - z, y], -1)))
  # Depth in mm from 1/5000 m units: 5 units a millimetre.
  raw = _png("depth_gt_000433.png").astype(np.int64)
  assert np.abs(train["depth"][..., 0] * 5 - raw).max() <= 2.5
  assert np.all((train["depth"][..., 0] == 0) == (raw == 0))
  # Frame 464 has no normals file: every normal is missing.
  assert np.all(test["normals"] == 127)


def test_normals_are_those_of_the_depth_map(data_dir):
  """On walls and floor, the stored normals agree with normals from the
  depth map back-projected with NYU's Kinect intrinsics (differences over
  +-10 pixels: Kinect depth is too noisy for neighbours): the frame is the
  camera's (x right, y down, z forward), as synthetic_scenes'."""
  builder = input_pipeline.get_builder("nyuv2_labeled", data_dir)
  example = next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))
  depth = example["depth"][..., 0] / 1000.0
  semantics = example["semantics"][..., 0]
  normals = example["normals"] / 127.5 - 1.0
  rows, cols = np.mgrid[:nyuv2_labeled.HEIGHT, :nyuv2_labeled.WIDTH]
  points = np.stack([(cols - 325.58) * depth / 518.86,
                     (rows - 253.74) * depth / 519.47, depth], axis=-1)
  k, height, width = 10, nyuv2_labeled.HEIGHT, nyuv2_labeled.WIDTH
  shifted = lambda dr, dc: (slice(k + dr, height - k + dr),
                            slice(k + dc, width - k + dc))
  centre = shifted(0, 0)
  neighbours = [shifted(k, 0), shifted(-k, 0), shifted(0, k), shifted(0, -k)]
  from_depth = np.cross(points[neighbours[2]] - points[neighbours[3]],
                        points[neighbours[0]] - points[neighbours[1]])
  from_depth /= np.linalg.norm(from_depth, axis=-1, keepdims=True) + 1e-12
  # Towards the camera.
  from_depth *= -np.sign(np.sum(from_depth * points[centre], -1,
                                keepdims=True))
  # Wall and floor pixels whose neighbours are of the same class.
  use = np.isin(semantics[centre], [0, 1]) & (depth[centre] > 0)
  use &= np.linalg.norm(normals[centre], axis=-1) > 0.5
  for n in neighbours:
    use &= (depth[n] > 0) & (semantics[n] == semantics[centre])
  stored = normals[centre][use]
  stored /= np.linalg.norm(stored, axis=-1, keepdims=True)
  angles = np.degrees(np.arccos(np.clip(
      np.sum(stored * from_depth[use], -1), -1, 1)))
  assert use.sum() > 50_000
  # 5.8 degrees; the files' own frame gives 86.
  assert np.median(angles) < 10


def test_pp_reads_metres_and_missing_normals(data_dir):
  builder = input_pipeline.get_builder("nyuv2_labeled", data_dir)
  example = next(iter(builder.as_dataset(split="test", decoders={
      "depth": tfds.decode.SkipDecoding(),
      "normals": tfds.decode.SkipDecoding()})))
  out = pp_builder.get_preprocess_fn("decode_depth_png|decode_normals_png")(
      example)
  raw = _png("depth_gt_000464.png")
  valid = raw > 0
  np.testing.assert_allclose(out["depth"].numpy()[..., 0][valid],
                             raw[valid] / 5000, atol=6e-4)
  assert np.all(out["normals"].numpy() == 0)


def test_labels_outside_nyu40_are_refused(tmp_path):
  # Labels 1..40 with 0 unlabelled (another common release): 39 -> 40.
  for split, index in (("train", "000433"), ("test", "000464")):
    os.makedirs(tmp_path / "manual" / split)
    for name in os.listdir(NYU):
      if index in name:
        shutil.copy(os.path.join(NYU, name), tmp_path / "manual" / split)
  segm = tmp_path / "manual" / "train" / "segm_gt_000433.png"
  labels = np.array(Image.open(segm))
  Image.fromarray(np.where(labels == 255, 0, labels + 1).astype(
      np.uint8)).save(segm)
  with pytest.raises(ValueError, match=r"segm_gt_000433.png holds labels "
                     r"\[40\]: NYU-40 labels are 0..39"):
    nyuv2_labeled.Nyuv2Labeled(
        data_dir=str(tmp_path / "tfds")).download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(tmp_path / "manual")))


def test_missing_manual_files_say_where_to_put_them(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)python -m uvimx.datasets "
                     r"nyuv2_labeled.*MANUAL_DIR/train/000001.png"):
    input_pipeline.get_builder("nyuv2_labeled", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"(?s)\['train', 'test'\].*"
                     "depth_gt_.*python -m uvimx.datasets nyuv2_labeled"):
    nyuv2_labeled.Nyuv2Labeled(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(tmp_path)))


@pytest.mark.parametrize("variant", ["semseg", "depth", "normals"])
def test_polymax_nyu_configs_read_the_dataset(data_dir, variant):
  """The configs' train and eval pp on the built frames: 480x640 labels."""
  config = polymax_nyu.get_config(variant)
  config.input.data.data_dir = data_dir
  train, _ = input_pipeline.evaluation(config.input.data, config.input.pp, 1,
                                       process_index=0, process_count=1)
  val, _ = input_pipeline.evaluation(config.evals.val.data,
                                     config.evals.val.pp, 1,
                                     process_index=0, process_count=1)
  label = {"semseg": "semantics"}.get(variant, variant)
  for batch in (next(train.as_numpy_iterator()),
                next(val.as_numpy_iterator())):
    assert batch["image"].shape == (1, 480, 640, 3)
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch[label].shape[:3] == (1, 480, 640)
  if variant == "semseg":
    assert set(np.unique(batch[label])) <= set(range(40)) | {255}
  elif variant == "depth":
    assert 1.4 < batch[label][batch[label] > 0].min()
