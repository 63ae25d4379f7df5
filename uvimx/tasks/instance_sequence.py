"""AiT instance segmentation as a token sequence, with Pix2Seq's augmentation.

AiT (Sec. 3.2) writes every object as 4 + 1 + mask_len tokens:
[ymin, xmin, ymax, xmax] box bins, the class, then the mask tokenizer's codes
of the object's 64x64 box crop (4x4 = 16 codes). A stage-II LM predicts the
sequence from the image; the mask codes are decoded by the tokenizer's
decoder (AiT's "soft token": the code distributions, not the sampled ids)
and pasted back into the image with `paste_masks`.

Vocabulary. The codec owns `vocab_size = num_bins + (num_classes + 1) +
num_codes` consecutive ids starting at `offset` (the LM may put several
tasks into one vocabulary): box bins [offset, offset + num_bins), classes
(the thing classes 0..num_classes-1, then the NOISE class num_classes),
mask codes. `position_ranges()` gives each sequence position's [lo, hi)
slice; `sampling_ranges()`, without the noise class, restricts sampling.

Training sequences (`build`), following Pix2Seq's sequence augmentation as
AiT uses it (SwinTransformer/AiT `insseg_head.py`):
  * The real objects, in a random order per example (the sequence is a set;
    Pix2Seq found random order best), then noise objects up to
    `max_instances`, so that every sequence has the same length and the LM
    learns to tell objects from non-objects (the score at test time). Real
    objects beyond `max_instances` are dropped (a random subset, as the
    order is random).
  * A noise object is, with probability `duplicate_prob` (0.5), a jittered
    duplicate of a random real object of the example: each coordinate moves
    by `jitter_std` (AiT: 0.05) times the box's height or width times a
    normal variate truncated at 2 standard deviations. Otherwise (and always
    in an example without real objects) it is a random box: centre uniform
    in [0, 1]^2, half height and half width |N(0, 1) truncated at 2| / 4
    (Pix2Seq's and AiT's `random_bbox`). Boxes are clipped to [0, 1], their
    ends put in order and widened to at least one step.
  * Noise objects' class target is the noise class, with weight
    `class_weight` (Pix2Seq's noise_bbox_weight = 1); their box and mask
    targets have weight 0: their box tokens are only inputs and their mask
    codes mean nothing. Their input (and unweighted target) mask codes are
    the duplicated object's codes for a duplicate, and, for a random box,
    `noise_mask_codes` if given (AiT feeds the code of an empty 64x64 mask
    there) or else uniformly random codes. AiT re-encodes the ground-truth
    mask cropped at the jittered box; without the tokenizer at hand we reuse
    the source object's codes, which is what that crop nearly is.
  * Input class corruption (Pix2Seq's and AiT's `class_label_corruption =
    'rand_n_fake_cls'`): the LM is teacher-forced on `inputs` but learns
    `targets`. Each object's (real or noise) input class token is replaced
    with probability `corrupt_class_prob`, by the noise class with
    probability `fake_class_prob` and otherwise by a uniformly random real
    class. Pix2Seq and AiT replace every one (1.0) half by the noise class
    (0.5), our defaults: the input class then says nothing about whether an
    object is real. Left uncorrupted, it would give the LM a shortcut that
    fails at test time: noise objects all come last, so "the previous input
    class was noise" would mean "everything after is noise", and a single
    sampled noise class would end the detections.

Weights: `box_weight`, `class_weight`, `mask_weight` per token type for real
objects (the mask tokens are 16 of an object's 21, so AiT's small mask
weight keeps them from swamping the box and class losses); noise objects
count only through their class token.

Box coordinates (Pix2Seq's quantisation): coordinate c in [0, 1] is token
round(c * (num_bins - 1)), and token k decodes as k / (num_bins - 1), so a
box comes back within half a step; with num_bins = image size + 1, boxes on
pixel edges (the pp op's) come back exactly. (Bins of width 1 / num_bins
decoded at their centres would shift every pixel-edge box by half a pixel:
box AP 63 for the ground truth itself on 64x64 images.)

Decoding (`parse`): box tokens -> coordinates as above; the sampled class
(-1 for noise) with its probability under a softmax over the class slice as
the score (Pix2Seq's); the sampled mask codes, and softmax(mask_temperature *
mask-slice logits) per mask position as the soft tokens for the
detokenizer.

Crop geometry (fixed by the pp op `instance_objects` that makes the crops):
an SxS crop of a box [ymin, xmin, ymax, xmax] (normalised) of an HxW mask is
an align_corners=False bilinear resize of the box region alone (samples
clamped to the box's pixels). `paste_masks` inverts it: image pixel k
(centre k + 0.5) in the box reads the crop at (k + 0.5 - ymin*H) * S /
((ymax - ymin) * H) - 0.5, clamped to the crop; likewise x.
"""
import dataclasses

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr
from jax.scipy.special import ndtri
import numpy as np


