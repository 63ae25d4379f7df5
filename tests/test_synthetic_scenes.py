"""Geometry and label consistency of the synthetic_scenes dataset."""
import dataclasses
import hashlib
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import uvimx.datasets  # pylint: disable=unused-import  (registers builders)
from uvimx.datasets import synthetic_scenes
from uvimx.datasets.synthetic_scenes import render
from uvimx.datasets.synthetic_scenes import synthetic_scenes as builder_lib

FLOOR = render.CLASS_NAMES.index("floor")
TINY_SIZES = {"train": 48, "validation": 24, "test": 24}


@pytest.fixture(scope="module")
def builder(tfds_data_dir):
  return tfds.builder("synthetic_scenes/tiny", data_dir=tfds_data_dir)


@pytest.fixture(scope="module")
def examples(builder):
  return list(tfds.as_numpy(builder.as_dataset(split="train")))


def camera_rays(intrinsics, height, width):
  """Camera-frame K^-1 [u, v, 1] for pixel centres, (H, W, 3) float64."""
  fx, fy, cx, cy = intrinsics.astype(np.float64)
  v, u = np.mgrid[:height, :width] + 0.5
  return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)


def segment_ids(example):
  return example["panoptic_image"].astype(np.int64) @ 256**np.arange(3)


def test_floor_depth_matches_plane(examples):
  for ex in examples:
    pose = ex["camera_to_world"].astype(np.float64)
    rays = camera_rays(ex["intrinsics"], 64, 64) @ pose[:3, :3].T
    # Ray-plane intersection with y = 0; the ray parameter is the z-depth.
    plane_depth = -pose[1, 3] / rays[..., 1]
    floor = ex["semantics"][..., 0] == FLOOR
    assert floor.sum() > 0
    np.testing.assert_allclose(ex["depth"][..., 0][floor] / 1000,
                               plane_depth[floor], rtol=0, atol=0.5e-3 + 1e-6)


def test_normals_are_unit_and_match_depth(examples):
  errors = []
  for ex in examples:
    normals = ex["normals"] / 255 * 2 - 1
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1, atol=0.01)
    points = ex["depth"] / 1000 * camera_rays(ex["intrinsics"], 64, 64)
    d_right = points[1:-1, 2:] - points[1:-1, :-2]
    d_down = points[2:, 1:-1] - points[:-2, 1:-1]
    # x right and y down: down x right points towards the camera (-z).
    from_depth = np.cross(d_down, d_right)
    from_depth /= np.linalg.norm(from_depth, axis=-1, keepdims=True)
    # Planar regions: 3x3 neighbourhoods inside one stuff segment.
    ids = segment_ids(ex)
    planar = ex["semantics"][1:-1, 1:-1, 0] >= render.NUM_THINGS
    for di in range(3):
      for dj in range(3):
        planar &= ids[di:di + 62, dj:dj + 62] == ids[1:-1, 1:-1]
    stored = normals[1:-1, 1:-1][planar]
    stored /= np.linalg.norm(stored, axis=-1, keepdims=True)
    cosine = np.sum(stored * from_depth[planar], axis=-1)
    errors.append(np.degrees(np.arccos(np.clip(cosine, -1, 1))))
  assert np.median(np.concatenate(errors)) < 3


def test_normals_face_the_camera():
  for index in range(10):
    scene = render.sample_scene(np.random.default_rng([7, index]), 64, 64)
    out = render.render(scene)
    rays = camera_rays(scene.intrinsics, 64, 64)
    np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=-1), 1,
                               atol=1e-6)
    assert np.all(np.sum(out["normals"] * rays, axis=-1) < 1e-9)


def test_things_and_stuff_labels_agree(examples):
  for ex in examples:
    semantics, instances = ex["semantics"][..., 0], ex["instances"][..., 0]
    is_thing = semantics < render.NUM_THINGS
    assert np.all(instances[is_thing] > 0)
    assert np.all(instances[~is_thing] == 0)
    num = instances.max()
    np.testing.assert_array_equal(np.unique(instances[is_thing]),
                                  np.arange(1, num + 1))
    for k in range(1, num + 1):  # One thing class per instance.
      assert len(np.unique(semantics[instances == k])) == 1


