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
  """Turns a COCO panoptic PNG into `semantics`, `instances` and `crowd` maps.

  Reads TFDS `coco/2017_panoptic`'s layout: `panoptic_image` is uint8 HxWx3
  with segment id R + 256 G + 256^2 B, and `panoptic_objects` has the `id`
  and the class `label` of each segment, and optionally `is_crowd`. Writes,
  as int32 HxWx1 (the first two like big_vision's UViM op):
    semantics: label + 1, 0 for void (a pixel in no listed segment);
    instances: 1-based index of the segment in `panoptic_objects`, 0 for void;
    crowd: 1 on the pixels of `is_crowd` segments (COCO's iscrowd=1 regions),
      0 elsewhere; all 0 if the objects have no `is_crowd`. int32, not bool,
      so that `resize(..., method='nearest')` and batch padding take it.
  Crowd segments stay ordinary segments in `semantics` and `instances`, as
  in big_vision's UViM op (which ignores `is_crowd`), so models train on
  them; only the panoptic evaluator (`crowd_key`) treats them as
  panopticapi does.

  Returns:
    The op.
  """
  def _coco_panoptic(data):
    rgb = tf.cast(data["panoptic_image"], tf.int32)
    id_map = tf.reshape(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2],
                        [-1])
    objects = data["panoptic_objects"]
    ids = tf.cast(objects["id"], tf.int32)
    labels = tf.cast(objects["label"], tf.int32)
    is_crowd = (tf.cast(objects["is_crowd"], tf.int32) if "is_crowd" in objects
                else tf.zeros_like(ids))
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
    crowd = tf.where(found, tf.gather(tf.concat([is_crowd, [0]], 0), index),
                     0)
    shape = tf.concat([tf.shape(rgb)[:2], [1]], 0)
    data["instances"] = tf.reshape(instances, shape)
    data["semantics"] = tf.reshape(semantics, shape)
    data["crowd"] = tf.reshape(crowd, shape)
    return data
  return _coco_panoptic


@registry.register("make_canonical")
@utils.inkey_outkey(indefault="instances", outdefault="instances",
                    with_data=True)
