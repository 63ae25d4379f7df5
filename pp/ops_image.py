"""Image pp ops: decode, resize, crop, flip and value range.

Spatial ops treat the two leading axes as height and width and work on HxW
and HxWxC tensors alike, so the same op applies to images and label maps.
Ops that must act identically on several keys (random crops and flips of an
image and its labels) split in two: one op draws the random parameters into
the data dict (`inception_box`, `randu`), another applies them to any key
(`crop_box`, `det_fliplr`).
"""
import tensorflow as tf

from pp import registry
from pp import utils


@registry.register("decode")
@utils.inkey_outkey()
def get_decode(channels=3):
  """Decodes image bytes (JPEG, PNG, ...) to uint8 HxWxC.

  An already decoded uint8 image (TFDS decodes Image features by default) is
  passed through.

  Args:
    channels: the number of output channels; 0 keeps the encoded number.

  Returns:
    The op.
  """
  def _decode(image):
    return utils.decode_or_check(image, tf.uint8, channels)
  return _decode


def _resize(x, size, method, antialias):
  """Resizes the leading HxW axes of `x` to `size`, keeping x's dtype.

  Integer inputs are rounded and clipped back to their dtype; "nearest" only
  copies values, so it is exact for label maps.

  Args:
    x: an HxW or HxWxC tensor.
    size: (height, width), ints or int tensors.
    method: a `tf.image.resize` method name.
    antialias: see `tf.image.resize`.

  Returns:
    The resized tensor.
  """
  y = tf.image.resize(utils.with_channel_axis(x), size, method=method,
                      antialias=antialias)
  if x.shape.rank == 2:
    y = y[..., 0]
  if x.dtype.is_integer and y.dtype != x.dtype:
    y = tf.clip_by_value(tf.round(y), x.dtype.min, x.dtype.max)
  return tf.cast(y, x.dtype)


@registry.register("resize")
@utils.inkey_outkey()
def get_resize(size, method="bilinear", antialias=False):
  """Resizes to `size`, an int (square) or (height, width).

  Args:
    size: the output size.
    method: a `tf.image.resize` method; use "nearest" for label maps.
    antialias: see `tf.image.resize`.

  Returns:
    The op; the output has the input's dtype.
  """
  size = utils.maybe_repeat(size, 2)

  def _resize_op(x):
    return _resize(x, size, method, antialias)
  return _resize_op


@registry.register("resize_small")
@utils.inkey_outkey()
def get_resize_small(smaller_size, method="bilinear", antialias=False):
  """Resizes so that the smaller side is `smaller_size`, keeping the aspect.

  Args:
    smaller_size: the output length of the smaller side.
    method: a `tf.image.resize` method; use "nearest" for label maps.
    antialias: see `tf.image.resize`.

  Returns:
    The op; the longer side is rounded to the nearest integer.
  """
  def _resize_small(x):
    hw = tf.cast(tf.shape(x)[:2], tf.float32)
    size = tf.cast(tf.round(hw * smaller_size / tf.reduce_min(hw)), tf.int32)
    return _resize(x, size, method, antialias)
  return _resize_small


def _crop(x, top, left, height, width):
  """Crops the leading HxW axes of `x`; top/left/height/width may be tensors."""
  rank = x.shape.rank
  # Known sizes are checked now: tf.slice's run-time error names no op.
  for name, wanted, available in (("height", height, x.shape[0]),
                                  ("width", width, x.shape[1])):
    wanted = tf.get_static_value(wanted)
    if None not in (wanted, available) and wanted > available:
      raise ValueError(f"The crop's {name} {wanted} exceeds the input's "
                       f"{available} (shape {x.shape}): crop to at most the "
                       "input size, or resize first.")
  begin = tf.stack([top, left] + [0] * (rank - 2))
  size = tf.stack([height, width] + [-1] * (rank - 2))
  crop = tf.slice(x, begin, size)  # Fails at run time if out of bounds.
  # tf.slice forgets static sizes given as tensors; restore what is known.
  crop.set_shape([tf.get_static_value(height), tf.get_static_value(width)]
                 + x.shape[2:].as_list())
  return crop


@registry.register("central_crop")
@utils.inkey_outkey()
def get_central_crop(size):
  """Crops the central `size` (int or (height, width)) region."""
  height, width = utils.maybe_repeat(size, 2)

  def _central_crop(x):
    shape = tf.shape(x)
    return _crop(x, (shape[0] - height) // 2, (shape[1] - width) // 2,
                 height, width)
  return _central_crop


@registry.register("random_crop")
@utils.inkey_outkey(with_data=True)
def get_random_crop(size):
  """Crops a uniformly random `size` (int or (height, width)) region.

  The offset is drawn from the example's seed (see `utils.op_seed`), so keys of
  one size are cropped identically; for keys of different sizes use
  `inception_box` + `crop_box`.

  Args:
    size: the crop size, at most the input size.

  Returns:
    The op.
  """
  height, width = utils.maybe_repeat(size, 2)

  def _random_crop(x, data):
    shape = tf.shape(x)
    # Uniform offsets in [0, size - crop]: floor of a uniform in [0, 1) times
    # the number of positions.
    positions = tf.cast(shape[:2] - [height, width] + 1, tf.float32)
    u = tf.random.stateless_uniform([2], utils.op_seed(data, "random_crop"))
    top, left = tf.unstack(tf.cast(tf.floor(u * positions), tf.int32))
    return _crop(x, top, left, height, width)
  return _random_crop


