"""Dense-label pp ops: panoptic maps, instance ids, depth and normals."""
import tensorflow as tf

from pp import registry
from pp import utils

# The standard evaluation crop of Eigen et al. (NIPS 2014) for 480x640 NYU
# depth v2 frames, as (top, bottom, left, right), ends exclusive: rows 45:471,
# columns 41:601, a 426x560 region.
EIGEN_CROP = (45, 471, 41, 601)
NYU_FRAME = (480, 640)


@registry.register("coco_panoptic")
def get_coco_panoptic():
  """Turns a COCO panoptic PNG into `semantics` and `instances` maps.

  Reads TFDS `coco/2017_panoptic`'s layout: `panoptic_image` is uint8 HxWx3
  with segment id R + 256 G + 256^2 B, and `panoptic_objects` has the `id`
  and the class `label` of each segment. Writes, as int32 HxWx1 (like
  big_vision's UViM op):
    semantics: label + 1, 0 for void (a pixel in no listed segment);
    instances: 1-based index of the segment in `panoptic_objects`, 0 for void.

  Returns:
    The op.
  """
  def _coco_panoptic(data):
    rgb = tf.cast(data["panoptic_image"], tf.int32)
    id_map = tf.reshape(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2],
                        [-1])
    ids = tf.cast(data["panoptic_objects"]["id"], tf.int32)
    labels = tf.cast(data["panoptic_objects"]["label"], tf.int32)
    # Look every pixel's id up among the sorted segment ids (O(HW log N),
    # where one mask per segment would cost O(HW N) memory). A sentinel
    # above every 24-bit id, standing for a dummy segment N, keeps all
    # gathers in range, also for N = 0.
    order = tf.argsort(ids)
    sorted_ids = tf.concat([tf.gather(ids, order), [tf.int32.max]], 0)
    pos = tf.searchsorted(sorted_ids, id_map)
    found = tf.gather(sorted_ids, pos) == id_map
    index = tf.gather(tf.concat([order, tf.shape(ids)], 0), pos)
    instances = tf.where(found, index + 1, 0)
    semantics = tf.where(
        found, tf.gather(tf.concat([labels, [-1]], 0), index) + 1, 0)
    shape = tf.concat([tf.shape(rgb)[:2], [1]], 0)
    data["instances"] = tf.reshape(instances, shape)
    data["semantics"] = tf.reshape(semantics, shape)
    return data
  return _coco_panoptic


@registry.register("make_canonical")
@utils.inkey_outkey(indefault="instances", outdefault="instances",
                    with_data=True)
