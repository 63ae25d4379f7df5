"""Tests of the image pp ops against hand-written expected tensors."""
import numpy as np
import pytest
import tensorflow as tf

from pp import builder

# A 3x4 label map with values an interpolating resize would blend.
LABELS = np.array([[0, 0, 7, 255],
                   [3, 3, 7, 255],
                   [3, 9, 9, 0]], np.int32)


def _run(pipe, **data):
  return builder.get_preprocess_fn(pipe)(data)


def _image(h, w, c=3):
  return np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c)


def test_decode_png_bytes_and_decoded_passthrough():
  image = _image(2, 3)
  out = _run("decode", image=tf.io.encode_png(image))["image"]
  assert out.dtype == tf.uint8 and out.shape == (2, 3, 3)
  np.testing.assert_array_equal(out, image)
  np.testing.assert_array_equal(_run("decode", image=image)["image"], image)
  gray = _run("decode(channels=1)", image=tf.io.encode_png(image[..., :1]))
  np.testing.assert_array_equal(gray["image"], image[..., :1])


@pytest.mark.parametrize("pipe, image, match", [
    ("decode", np.zeros((2, 2, 3), np.float32), "got a float32 tensor"),
    ("decode(channels=1)", np.zeros((2, 2, 3), np.uint8), "Expected 1 chan"),
])
def test_decode_rejects_wrong_decoded_input(pipe, image, match):
  with pytest.raises(ValueError, match=match):
    _run(pipe, image=image)


def test_resize_bilinear_rounds_integer_images():
  image = np.array([[[0], [255]]], np.uint8)
  out = _run("resize((1, 4))", image=image)["image"]
  assert out.dtype == tf.uint8
  # Half-pixel centres: 0, 63.75, 191.25, 255, rounded.
  np.testing.assert_array_equal(out[0, :, 0], [0, 64, 191, 255])


def test_resize_clips_overshoot_back_into_dtype():
  image = np.array([[[0], [255], [0]]], np.uint8)
  out = _run("resize((1, 7), method='bicubic')", image=image)["image"]
  # Bicubic gives -24.5, 26.07, 159.59, 255, ...: the negative lobes would
  # wrap around in a plain cast to uint8.
  np.testing.assert_array_equal(out[0, :, 0], [0, 26, 160, 255, 160, 26, 0])


def test_resize_keeps_float_dtype():
  out = _run("resize(4)", image=np.zeros((2, 2, 1), np.float64))["image"]
  assert out.dtype == tf.float64 and out.shape == (4, 4, 1)


def test_resize_nearest_of_label_map_is_exact():
  up = _run("resize((6, 8), method='nearest', key='labels')", labels=LABELS)
  assert up["labels"].dtype == tf.int32
  np.testing.assert_array_equal(
      up["labels"], LABELS.repeat(2, axis=0).repeat(2, axis=1))
  down = _run("resize((2, 3), method='nearest', key='labels')",
              labels=LABELS[..., None].astype(np.uint8))["labels"]
  assert down.shape == (2, 3, 1) and down.dtype == tf.uint8
  assert set(down.numpy().ravel()) <= set(LABELS.ravel())


def test_resize_small():
  out = _run("resize_small(4, method='nearest')", image=LABELS[:2])["image"]
  np.testing.assert_array_equal(out, LABELS[:2].repeat(2, 0).repeat(2, 1))
  out = _run("resize_small(6)", image=np.zeros((5, 3, 3), np.uint8))["image"]
  assert out.shape == (10, 6, 3)


def test_central_crop():
  image = _image(5, 6)
  np.testing.assert_array_equal(
      _run("central_crop(2)", image=image)["image"], image[1:3, 2:4])
  np.testing.assert_array_equal(
      _run("central_crop((3, 4), key='l')", l=LABELS)["l"], LABELS[0:3, 0:4])
  np.testing.assert_array_equal(
      _run("central_crop((1, 2), key='l')", l=LABELS)["l"], [[3, 7]])


@pytest.mark.parametrize("op", ["central_crop", "random_crop"])
def test_crop_larger_than_the_input_names_op_and_sizes(op):
  with pytest.raises(ValueError, match=f"pp op '{op}\\(\\(2, 9\\)\\)'.*"
                     "width 9 exceeds the input's 6"):
    _run(f"{op}((2, 9))", image=_image(5, 6))


def test_random_crop_is_a_window():
  image = _image(5, 6)
  windows = np.lib.stride_tricks.sliding_window_view(image, (2, 3, 3))
  for _ in range(5):
    crop = _run("random_crop((2, 3))", image=image)["image"].numpy()
    assert crop.shape == (2, 3, 3)
    assert (windows == crop).all(axis=(-3, -2, -1)).any()
  np.testing.assert_array_equal(
      _run("random_crop((3, 4), key='l')", l=LABELS)["l"], LABELS)


def test_random_crop_without_a_seed_crops_every_key_alike():
  """Eager calls (no seed passed) draw one seed per call for all ops."""
  image = _image(12, 12, 1)[..., 0]
  pipe = builder.get_preprocess_fn(
      "copy('labels', 'twin')|random_crop(4, key='labels')|"
      "random_crop(4, key='twin')")
  crops = [pipe({"labels": image}) for _ in range(8)]
  for out in crops:
    np.testing.assert_array_equal(out["labels"], out["twin"])
  # ... and a new seed per call: 8 crops of 81 positions are not all alike.
  assert len({out["labels"].numpy()[0, 0] for out in crops}) > 1