def test_panoptic_round_trip(examples):
  for ex in examples:
    objects = ex["panoptic_objects"]
    ids = segment_ids(ex)
    num_segments = len(objects["id"])
    np.testing.assert_array_equal(objects["id"], np.arange(1, num_segments + 1))
    is_thing = objects["label"] < render.NUM_THINGS
    num_things = is_thing.sum()
    # Things first in instance order, then stuff in class order.
    assert np.all(is_thing[:num_things]) and not np.any(is_thing[num_things:])
    assert np.all(np.diff(objects["label"][num_things:]) > 0)
    assert not np.any(objects["is_crowd"])
    label_of = np.concatenate([[-1], objects["label"]])
    instance_of = np.concatenate([[0], np.where(is_thing, objects["id"], 0)])
    assert ids.min() >= 1 and ids.max() <= num_segments
    np.testing.assert_array_equal(label_of[ids], ex["semantics"][..., 0])
    np.testing.assert_array_equal(instance_of[ids], ex["instances"][..., 0])
    for segment, area, bbox in zip(objects["id"], objects["area"],
                                   objects["bbox"]):
      rows, cols = np.nonzero(ids == segment)
      assert area == len(rows)
      np.testing.assert_allclose(
          bbox, [rows.min() / 64, cols.min() / 64, (rows.max() + 1) / 64,
                 (cols.max() + 1) / 64], atol=1e-7)


def _pairs(example):
  """(semantic, instance) pairs packed into one integer per pixel."""
  return (example["semantics"][..., 0].astype(np.int64) * 2**16
          + example["instances"][..., 0])


def test_boundaries_lie_on_label_changes(examples):
  for ex in examples:
    pairs = _pairs(ex)
    # Edge padding: out-of-image neighbours equal the pixel, never differ.
    padded = np.pad(pairs, 1, mode="edge")
    expected = ((padded[:-2, 1:-1] != pairs) | (padded[2:, 1:-1] != pairs) |
                (padded[1:-1, :-2] != pairs) | (padded[1:-1, 2:] != pairs))
    np.testing.assert_array_equal(ex["boundaries"][..., 0], expected)
  pairs = _pairs(examples[0])
  for i, j in np.argwhere(examples[0]["boundaries"][..., 0]):
    neighbours = [(i + di, j + dj)
                  for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))
                  if 0 <= i + di < 64 and 0 <= j + dj < 64]
    assert any(pairs[n] != pairs[i, j] for n in neighbours)


def test_depth_positive_and_occlusion(examples):
  for ex in examples:
    assert ex["depth"].min() > 0
  scene = render.sample_scene(np.random.default_rng([0, 0]), 64, 64)
  pose = scene.camera_to_world
  # A box 2 m ahead of the camera, on the floor, between it and the back wall.
  forward = pose[[0, 2], 2]  # Horizontal part of the camera's z axis.
  heading = forward / np.linalg.norm(forward)
  x, z = pose[[0, 2], 3] + 2.0 * heading
  box = render.Thing(label=render.BOX, x=x, z=z, half_x=0.3, half_z=0.3,
                     height=1.0, yaw=0.3, color=(1.0, 0.0, 0.0), texture=0.0)
  assert abs(x) + box.footprint_radius < scene.room[0] / 2
  with_box = render.render(dataclasses.replace(scene, things=(box,)))
  empty = render.render(dataclasses.replace(scene, things=()))
  on_box = with_box["things"] == 0
  assert on_box.sum() > 50
  assert np.all(with_box["depth"][on_box] < empty["depth"][on_box])
  np.testing.assert_array_equal(with_box["depth"][~on_box],
                                empty["depth"][~on_box])
  # The back-wall plane z = -D lies behind every box pixel.
  rays = camera_rays(scene.intrinsics, 64, 64) @ pose[:3, :3].T
  wall_depth = (-scene.room[2] - pose[2, 3]) / rays[..., 2]
  assert np.all(with_box["depth"][on_box] < wall_depth[on_box])


def _surface_distance(thing, points):
  """Signed distance-like residual of world points to a thing's surface."""
  dx, y, dz = points[:, 0] - thing.x, points[:, 1], points[:, 2] - thing.z
  if thing.label == render.SPHERE:
    return np.sqrt(dx**2 + (y - thing.half_x)**2 + dz**2) - thing.half_x
  if thing.label == render.BOX:
    c, s = math.cos(thing.yaw), math.sin(thing.yaw)
    local_x, local_z = c * dx - s * dz, s * dx + c * dz
    return np.maximum.reduce([np.abs(local_x) - thing.half_x,
                              np.abs(y - thing.height / 2) - thing.height / 2,
                              np.abs(local_z) - thing.half_z])
  radial = np.hypot(dx, dz)
  if thing.label == render.CYLINDER:
    return np.maximum(radial - thing.half_x,
                      np.abs(y - thing.height / 2) - thing.height / 2)
  return radial - thing.half_x * (thing.height - y) / thing.height  # Cone.