@registry.register("inception_box")
def get_inception_box(area=(0.05, 1.0), aspect=(0.75, 1.33), outkey="box",
                      inkey="image"):
  """Draws an Inception-style random box for `crop_box`.

  Args:
    area: range of the box area, as a fraction of the image area.
    aspect: range of the box aspect ratio (width / height).
    outkey: where to store the box: float32 [top, left, height, width] as
      fractions of the image size, so that it also applies to keys of
      another resolution.
    inkey: the image whose size the box is drawn for.

  Returns:
    The op.
  """
  def _inception_box(data):
    shape = tf.shape(utils.with_channel_axis(data[inkey]))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.zeros([1, 0, 4]),
        seed=utils.op_seed(data, f"inception_box/{outkey}"), area_range=area,
        aspect_ratio_range=aspect, min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True)
    hw = tf.cast(tf.concat([shape[:2], shape[:2]], 0), tf.float32)
    data[outkey] = tf.cast(tf.concat([begin[:2], size[:2]], 0), tf.float32) / hw
    return data
  return _inception_box


@registry.register("crop_box")
@utils.inkey_outkey(with_data=True)
def get_crop_box(boxkey="box"):
  """Crops to the box in `data[boxkey]` (see `inception_box`).

  The fractional box is scaled to this key's size and rounded, so keys of the
  box's own resolution get exactly the drawn pixels, and all keys of one size
  get the same crop.

  Args:
    boxkey: the key of the [top, left, height, width] box.

  Returns:
    The op.
  """
  def _crop_box(x, data):
    hw = tf.shape(x)[:2]
    box = tf.cast(tf.round(data[boxkey] * tf.cast(
        tf.concat([hw, hw], 0), tf.float32)), tf.int32)
    # Rounding top and height separately can overshoot by one pixel.
    return _crop(x, box[0], box[1], tf.minimum(box[2], hw[0] - box[0]),
                 tf.minimum(box[3], hw[1] - box[1]))
  return _crop_box


@registry.register("randu")
def get_randu(key):
  """Stores a uniform random float32 scalar in [0, 1) in `data[key]`."""
  def _randu(data):
    data[key] = tf.random.stateless_uniform(
        [], utils.op_seed(data, f"randu/{key}"))
    return data
  return _randu


@registry.register("det_fliplr")
def get_det_fliplr(key="image", randkey="fliplr", normals=None):
  """Flips `data[key]` left-right iff `data[randkey] > 0.5` (see `randu`).

  Mirroring a scene also mirrors its surface normals, so for normals the x
  component is negated as well: float normals n_x -> -n_x; uint8 normals
  encoded as v = round((n + 1) / 2 * 255) v_x -> 255 - v_x (invalid pixels,
  which encode no unit vector, stay invalid).

  Args:
    key: the key to flip in place.
    randkey: the key of the random scalar deciding the flip.
    normals: whether `data[key]` holds HxWx3 normals; None means
      `key == "normals"`, so the one key that needs it cannot forget it.

  Returns:
    The op.
  """
  if normals is None:
    normals = key == "normals"

  def _flip_normals_x(n):
    if n.dtype == tf.uint8:
      flipped_x = 255 - n[..., :1]
    elif n.dtype.is_floating:
      flipped_x = -n[..., :1]
    else:
      raise ValueError(f"Normals must be float or uint8, got {n.dtype.name}.")
    return tf.concat([flipped_x, n[..., 1:]], axis=-1)

  def _det_fliplr(data):
    x = data[key]
    flipped = tf.reverse(x, axis=[1])
    if normals:
      flipped = _flip_normals_x(flipped)
    data[key] = tf.where(data[randkey] > 0.5, flipped, x)
    return data
  return _det_fliplr


@registry.register("value_range")
@utils.inkey_outkey()
def get_value_range(vmin=-1.0, vmax=1.0, in_min=0.0, in_max=255.0,
                    clip_values=False):
  """Maps [in_min, in_max] linearly to float32 [vmin, vmax].

  Args:
    vmin: the output for `in_min`.
    vmax: the output for `in_max`.
    in_min: the input low value (a scalar, or one value per channel).
    in_max: the input high value (a scalar, or one value per channel).
    clip_values: whether to clip the output to [vmin, vmax].

  Returns:
    The op.
  """
  def _value_range(x):
    in_lo = tf.constant(in_min, tf.float32)
    in_hi = tf.constant(in_max, tf.float32)
    unit = (tf.cast(x, tf.float32) - in_lo) / (in_hi - in_lo)
    y = vmin + unit * (vmax - vmin)
    if clip_values:
      y = tf.clip_by_value(y, min(vmin, vmax), max(vmin, vmax))
    return y
  return _value_range


@registry.register("rgb_to_grayscale_to_rgb")
@utils.inkey_outkey()
def get_rgb_to_grayscale_to_rgb():
  """Replaces an RGB image by its luma, repeated in 3 channels (same dtype).

  UViM's colorization task uses it to make the model input.

  Returns:
    The op.
  """
  def _gray(image):
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return _gray