def test_crop_box_crops_image_and_labels_identically():
  image = _image(4, 8)
  data = {"image": image, "labels": image[..., 0], "l1": image[..., :1],
          "box": np.array([0.25, 0.5, 0.5, 0.25], np.float32)}
  out = builder.get_preprocess_fn(
      "crop_box|crop_box(key='labels')|crop_box(key='l1')")(data)
  np.testing.assert_array_equal(out["image"], image[1:3, 4:6])
  np.testing.assert_array_equal(out["labels"], image[1:3, 4:6, 0])
  np.testing.assert_array_equal(out["l1"], image[1:3, 4:6, :1])


def test_inception_box():
  image = _image(4, 8)
  full = _run("inception_box(area=(1.0, 1.0), aspect=(2.0, 2.0))", image=image)
  np.testing.assert_array_equal(full["box"], [0, 0, 1, 1])
  for _ in range(5):
    out = _run("inception_box(area=(0.2, 0.5), outkey='b')|"
               "copy('image', 'twin')|crop_box(boxkey='b')", image=image)
    top, left, h, w = (out["b"].numpy() * [4, 8, 4, 8]).round().astype(int)
    assert 0.2 <= h * w / 32 <= 0.5
    np.testing.assert_array_equal(
        out["image"], image[top:top + h, left:left + w])


def test_randu():
  u = _run("randu('r')")["r"]
  assert u.shape == () and u.dtype == tf.float32 and 0 <= u < 1


def test_det_fliplr_image():
  image = _image(2, 3, 1)
  flip = _run("det_fliplr", image=image, fliplr=0.7)["image"]
  np.testing.assert_array_equal(flip[..., 0], [[2, 1, 0], [5, 4, 3]])
  keep = _run("det_fliplr(key='l', randkey='r')", l=LABELS, r=0.3)["l"]
  np.testing.assert_array_equal(keep, LABELS)


def test_det_fliplr_negates_x_of_normals():
  normals = np.array([[[0.6, 0.0, 0.8], [-1.0, 0.0, 0.0]]], np.float32)
  expected = np.array([[[1.0, 0.0, 0.0], [-0.6, 0.0, 0.8]]], np.float32)
  data = {"normals": normals, "n2": normals, "fliplr": np.float32(0.9)}
  out = builder.get_preprocess_fn(
      "det_fliplr(key='normals')|det_fliplr(key='n2')")(data)
  np.testing.assert_array_equal(out["normals"], expected)
  np.testing.assert_array_equal(out["n2"], normals[:, ::-1])  # Not normals.
  out = builder.get_preprocess_fn(
      "det_fliplr(key='n2', normals=True)|"
      "det_fliplr(key='normals', normals=False)")(data)
  np.testing.assert_array_equal(out["n2"], expected)
  np.testing.assert_array_equal(out["normals"], normals[:, ::-1])


def test_det_fliplr_of_png_encoded_normals():
  normals = np.array([[[0, 0, 0], [10, 128, 255]]], np.uint8)
  out = _run("det_fliplr(key='normals')", normals=normals, fliplr=1.0)
  np.testing.assert_array_equal(
      out["normals"], [[[245, 128, 255], [255, 0, 0]]])


def test_value_range():
  image = np.array([[[0, 51, 255]]], np.uint8)
  out = _run("value_range(-1, 1)", image=image)["image"]
  assert out.dtype == tf.float32
  np.testing.assert_allclose(out, [[[-1, -0.6, 1]]], atol=1e-6)
  out = _run("value_range(0, 1, in_max=51, clip_values=True)", image=image)
  np.testing.assert_allclose(out["image"], [[[0, 1, 1]]], atol=1e-6)
  out = _run("value_range(0, 10, in_min=(0, 0, 5), in_max=(51, 255, 255))",
             image=image)
  np.testing.assert_allclose(out["image"], [[[0, 2, 10]]], atol=1e-5)


def test_rgb_to_grayscale_to_rgb():
  rgb = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [.5, .5, .5]]], np.float32)
  out = _run("rgb_to_grayscale_to_rgb", image=rgb)["image"].numpy()
  luma = [0.2989, 0.587, 0.114, 0.5 * 0.9999]  # ITU-R 601 weights.
  np.testing.assert_allclose(out, np.repeat(np.array(luma)[None, :, None], 3,
                                            axis=-1), atol=1e-6)
  gray = np.full((2, 2, 3), 100, np.uint8)
  out = _run("rgb_to_grayscale_to_rgb", image=gray)["image"]
  assert out.dtype == tf.uint8
  np.testing.assert_array_equal(out, gray)


def test_random_ops_are_functions_of_the_example_seed():
  pipe = builder.get_preprocess_fn(
      "randu('u')|inception_box|crop_box(key='image')|"
      "random_crop(3, key='labels')|make_canonical(random=True, key='ids')")
  ids = np.array([[1, 2, 3, 4, 5, 6, 7, 8]], np.int32)

  def run(seed):
    out = pipe({"image": _image(16, 16), "labels": LABELS, "ids": ids,
                "_seed": np.array(seed, np.int64)})
    return {k: out[k].numpy() for k in ("u", "box", "image", "labels", "ids")}

  first, again, other = run([3, 4]), run([3, 4]), run([3, 5])
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert all(not np.array_equal(first[k], other[k]) for k in ("u", "box"))
  # Still a permutation of the positive ids.
  np.testing.assert_array_equal(np.sort(first["ids"][0]), np.arange(1, 9))