@dataclasses.dataclass(frozen=True)
class InstanceSequence:
  """Instances <-> token sequences; see the module docstring.

  Attributes:
    num_bins: box coordinates are quantised into this many levels k /
      (num_bins - 1) over [0, 1] (the image size is the fixed normaliser).
    num_classes: thing classes 0..num_classes-1; class token num_classes is
      the noise class.
    num_codes: the mask tokenizer's codebook size.
    mask_len: mask tokens per object (AiT: 4x4 codes of a 64x64 crop).
    max_instances: objects per sequence, real ones then noise ones.
    offset: vocabulary id of the codec's first token.
    box_weight, class_weight, mask_weight: loss weights per token type.
    corrupt_class_prob: probability that an object's input class token is
      replaced (Pix2Seq / AiT: every one).
    fake_class_prob: of the replaced ones, the share replaced by the noise
      class rather than a random real class (Pix2Seq / AiT: 0.5).
    duplicate_prob: probability that a noise object duplicates a real one
      (AiT: the number of duplicates is uniform in [0, #noise], so 0.5 on
      average); otherwise it is a random box.
    jitter_std: a duplicate's coordinates move by this times the box size
      times a normal variate truncated at +-2 (AiT: 0.1 / 2).
  """
  num_bins: int = 64
  num_classes: int = 4
  num_codes: int = 128
  mask_len: int = 16
  max_instances: int = 8
  offset: int = 0
  box_weight: float = 1.0
  class_weight: float = 1.0
  mask_weight: float = 0.2
  corrupt_class_prob: float = 1.0
  fake_class_prob: float = 0.5
  duplicate_prob: float = 0.5
  jitter_std: float = 0.05

  def __post_init__(self):
    if self.num_bins < 2:
      raise ValueError(f"InstanceSequence.num_bins must be >= 2 (the levels "
                       f"0 and 1 at least), got {self.num_bins}.")
    for name in ("num_classes", "num_codes", "mask_len", "max_instances"):
      if getattr(self, name) < 1:
        raise ValueError(f"InstanceSequence.{name} must be >= 1, got "
                         f"{getattr(self, name)}.")
    if self.offset < 0:
      raise ValueError(f"InstanceSequence.offset must be >= 0, got "
                       f"{self.offset}.")
    for name in ("corrupt_class_prob", "fake_class_prob", "duplicate_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"InstanceSequence.{name} must be in [0, 1], got "
                         f"{getattr(self, name)}.")

  # Vocabulary layout (ids in the whole LM vocabulary).
  @property
  def box_start(self):
    return self.offset

  @property
  def class_start(self):
    return self.offset + self.num_bins

  @property
  def noise_token(self):
    return self.class_start + self.num_classes

  @property
  def mask_start(self):
    return self.class_start + self.num_classes + 1

  @property
  def vocab_size(self):
    """Ids this codec uses: [offset, offset + vocab_size)."""
    return self.num_bins + self.num_classes + 1 + self.num_codes

  @property
  def object_len(self):
    return 4 + 1 + self.mask_len

  @property
  def seq_len(self):
    return self.max_instances * self.object_len

  def position_ranges(self):
    """int32 (seq_len, 2): the [lo, hi) id slice of every position."""
    per_object = ([(self.box_start, self.class_start)] * 4 +
                  [(self.class_start, self.mask_start)] +
                  [(self.mask_start, self.offset + self.vocab_size)]
                  * self.mask_len)
    return np.tile(np.array(per_object, np.int32), (self.max_instances, 1))

  def sampling_ranges(self):
    """`position_ranges` with the noise class left out, for inference.

    As AiT and Pix2Seq: every object slot gets a real class, which `parse`
    scores by its probability under the softmax over the classes and noise,
    so an unlikely object ranks low instead of disappearing.
    """
    ranges = self.position_ranges()
    ranges[4::self.object_len, 1] = self.noise_token
    return ranges

  def _fix_boxes(self, boxes):
    """Clip to [0, 1], order the ends, widen to at least one step."""
    min_size = 1.0 / (self.num_bins - 1)

    def fix(a, b):
      lo = jnp.clip(jnp.minimum(a, b), 0.0, 1.0)
      hi = jnp.clip(jnp.maximum(a, b), 0.0, 1.0)
      hi = jnp.maximum(hi, jnp.minimum(lo + min_size, 1.0))
      lo = jnp.minimum(lo, hi - min_size)
      return lo, hi

    y0, y1 = fix(boxes[..., 0], boxes[..., 2])
    x0, x1 = fix(boxes[..., 1], boxes[..., 3])
    return jnp.stack([y0, x0, y1, x1], axis=-1)

  def _to_bins(self, coords):
    bins = jnp.round(coords * (self.num_bins - 1)).astype(jnp.int32)
    return jnp.clip(bins, 0, self.num_bins - 1)

  def build(self, rng, boxes, classes, mask_codes, noise_mask_codes=None):
    """Training sequences from ground-truth objects (jittable).

    Args:
      rng: a jax.random key.
      boxes: float (B, M, 4) normalised [ymin, xmin, ymax, xmax] in [0, 1].
      classes: int (B, M) in [0, num_classes); -1 marks an empty slot (real
        objects may be in any slots).
      mask_codes: int (B, M, mask_len) in [0, num_codes): the tokenizer's
        codes of each object's box crop; anything in empty slots.
      noise_mask_codes: optional int (mask_len,): the codes to feed for
        random noise boxes (AiT: those of an empty mask); None: random codes.

    Returns:
      dict of (B, seq_len) arrays: "targets" and "inputs" int32 vocabulary
      ids (the caller shifts `inputs` right), "weights" float32 per-token
      loss weights; and "objects" int32 (B, max_instances): the input slot
      of each sequence object, -1 for noise objects.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    classes = jnp.asarray(classes, jnp.int32)
    mask_codes = jnp.asarray(mask_codes, jnp.int32)
    b, m = classes.shape
    n = self.max_instances
    if boxes.shape != (b, m, 4) or mask_codes.shape != (b, m, self.mask_len):
      raise ValueError(
          f"Expected boxes (B, M, 4) and mask_codes (B, M, {self.mask_len}) "
          f"for classes {classes.shape}; got {boxes.shape} and "
          f"{mask_codes.shape}.")
    if m < n:  # Pad with empty slots, so that the gathers below fill n.
      pad = ((0, 0), (0, n - m))
      boxes = jnp.pad(boxes, pad + ((0, 0),))
      classes = jnp.pad(classes, pad, constant_values=-1)
      mask_codes = jnp.pad(mask_codes, pad + ((0, 0),))
    mp = classes.shape[1]
    # All random numbers come from one uniform draw: each jax.random call
    # inlines its own threefry, which is slow to compile on CPU.
    cols = 4 + 2 + 2 + self.mask_len + 5
    u = jax.random.uniform(rng, (b * mp + b * n * cols,))
    sort_key, u = u[:b * mp].reshape(b, mp), u[b * mp:].reshape(b, n, cols)
    u_jitter, u_half, u_centre = u[..., :4], u[..., 4:6], u[..., 6:8]
    u_codes = u[..., 8:8 + self.mask_len]
    u_dup, u_source, u_corrupt, u_fake, u_class = jnp.moveaxis(
        u[..., 8 + self.mask_len:], -1, 0)

    # Real objects first in a random order: sort by a random key, empty
    # slots last.
    valid = classes >= 0
    order = jnp.argsort(jnp.where(valid, sort_key, 2.0), axis=1)[:, :n]
    take = lambda x: jnp.take_along_axis(  # pylint: disable=g-long-lambda
        x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    boxes, classes, mask_codes = take(boxes), take(classes), take(mask_codes)
    num_real = jnp.sum(classes >= 0, axis=1, keepdims=True)  # (B, 1)
    is_real = jnp.arange(n)[None, :] < num_real  # (B, n)

    # Noise objects: a jittered duplicate of a random real object, or a
    # random box.
    source = jnp.clip(jnp.floor(u_source * num_real).astype(jnp.int32),
                      0, n - 1)
    src_boxes = jnp.take_along_axis(boxes, source[..., None], axis=1)
    src_codes = jnp.take_along_axis(mask_codes, source[..., None], axis=1)
    size = src_boxes[..., 2:] - src_boxes[..., :2]
    jitter = _truncated_normal(u_jitter)
    dup_boxes = src_boxes + self.jitter_std * jnp.tile(size, 2) * jitter
    half = jnp.abs(_truncated_normal(u_half)) / 4
    rand_boxes = jnp.concatenate([u_centre - half, u_centre + half], axis=-1)
    if noise_mask_codes is None:
      rand_codes = _randint(u_codes, self.num_codes)
    else:
      rand_codes = jnp.broadcast_to(
          jnp.asarray(noise_mask_codes, jnp.int32), (b, n, self.mask_len))
    duplicate = (u_dup < self.duplicate_prob) & (num_real > 0)
    noise_boxes = self._fix_boxes(
        jnp.where(duplicate[..., None], dup_boxes, rand_boxes))
    noise_codes = jnp.where(duplicate[..., None], src_codes, rand_codes)

    boxes = jnp.where(is_real[..., None], boxes, noise_boxes)
    codes = jnp.where(is_real[..., None], mask_codes, noise_codes)
    class_ids = jnp.where(is_real, classes, self.num_classes)

    box_tok = self.box_start + self._to_bins(boxes)
    class_tok = self.class_start + jnp.clip(class_ids, 0, self.num_classes)
    code_tok = self.mask_start + jnp.clip(codes, 0, self.num_codes - 1)
    targets = jnp.concatenate([box_tok, class_tok[..., None], code_tok], -1)

    # Input class corruption (Pix2Seq's 'rand_n_fake_cls').
    in_class = jnp.where(
        u_corrupt < self.corrupt_class_prob,
        jnp.where(u_fake < self.fake_class_prob, self.num_classes,
                  _randint(u_class, self.num_classes)),
        class_ids)
    inputs = targets.at[..., 4].set(self.class_start + in_class)

    real = is_real[..., None].astype(jnp.float32)
    weights = jnp.concatenate([
        jnp.broadcast_to(self.box_weight * real, (b, n, 4)),
        jnp.full((b, n, 1), self.class_weight, jnp.float32),
        jnp.broadcast_to(self.mask_weight * real, (b, n, self.mask_len)),
    ], axis=-1)
    flat = lambda x: x.reshape(b, self.seq_len)
    return {"targets": flat(targets).astype(jnp.int32),
            "inputs": flat(inputs).astype(jnp.int32),
            "weights": flat(weights).astype(jnp.float32),
            "objects": jnp.where(is_real, order, -1).astype(jnp.int32)}

  def parse(self, tokens, logits, mask_temperature=1.0):
    """Sampled sequences -> objects (jittable).

    Args:
      tokens: int (B, seq_len) sampled vocabulary ids, each within its
        position's slice (`position_ranges`).
      logits: float (B, seq_len, V) the LM's logits at those positions; V is
        the whole vocabulary (>= offset + vocab_size).
      mask_temperature: the mask-code softmax is taken of mask_temperature *
        logits (AiT's soft tokens; larger is harder).

    Returns:
      dict with "boxes" float32 (B, max_instances, 4) normalised [ymin,
      xmin, ymax, xmax] dequantised, ends in order; "classes" int32
      (B, max_instances), -1 where the noise class was sampled; "scores"
      float32 (B, max_instances), the sampled class's probability under a
      softmax over the class slice, 0 for noise; "mask_codes" int32
      (B, max_instances, mask_len), the sampled mask codes; "mask_probs"
      float32 (B, max_instances, mask_len, num_codes).
    """
    tokens = jnp.asarray(tokens)
    b = tokens.shape[0]
    n, k = self.max_instances, self.object_len
    if tokens.shape != (b, self.seq_len) or logits.shape[:2] != tokens.shape:
      raise ValueError(f"Expected tokens (B, {self.seq_len}) and logits "
                       f"(B, {self.seq_len}, V); got {tokens.shape} and "
                       f"{logits.shape}.")
    if logits.shape[-1] < self.offset + self.vocab_size:
      raise ValueError(f"logits have {logits.shape[-1]} entries; the codec "
                       f"needs ids up to {self.offset + self.vocab_size}.")
    tokens = tokens.reshape(b, n, k)
    logits = logits.reshape(b, n, k, logits.shape[-1])

    bins = jnp.clip(tokens[..., :4] - self.box_start, 0, self.num_bins - 1)
    coords = bins.astype(jnp.float32) / (self.num_bins - 1)
    y0 = jnp.minimum(coords[..., 0], coords[..., 2])
    y1 = jnp.maximum(coords[..., 0], coords[..., 2])
    x0 = jnp.minimum(coords[..., 1], coords[..., 3])
    x1 = jnp.maximum(coords[..., 1], coords[..., 3])
    boxes = jnp.stack([y0, x0, y1, x1], axis=-1)

    cls = jnp.clip(tokens[..., 4] - self.class_start, 0, self.num_classes)
    is_noise = cls == self.num_classes
    class_probs = jax.nn.softmax(
        logits[..., 4, self.class_start:self.mask_start].astype(jnp.float32),
        axis=-1)
    score = jnp.take_along_axis(class_probs, cls[..., None], axis=-1)[..., 0]

    mask_logits = logits[..., 5:, self.mask_start:self.mask_start +
                         self.num_codes].astype(jnp.float32)
    return {"boxes": boxes,
            "classes": jnp.where(is_noise, -1, cls).astype(jnp.int32),
            "scores": jnp.where(is_noise, 0.0, score),
            "mask_codes": jnp.clip(tokens[..., 5:] - self.mask_start, 0,
                                   self.num_codes - 1).astype(jnp.int32),
            "mask_probs": jax.nn.softmax(mask_temperature * mask_logits,
                                         axis=-1)}


def _truncated_normal(u):
  """Uniform [0, 1) -> standard normal truncated to [-2, 2] (inverse CDF)."""
  lo, hi = ndtr(-2.0), ndtr(2.0)
  return jnp.clip(ndtri(lo + u * (hi - lo)), -2.0, 2.0)


def _randint(u, n):
  """Uniform [0, 1) -> int32 uniform in [0, n)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _paste_weights(lo, hi, size, crop):
  """(..., size, crop) bilinear weights taking crop rows to image rows.

  Image row k (centre k + 0.5) inside [lo, hi) (pixels) reads the crop at
  u = (k + 0.5 - lo) * crop / (hi - lo) - 0.5, clamped to the crop's edge
  rows; rows outside the box get all-zero weights.
  """
  centre = jnp.arange(size, dtype=jnp.float32) + 0.5
  lo, hi = lo[..., None], hi[..., None]
  u = (centre - lo) * crop / jnp.maximum(hi - lo, 1e-6) - 0.5
  u = jnp.clip(u, 0.0, crop - 1.0)
  i0 = jnp.floor(u)
  frac = (u - i0)[..., None]
  i0 = i0.astype(jnp.int32)
  i1 = jnp.minimum(i0 + 1, crop - 1)
  w = (jax.nn.one_hot(i0, crop) * (1.0 - frac) +
       jax.nn.one_hot(i1, crop) * frac)
  inside = (centre >= lo) & (centre < hi)
  return w * inside[..., None]


def paste_masks(masks, boxes, size):
  """Pastes box crops back into the image: the inverse of the crop op.

  Args:
    masks: float (B, M, S, S) crops in [0, 1] (the detokenized masks).
    boxes: float (B, M, 4) normalised [ymin, xmin, ymax, xmax].
    size: (H, W) of the output.

  Returns:
    float32 (B, M, H, W): bilinear (align_corners=False, edge-clamped)
    resampling of each crop onto its box; pixels whose centre lies outside
    the box, [ymin*H, ymax*H) x [xmin*W, xmax*W), are 0.
  """
  masks = jnp.asarray(masks, jnp.float32)
  boxes = jnp.asarray(boxes, jnp.float32)
  h, w = size
  s_y, s_x = masks.shape[-2:]
  wy = _paste_weights(boxes[..., 0] * h, boxes[..., 2] * h, h, s_y)
  wx = _paste_weights(boxes[..., 1] * w, boxes[..., 3] * w, w, s_x)
  # Bilinear resampling is separable: rows then columns.
  return jnp.einsum("...ys,...st,...xt->...yx", wy, masks, wx)