def test_thing_pixels_lie_on_their_surfaces():
  seen = set()
  for index in range(20):
    scene = render.sample_scene(np.random.default_rng([0, index]), 64, 64)
    out = render.render(scene)
    pose = scene.camera_to_world
    points = out["depth"][..., None] * camera_rays(scene.intrinsics, 64, 64)
    points = points @ pose[:3, :3].T + pose[:3, 3]
    for k, thing in enumerate(scene.things):
      mask = out["things"] == k
      if mask.any():
        seen.add(thing.label)
        np.testing.assert_allclose(_surface_distance(thing, points[mask]), 0,
                                   atol=1e-6)
        assert np.all(out["semantics"][mask] == thing.label)
  assert seen == set(range(render.NUM_THINGS))


def test_rendering_is_deterministic():
  first = render.generate((1, 5), 64, 64)
  second = render.generate((1, 5), 64, 64)
  for key, value in first.items():
    if isinstance(value, dict):
      for subkey in value:
        np.testing.assert_array_equal(value[subkey], second[key][subkey])
    else:
      np.testing.assert_array_equal(value, second[key])


def test_builds_hold_the_same_records(tfds_data_dir, tmp_path):
  tfds.builder("synthetic_scenes/tiny",
               data_dir=tmp_path).download_and_prepare()

  def records(data_dir):
    files = sorted(pathlib.Path(data_dir).glob(
        "synthetic_scenes/tiny/*/*.tfrecord*"))
    assert len(files) == 3
    # Parsed, not as bytes: protobuf may write a record's features in
    # another order in another process.
    return {f.name: [tf.train.Example.FromString(r.numpy())
                     for r in tf.data.TFRecordDataset(str(f))]
            for f in files}

  assert records(tfds_data_dir) == records(tmp_path)


def test_renderer_output_is_pinned():
  """Scene (1, 0)'s arrays, hashed. If this fails, the renderer changed:
  bump SyntheticScenes.VERSION with a release note (data dirs would
  otherwise serve the old scenes under the same version), then update."""
  out = render.generate((1, 0), 64, 64)
  digest = hashlib.sha256()
  for key in sorted(out):
    value = out[key]
    for name, array in (sorted(value.items()) if isinstance(value, dict)
                        else [(key, value)]):
      digest.update(name.encode())
      digest.update(np.ascontiguousarray(array).tobytes())
  assert digest.hexdigest() == (
      "fffa5435a267270e0be95e1052a25136f7f32f25fd04b3365cde057bde79543b")


def test_stored_examples_match_renderer(builder):
  for split in ("validation", "test"):
    for ex in tfds.as_numpy(builder.as_dataset(split=split).take(3)):
      seed = (builder_lib.SPLIT_SEEDS[split], ex["image/id"])
      expected = render.generate(seed, 64, 64)
      for key in ("image", "depth", "normals", "semantics", "instances",
                  "boundaries", "panoptic_image", "intrinsics",
                  "camera_to_world"):
        np.testing.assert_array_equal(ex[key], expected[key])


def test_splits_and_metadata(builder):
  info = builder.info
  assert {k: v.num_examples for k, v in info.splits.items()} == TINY_SIZES
  for split in TINY_SIZES:
    dataset = tfds.as_numpy(builder.as_dataset(split=split))
    ids = [ex["image/id"] for ex in dataset]
    assert sorted(ids) == list(range(TINY_SIZES[split]))
  assert synthetic_scenes.CLASS_NAMES == render.CLASS_NAMES
  assert synthetic_scenes.NUM_THINGS == 4
  assert tuple(info.features["panoptic_objects"]["label"].names) == (
      render.CLASS_NAMES)
  assert info.metadata["thing_class_names"] == [
      "sphere", "box", "cylinder", "cone"]
  assert info.metadata["num_things"] == render.NUM_THINGS
  configs = [c.name for c in builder_lib.SyntheticScenes.BUILDER_CONFIGS]
  assert configs == ["64x64", "128x128", "tiny"]
  full = builder_lib.SyntheticScenes.BUILDER_CONFIGS[0].split_sizes
  assert full == {"train": 10_000, "validation": 1_000, "test": 1_000}