def get_make_canonical(random=False):
  """Renumbers the positive instance ids 1..N in a canonical order.

  The order is raster order of the instances' centres of mass (cy, cx), with
  big_vision's sort key cy * W + cx; equal keys keep the order of first
  appearance in raster order. Ids 0 and below (void, ignore) are unchanged.
  Stage-I models see instance ids only up to this renumbering.

  Args:
    random: assign a random permutation of 1..N instead.

  Returns:
    The op, on an integer HxW or HxWx1 map; the dtype is kept.
  """
  def _make_canonical(instances, data):
    if utils.with_channel_axis(instances).shape[-1] != 1:
      raise ValueError(f"Expected an HxW or HxWx1 map, got {instances.shape}.")
    ids_map = tf.cast(instances, tf.int32)
    width = tf.shape(ids_map)[1]
    flat = tf.reshape(ids_map, [-1])
    ids, segment = tf.unique(flat)
    n = tf.shape(ids)[0]
    if random:
      key = tf.random.stateless_uniform(
          [n], utils.op_seed(data, "make_canonical"), dtype=tf.float64)
    else:
      pixel = tf.range(tf.shape(flat)[0])
      cy = tf.math.unsorted_segment_mean(
          tf.cast(pixel // width, tf.float64), segment, n)
      cx = tf.math.unsorted_segment_mean(
          tf.cast(pixel % width, tf.float64), segment, n)
      key = cy * tf.cast(width, tf.float64) + cx
    # Non-positive ids sort last, so positive ids get the ranks 0..N-1.
    key = tf.where(ids > 0, key, tf.float64.max)
    rank = tf.math.invert_permutation(tf.argsort(key, stable=True))
    new_ids = tf.where(ids > 0, rank + 1, ids)
    canonical = tf.reshape(tf.gather(new_ids, segment), tf.shape(instances))
    return tf.cast(canonical, instances.dtype)
  return _make_canonical


@registry.register("nyu_depth")
@utils.inkey_outkey(indefault="depth", outdefault="labels")
def get_nyu_depth():
  """TFDS `nyu_depth_v2` depth (float32 metres, HxW) -> float32 HxWx1."""
  def _nyu_depth(depth):
    return tf.cast(utils.with_channel_axis(depth), tf.float32)
  return _nyu_depth


@registry.register("nyu_eval_crop")
def get_nyu_eval_crop(keys=("image", "labels"), box=EIGEN_CROP):
  """Crops `keys` of a 480x640 NYU frame to the evaluation region.

  Args:
    keys: the HxW or HxWxC entries to crop.
    box: (top, bottom, left, right), ends exclusive. The default is the Eigen
      crop, rows 45:471 and columns 41:601 (426x560), used by the standard
      NYU depth v2 evaluation.

  Returns:
    The op; it raises an error for a frame that is not 480x640.
  """
  top, bottom, left, right = box

  def _nyu_eval_crop(data):
    for k in keys:
      x = data[k]
      if x.shape[:2].is_fully_defined():
        if tuple(x.shape[:2]) != NYU_FRAME:
          raise ValueError(
              f"{k!r} must be a 480x640 NYU frame, got shape {x.shape}.")
      else:
        with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(x)[:2], NYU_FRAME,
            message=f"nyu_eval_crop: {k!r} must be a 480x640 NYU frame")]):
          x = tf.identity(x)
      data[k] = x[top:bottom, left:right]
    return data
  return _nyu_eval_crop


@registry.register("decode_depth_png")
@utils.inkey_outkey(indefault="depth", outdefault="depth")
def get_decode_depth_png(scale=0.001):
  """16-bit depth PNG -> float32 HxWx1 depth `value * scale`.

  Args:
    scale: metres per PNG unit; 0.001 for millimetres. Zero (no measurement)
      stays zero.

  Returns:
    The op, on PNG bytes or an already decoded uint16 HxW[x1] tensor.
  """
  def _decode_depth_png(depth):
    if depth.dtype == tf.string:
      # Decoding an 8-bit PNG as uint16 would silently scale it by 257. The
      # bit depth is byte 24 of a PNG (in its IHDR chunk).
      bit_depth = tf.io.decode_raw(tf.strings.substr(depth, 24, 1), tf.uint8)
      with tf.control_dependencies([tf.debugging.assert_equal(
          bit_depth, tf.constant([16], tf.uint8),
          message="decode_depth_png: expected a 16-bit PNG")]):
        depth = tf.identity(depth)
    depth = utils.decode_or_check(depth, tf.uint16, channels=1)
    return tf.cast(depth, tf.float32) * scale
  return _decode_depth_png


@registry.register("decode_normals_png")
@utils.inkey_outkey(indefault="normals", outdefault="normals")
def get_decode_normals_png():
  """8-bit normals PNG (v = round((n + 1) / 2 * 255)) -> float32 unit normals.

  A pixel is valid if its decoded vector v / 255 * 2 - 1 has a length in
  (0.5, 1.5): 8-bit unit vectors have lengths within 1 +- 0.02. Other pixels
  are invalid and decode to 0; they are how datasets mark missing normals:
  all-zero (0, 0, 0) -> length sqrt(3), and the NYU sample fixture's
  (127, 127, 127) -> length 0.007. Valid vectors are L2-normalised.

  Returns:
    The op, on PNG bytes or an already decoded uint8 HxWx3 tensor.
  """
  def _decode_normals_png(normals):
    normals = utils.decode_or_check(normals, tf.uint8, channels=3)
    n = tf.cast(normals, tf.float32) / 255.0 * 2.0 - 1.0
    length = tf.norm(n, axis=-1, keepdims=True)
    valid = (length > 0.5) & (length < 1.5)
    return tf.where(valid, n / tf.maximum(length, 0.5), 0.0)
  return _decode_normals_png