def get_make_canonical(random=False):
  """Renumbers the positive instance ids 1..N in a canonical order.

  The order is raster order of the instances' centres of mass (cy, cx): sort
  key cy * W + cx (big_vision's op multiplies by H, which differs on
  non-square maps only); equal keys keep the order of first appearance in
  raster order. Ids 0 and below (void, ignore) are unchanged.
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


def _integer_map(x, png_dtype):
  """An integer label map, PNG bytes or decoded HxW[x1], -> int32 HxW."""
  if x.dtype == tf.string:
    x = utils.decode_or_check(x, png_dtype, channels=1)
  elif not x.dtype.is_integer:
    raise ValueError(f"Expected an integer label map or PNG bytes, got a "
                     f"{x.dtype.name} tensor.")
  x = utils.with_channel_axis(x)
  if x.shape[-1] not in (None, 1):
    raise ValueError(f"Expected an HxW or HxWx1 map, got shape {x.shape}.")
  return tf.cast(x[..., 0], tf.int32)


def _resize_weights(start, end, size, length):
  """(N, size, length) weights of a half-pixel bilinear resize of [start, end).

  Output sample i of object n reads input position
  p = start + (i + 0.5) * (end - start) / size - 0.5 (pixel k's centre at k),
  clamped to [start, end - 1], linearly between pixels floor(p) and
  floor(p) + 1: a bilinear `tf.image.resize` (half-pixel centres, no
  antialiasing) of the input's rows start..end-1 alone.
  """
  start = tf.cast(start, tf.float32)[:, None]
  end = tf.cast(end, tf.float32)[:, None]
  i = tf.range(size, dtype=tf.float32)[None]
  p = start + (i + 0.5) * (end - start) / size - 0.5
  p = tf.clip_by_value(p, start, tf.maximum(end - 1, start))
  low = tf.floor(p)
  frac = p - low
  high = tf.minimum(low + 1, tf.maximum(end - 1, start))
  def one_hot(k):
    return tf.one_hot(tf.cast(k, tf.int32), length, dtype=tf.float32)
  return ((1 - frac)[..., None] * one_hot(low) +
          frac[..., None] * one_hot(high))


@registry.register("instance_objects")
def get_instance_objects(max_instances=8, mask_size=64, num_things=4,
                         semantics_key="semantics",
                         instances_key="instances"):
  """Thing instances -> fixed-size `boxes`, `classes` and cropped `masks`.

  AiT's object representation (box, class, a mask cropped to the box and
  resized to mask_size x mask_size), from synthetic_scenes-style maps:
  `semantics` (HxW[x1] class indices, things first: class < num_things) and
  `instances` (HxW[x1], 0 for stuff, positive ids for things); decoded
  integer tensors or PNG bytes. An object is an instance id > 0 and its
  pixels of a thing class. Objects come in increasing id order; slots past
  the number of objects are padding. Only the first `max_instances` objects
  are kept (synthetic_scenes has at most 8), without an error: raising in the
  middle of a tf.data pipeline would stop training.

  Writes:
    boxes: float32 (max_instances, 4), [ymin, xmin, ymax, xmax] of the
      object's pixel extent in [0, 1] image coordinates, pixel (r, c)
      covering [r, r + 1) x [c, c + 1): ymin = first row / H,
      ymax = (last row + 1) / H, the same for x with W. Zeros for padding.
    classes: int32 (max_instances,): the object's class (the largest if its
      pixels disagree), -1 for padding.
    masks: float32 (max_instances, S, S), S = mask_size, in [0, 1]: the
      object's binary mask in the box, resized bilinearly with half-pixel
      centres ("align_corners=False", no antialiasing). In pixels, with
      y0 = ymin * H and h = (ymax - ymin) * H (integers), output row i reads
      input row position y = y0 + (i + 0.5) * h / S - 0.5, where input row k
      has its centre at k, clamped to [y0, y0 + h - 1] and interpolated
      linearly between rows floor(y) and floor(y) + 1; the same for columns
      (x0, w, j). So masks[n] equals `tf.image.resize(m[y0:y0 + h,
      x0:x0 + w, None], (S, S), "bilinear")[..., 0]` of the full-resolution
      binary mask m. Pasting back is the same rule in reverse: image pixel
      (r, c) in the box reads the mask at row (r + 0.5 - y0) * S / h - 0.5,
      column (c + 0.5 - x0) * S / w - 0.5, clamped to [0, S - 1]. Zeros for
      padding.

  Args:
    max_instances: the number of object slots.
    mask_size: S, the side of the cropped masks.
    num_things: classes below this are things.
    semantics_key: the key of the semantic map.
    instances_key: the key of the instance map.

  Returns:
    The op.
  """
  def _instance_objects(data):
    semantics = _integer_map(data[semantics_key], tf.uint8)
    instances = _integer_map(data[instances_key], tf.uint16)
    height, width = tf.shape(instances)[0], tf.shape(instances)[1]
    ids = tf.where((semantics < num_things) & (instances > 0), instances, 0)
    unique = tf.unique(tf.reshape(ids, [-1])).y
    objects = tf.sort(tf.boolean_mask(unique, unique > 0))[:max_instances]
    num = tf.shape(objects)[0]
    valid = tf.range(max_instances) < num
    objects = tf.reshape(  # Padding: id 0. Static shape, for batching.
        tf.pad(objects, [[0, max_instances - num]]), [max_instances])
    full = tf.equal(ids[None], objects[:, None, None]) & valid[:, None, None]

    def extent(any_along):  # (M, L) bool -> first and one past last index.
      length = tf.shape(any_along)[1]
      first = tf.argmax(tf.cast(any_along, tf.int32), axis=1,
                        output_type=tf.int32)
      last = length - tf.argmax(tf.cast(any_along[:, ::-1], tf.int32),
                                axis=1, output_type=tf.int32)
      return tf.where(valid, first, 0), tf.where(valid, last, 0)

    y0, y1 = extent(tf.reduce_any(full, axis=2))
    x0, x1 = extent(tf.reduce_any(full, axis=1))
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    data["boxes"] = tf.stack([tf.cast(y0, tf.float32) / h,
                              tf.cast(x0, tf.float32) / w,
                              tf.cast(y1, tf.float32) / h,
                              tf.cast(x1, tf.float32) / w], axis=1)
    classes = tf.reduce_max(
        tf.where(full, semantics[None], -1), axis=(1, 2))
    data["classes"] = tf.where(valid, classes, -1)
    # Separable: rows (M, S, H) x mask (M, H, W) x columns (M, S, W).
    rows = _resize_weights(y0, y1, mask_size, height)
    cols = _resize_weights(x0, x1, mask_size, width)
    masks = tf.einsum("msh,mhw,mtw->mst", rows,
                      tf.cast(full, tf.float32), cols)
    masks = tf.where(valid[:, None, None], masks, 0.0)
    data["masks"] = tf.clip_by_value(masks, 0.0, 1.0)
    return data
  return _instance_objects
