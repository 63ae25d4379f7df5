"""Tests of the dense-label pp ops, on hand-made inputs and real samples."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pp import builder

FIXTURES = "/work/shared/fixtures"
COCO = os.path.join(FIXTURES, "coco_panoptic_sample")
NYU = os.path.join(FIXTURES, "nyuv2_sample")
# The NYU sample's 16-bit depth PNGs are in units of 1/5000 m (0.2 mm), not
# millimetres: read as mm the nearest pixel would be 7.5 m away. Back-projected
# with the NYU intrinsics, the floor is a plane 6692 units below the camera
# and the pool table top a plane 3830 units above the floor; a pool table is
# 0.74-0.79 m high, so 1 unit = 0.79 / 3830 m ~ 1/4850 m, and with 1/5000 m
# the camera is 1.34 m above the floor, the depth range 1.5-5.9 m.
NYU_DEPTH_SCALE = 1 / 5000


def _run(pipe, **data):
  return builder.get_preprocess_fn(pipe)(data)


def _in_tf_data(pipe, **data):
  fn = builder.get_preprocess_fn(pipe)
  return tf.data.Dataset.from_tensors(data).map(fn).get_single_element()


def _rgb_of_ids(ids):
  """The COCO panoptic PNG encoding: id = R + 256 G + 256^2 B."""
  ids = np.asarray(ids)
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(
      np.uint8)


@pytest.mark.parametrize("run", [_run, _in_tf_data])
def test_coco_panoptic_on_2x2(run):
  # Id 42 has no object: void like 0.
  panoptic = _rgb_of_ids([[1, 2 * 65536 + 3 * 256 + 5], [0, 42]])
  objects = {"id": np.array([131845, 1]), "label": np.array([0, 132])}
  out = run("coco_panoptic", panoptic_image=panoptic, panoptic_objects=objects)
  for k in ("semantics", "instances", "crowd"):
    assert out[k].dtype == tf.int32 and out[k].shape == (2, 2, 1)
  np.testing.assert_array_equal(out["semantics"][..., 0], [[133, 1], [0, 0]])
  np.testing.assert_array_equal(out["instances"][..., 0], [[2, 1], [0, 0]])
  # No `is_crowd` (e.g. a dataset without it): no crowd pixel.
  np.testing.assert_array_equal(out["crowd"], 0)


@pytest.mark.parametrize("run", [_run, _in_tf_data])
def test_coco_panoptic_crowd_map(run):
  # Segments 5 (a thing, label 0), 6 (crowd, label 0) and 7 (stuff, label
  # 120), void (0) and an unlisted id (42), as TFDS gives them (bool
  # is_crowd).
  panoptic = _rgb_of_ids([[5, 6, 6], [0, 6, 7], [42, 7, 7]])
  objects = {"id": np.array([7, 6, 5]), "label": np.array([120, 0, 0]),
             "is_crowd": np.array([False, True, False])}
  out = run("coco_panoptic", panoptic_image=panoptic, panoptic_objects=objects)
  assert out["crowd"].dtype == tf.int32 and out["crowd"].shape == (3, 3, 1)
  # 1 exactly on segment 6's three pixels; void and unlisted ids are 0.
  np.testing.assert_array_equal(out["crowd"][..., 0],
                                [[0, 1, 1], [0, 1, 0], [0, 0, 0]])
  # The crowd segment is still an ordinary segment (object 2, label 0 + 1)
  # in the training maps, as in big_vision's op.
  np.testing.assert_array_equal(out["semantics"][..., 0],
                                [[1, 1, 1], [0, 1, 121], [0, 121, 121]])
  np.testing.assert_array_equal(out["instances"][..., 0],
                                [[3, 2, 2], [0, 2, 1], [0, 1, 1]])


def test_coco_panoptic_without_objects_is_all_void():
  out = _run("coco_panoptic", panoptic_image=_rgb_of_ids([[1, 0]]),
             panoptic_objects={"id": np.zeros([0], np.int64),
                               "label": np.zeros([0], np.int64),
                               "is_crowd": np.zeros([0], bool)})
  for k in ("semantics", "instances", "crowd"):
    np.testing.assert_array_equal(out[k], [[[0], [0]]])


def _coco_examples():
  with open(os.path.join(COCO, "panoptic_examples.json")) as f:
    annotations = json.load(f)["annotations"]
  with open(os.path.join(COCO, "panoptic_coco_categories.json")) as f:
    label_of = {c["id"]: i for i, c in enumerate(json.load(f))}
  for ann in annotations:
    png = tf.io.read_file(
        os.path.join(COCO, "panoptic_examples_" + ann["file_name"]))
    segments = ann["segments_info"]
    objects = {
        "id": np.array([s["id"] for s in segments]),
        "label": np.array([label_of[s["category_id"]] for s in segments]),
        "is_crowd": np.array([bool(s["iscrowd"]) for s in segments])}
    yield png, objects, segments


def test_coco_panoptic_on_real_sample():
  """Segment areas of the op's output match the COCO annotation's `area`."""
  n_examples = 0
  for png, objects, segments in _coco_examples():
    out = _run("decode(key='panoptic_image')|coco_panoptic",
               panoptic_image=png, panoptic_objects=objects)
    semantics, instances = out["semantics"].numpy(), out["instances"].numpy()
    crowd = out["crowd"].numpy()
    for i, (segment, label) in enumerate(zip(segments, objects["label"])):
      mask = instances == i + 1
      assert mask.sum() == segment["area"]
      assert (semantics[mask] == label + 1).all()
      assert (crowd[mask] == segment["iscrowd"]).all()
    # Both images have crowd segments (24295 pixels; 7839 + 421): the crowd
    # map is their union and nothing else.
    assert crowd.sum() == sum(s["area"] for s in segments if s["iscrowd"]) > 0
    void = instances == 0
    assert void.sum() == instances.size - sum(s["area"] for s in segments) > 0
    assert (semantics[void] == 0).all() and (semantics[~void] > 0).all()
    n_examples += 1
  assert n_examples == 2


BLOBS = np.array([[0, 0, 0, 0, 4, 4],
                  [9, 9, 0, 0, 4, 4],
                  [9, 9, 0, -1, 0, 0],
                  [0, 0, 2, 2, 2, 0],
                  [0, 0, 0, 0, 0, 0]], np.int32)
# Centres (row, col) and keys cy * 6 + cx: id 4 (0.5, 4.5) -> 7.5, id 9
# (1.5, 0.5) -> 9.5, id 2 (3, 3) -> 21; so 4 -> 1, 9 -> 2, 2 -> 3. The void
# (0) and ignore (-1) ids are kept.
CANONICAL = np.array([[0, 0, 0, 0, 1, 1],
                      [2, 2, 0, 0, 1, 1],
                      [2, 2, 0, -1, 0, 0],
                      [0, 0, 3, 3, 3, 0],
                      [0, 0, 0, 0, 0, 0]], np.int32)


@pytest.mark.parametrize("run", [_run, _in_tf_data])
def test_make_canonical(run):
  out = run("make_canonical", instances=BLOBS[..., None])["instances"]
  assert out.dtype == tf.int32 and out.shape == (5, 6, 1)
  np.testing.assert_array_equal(out[..., 0], CANONICAL)
  hw = run("make_canonical(key='l')", l=np.maximum(BLOBS, 0).astype(np.uint16))
  assert hw["l"].dtype == tf.uint16
  np.testing.assert_array_equal(hw["l"], np.maximum(CANONICAL, 0))


def test_make_canonical_random_is_a_permutation():
  seen = set()
  for _ in range(20):
    out = _run("make_canonical(random=True)", instances=BLOBS)["instances"]
    out = out.numpy()
    new_of = {old: set(out[BLOBS == old]) for old in (4, 9, 2)}
    assert all(len(v) == 1 for v in new_of.values())
    perm = tuple(v.pop() for v in new_of.values())
    assert sorted(perm) == [1, 2, 3]
    np.testing.assert_array_equal(out[BLOBS <= 0], BLOBS[BLOBS <= 0])
    seen.add(perm)
  assert len(seen) > 1


def test_nyu_depth():
  depth = np.array([[0.5, 1.25], [3.0, 0.0]], np.float32)
  out = _run("nyu_depth", depth=depth)
  assert out["labels"].dtype == tf.float32
  np.testing.assert_array_equal(out["labels"], depth[..., None])


def _nyu_frame(h=480, w=640):
  rows, cols = np.mgrid[:h, :w]
  return (rows * 1000 + cols).astype(np.float32)[..., None]


def test_nyu_eval_crop_is_the_eigen_crop():
  frame = _nyu_frame()
  out = _run("nyu_eval_crop", image=np.zeros((480, 640, 3), np.uint8),
             labels=frame)
  assert out["image"].shape == (426, 560, 3)
  np.testing.assert_array_equal(out["labels"], frame[45:471, 41:601])
  assert (out["labels"][0, 0, 0], out["labels"][-1, -1, 0]) == (45041, 470600)
  out = _run("nyu_eval_crop(keys=('d',), box=(0, 2, 3, 4))", d=frame[..., 0])
  np.testing.assert_array_equal(out["d"], [[3], [1003]])


def test_nyu_eval_crop_rejects_other_frame_sizes():
  with pytest.raises(ValueError, match="'labels' must be a 480x640 NYU frame"):
    _run("nyu_eval_crop", image=np.zeros((480, 640, 3)),
         labels=_nyu_frame(240, 320))
  # Decoded in tf.data, the size is only known at run time.
  pipe = "decode|nyu_eval_crop(keys=('image',))"
  ok = _in_tf_data(pipe, image=tf.io.encode_png(np.zeros((480, 640, 3),
                                                         np.uint8)))
  assert ok["image"].shape == (426, 560, 3)
  with pytest.raises(tf.errors.InvalidArgumentError, match="480x640"):
    _in_tf_data(pipe, image=tf.io.encode_png(np.zeros((48, 64, 3), np.uint8)))


@pytest.mark.parametrize("run", [_run, _in_tf_data])
def test_decode_depth_png_round_trip(run):
  mm = np.array([[0, 1000], [65535, 1234]], np.uint16)
  metres = np.array([[0, 1], [65.535, 1.234]], np.float32)[..., None]
  out = run("decode_depth_png", depth=tf.io.encode_png(mm[..., None]))
  assert out["depth"].dtype == tf.float32 and out["depth"].shape == (2, 2, 1)
  np.testing.assert_allclose(out["depth"], metres, rtol=1e-6)
  for decoded in (mm, mm[..., None]):
    np.testing.assert_allclose(
        run("decode_depth_png", depth=decoded)["depth"], metres, rtol=1e-6)
  out = run("decode_depth_png(scale=0.5, inkey='d', outkey='m')",
            d=mm[..., None])
  np.testing.assert_array_equal(out["m"], mm[..., None] * 0.5)


def test_decode_depth_png_rejects_8_bit_png():
  png = tf.io.encode_png(np.ones((2, 2, 1), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match="16-bit PNG"):
    _run("decode_depth_png", depth=png)
  with pytest.raises(ValueError, match="uint16"):
    _run("decode_depth_png", depth=np.ones((2, 2, 1), np.uint8))


@pytest.mark.parametrize("encode", [False, True])
def test_decode_normals_png(encode):
  v = np.array([[[255, 128, 128], [128, 0, 128], [0, 0, 0]],
                [[127, 127, 127], [255, 255, 255], [200, 90, 30]]], np.uint8)
  n = v / 255 * 2 - 1
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  # All-zero, mid-grey (the zero vector) and all-255 encode no unit vector.
  n[0, 2] = n[1, 0] = n[1, 1] = 0
  out = _run("decode_normals_png",
             normals=tf.io.encode_png(v) if encode else v)["normals"]
  assert out.dtype == tf.float32
  np.testing.assert_allclose(out, n, atol=1e-6)


def test_decode_normals_png_inverts_the_encoding():
  rng = np.random.RandomState(0)
  n = rng.normal(size=(4, 5, 3))
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  v = np.round((n + 1) / 2 * 255).astype(np.uint8)
  out = _run("decode_normals_png", normals=tf.io.encode_png(v))["normals"]
  np.testing.assert_allclose(out, n, atol=2 / 255)


def _read_nyu(name):
  return tf.io.read_file(os.path.join(NYU, name))


def test_nyu_sample_depth_and_eval_crop():
  png = _read_nyu("depth_gt_000433.png")
  raw = tf.io.decode_png(png, dtype=tf.uint16).numpy()
  out = _run(
      f"decode|decode_depth_png(scale={NYU_DEPTH_SCALE})|"
      "nyu_eval_crop(keys=('image', 'depth'))",
      image=_read_nyu("000433.png"), depth=png)
  assert out["image"].shape == (426, 560, 3)
  depth = out["depth"].numpy()
  np.testing.assert_allclose(
      depth, raw[45:471, 41:601] * np.float32(NYU_DEPTH_SCALE), rtol=1e-6)
  valid = depth[depth > 0]
  assert 1.4 < valid.min() and valid.max() < 6.0
  # No depth is measured outside rows 41:472, so the crop drops that border.
  assert raw[:41].max() == raw[472:].max() == 0
  assert (depth == 0).mean() < (raw == 0).mean()


def test_nyu_sample_normals():
  png = _read_nyu("norm_gt_000433.png")
  raw = tf.io.decode_png(png).numpy()
  normals = _run("decode_normals_png", normals=png)["normals"].numpy()
  length = np.linalg.norm(normals, axis=-1)
  # The sample marks missing normals (the frame border) with (127, 127, 127).
  invalid = (raw == 127).all(-1)
  assert 0 < invalid.mean() < 0.5 and invalid[0].all()
  np.testing.assert_array_equal(normals[invalid], 0)
  np.testing.assert_allclose(length[~invalid], 1, atol=1e-5)
  flipped = _run("det_fliplr(key='normals')|decode_normals_png",
                 normals=raw, fliplr=1.0)["normals"].numpy()
  np.testing.assert_allclose(flipped[:, ::-1] * [-1, 1, 1], normals,
                             atol=2 / 255)


def _scene(height=16, width=16):
  """A stuff-only (class 5) map and an empty instance map, HxWx1."""
  return (np.full((height, width, 1), 5, np.uint8),
          np.zeros((height, width, 1), np.uint16))


def _instance_objects(semantics, instances, run=_run, **kw):
  args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
  out = run(f"instance_objects({args})", semantics=semantics,
            instances=instances)
  return {k: out[k].numpy() for k in ("boxes", "classes", "masks")}


def _half_pixel_crop(mask, box, size):
  """Numpy reference: sample (i, j) at y0 + (i + .5) h / S - .5, clamped."""
  y0, x0, y1, x1 = box

  def taps(start, end, i):
    p = min(max(start + (i + 0.5) * (end - start) / size - 0.5, start),
            end - 1)
    low = int(np.floor(p))
    return low, min(low + 1, end - 1), p - low

  crop = np.zeros((size, size))
  for i in range(size):
    r0, r1, fy = taps(y0, y1, i)
    for j in range(size):
      c0, c1, fx = taps(x0, x1, j)
      crop[i, j] = ((1 - fy) * ((1 - fx) * mask[r0, c0] + fx * mask[r0, c1]) +
                    fy * ((1 - fx) * mask[r1, c0] + fx * mask[r1, c1]))
  return crop


@pytest.mark.parametrize("run", [_run, _in_tf_data])
def test_instance_objects_boxes_classes_and_padding(run):
  semantics, instances = _scene()
  semantics[2:5, 3:9], instances[2:5, 3:9] = 1, 2  # Rows 2-4, cols 3-8.
  semantics[10:16, 0:2], instances[10:16, 0:2] = 3, 1  # Touches the border.
  out = _instance_objects(semantics, instances, run, max_instances=4,
                          mask_size=8)
  assert out["boxes"].dtype == np.float32 and out["boxes"].shape == (4, 4)
  assert out["classes"].dtype == np.int32 and out["masks"].shape == (4, 8, 8)
  # In id order: id 1 first. Ends are one past the last pixel.
  np.testing.assert_array_equal(out["boxes"] * 16, [
      [10, 0, 16, 2], [2, 3, 5, 9], [0, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(out["classes"], [3, 1, -1, -1])
  # Rectangles fill their boxes: all ones; padding is all zeros.
  np.testing.assert_array_equal(out["masks"][:2], 1)
  np.testing.assert_array_equal(out["masks"][2:], 0)


def test_instance_objects_crop_of_an_l_shape():
  semantics, instances = _scene()
  l_shape = np.zeros((16, 16), bool)
  l_shape[4:10, 2:4] = True  # Vertical bar, rows 4-9.
  l_shape[8:10, 2:8] = True  # Foot, rows 8-9, to column 7.
  semantics[l_shape], instances[l_shape] = 2, 1
  out = _instance_objects(semantics, instances, max_instances=1, mask_size=8)
  np.testing.assert_array_equal(out["boxes"][0] * 16, [4, 2, 10, 8])
  crop = out["masks"][0]
  # 6 pixels -> 8 samples: row i reads y = 3.875 + 0.75 i, column j reads
  # x = 1.875 + 0.75 j (both clamped to the box).
  assert crop[0, 0] == 1  # y, x clamped to (4, 2): in the bar.
  assert crop[0, 3] == 0  # x = 4.125: right of the bar, above the foot.
  assert crop[5, 5] == 0.625  # y = 7.625: 0.375 row 7 (0) + 0.625 row 8.
  # y = 7.625, x = 3.375: row 7 is 1 at column 3 and 0 at 4, row 8 all 1.
  assert crop[5, 2] == 0.375 * 0.625 + 0.625
  np.testing.assert_allclose(
      crop, _half_pixel_crop(l_shape, (4, 2, 10, 8), 8), atol=1e-6)
  # The same as TF's half-pixel resize of the box alone.
  resized = tf.image.resize(l_shape[4:10, 2:8, None].astype(np.float32),
                            (8, 8), "bilinear")[..., 0]
  np.testing.assert_allclose(crop, resized, atol=1e-6)
  # A box larger than the mask (downsampling, no antialiasing) too.
  small = _instance_objects(semantics, instances, max_instances=1,
                            mask_size=4)["masks"][0]
  np.testing.assert_allclose(
      small, _half_pixel_crop(l_shape, (4, 2, 10, 8), 4), atol=1e-6)


def test_instance_objects_selection():
  semantics, instances = _scene(8, 12)
  # Ids 7, 3, 5 (not contiguous), and id 4 on stuff pixels (class 4 is not
  # a thing with num_things=4): not an object.
  for obj_id, cls, col in ((7, 0, 0), (3, 2, 3), (5, 1, 6), (4, 4, 9)):
    semantics[:, col:col + 2], instances[:, col:col + 2] = cls, obj_id
  out = _instance_objects(semantics, instances, max_instances=4, mask_size=4)
  np.testing.assert_array_equal(out["classes"], [2, 1, 0, -1])
  np.testing.assert_allclose(out["boxes"][:, 1] * 12, [3, 6, 0, 0])
  # More objects than slots: the first ones by id, no error.
  out = _instance_objects(semantics, instances, max_instances=2, mask_size=4)
  np.testing.assert_array_equal(out["classes"], [2, 1])
  # No things at all: all padding.
  out = _instance_objects(*_scene(), max_instances=3, mask_size=4)
  np.testing.assert_array_equal(out["classes"], -1)
  np.testing.assert_array_equal(out["boxes"], 0)
  np.testing.assert_array_equal(out["masks"], 0)


def test_instance_objects_reads_pngs_in_tf_data():
  semantics, instances = _scene()
  semantics[3:6, 4:12], instances[3:6, 4:12] = 0, 1
  fn = builder.get_preprocess_fn("instance_objects(max_instances=2)")
  ds = tf.data.Dataset.from_tensors(dict(
      semantics=tf.io.encode_png(semantics),
      instances=tf.io.encode_png(instances))).map(fn)
  # Fixed shapes, so that examples batch.
  assert ds.element_spec["masks"].shape == (2, 64, 64)
  assert ds.element_spec["boxes"].shape == (2, 4)
  out = ds.get_single_element()
  np.testing.assert_array_equal(out["boxes"][0] * 16, [3, 4, 6, 12])
  np.testing.assert_array_equal(out["masks"][0], 1)
