"""AiT instance sequences: build / parse round trip, augmentation, pasting."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvimx import decode
from uvimx.models import lm
from uvimx.tasks.instance_sequence import InstanceSequence
from uvimx.tasks.instance_sequence import paste_masks


def _objects(seed, b, m, codec, num_real):
  """Random ground truth: `num_real[i]` objects in random slots of row i."""
  rs = np.random.RandomState(seed)
  a, c = rs.uniform(0, 1, (2, b, m, 2))
  # [ymin, xmin, ymax, xmax].
  boxes = np.concatenate([np.minimum(a, c), np.maximum(a, c)], -1)
  boxes = boxes.astype(np.float32)
  classes = np.full((b, m), -1, np.int32)
  for i, k in enumerate(num_real):
    slots = rs.choice(m, k, replace=False)
    classes[i, slots] = rs.randint(0, codec.num_classes, k)
  codes = rs.randint(0, codec.num_codes, (b, m, codec.mask_len))
  return boxes, classes, codes.astype(np.int32)


# Jitted once per codec, results as numpy: op-by-op JAX (indexing included)
# is slower than compiling once.
def _numpy_out(fn):
  return lambda *a, **k: jax.device_get(fn(*a, **k))


@functools.lru_cache(maxsize=None)
def _jit_build(codec):
  return _numpy_out(jax.jit(codec.build))


@functools.lru_cache(maxsize=None)
def _jit_parse(codec):
  return _numpy_out(jax.jit(codec.parse))


_paste = _numpy_out(jax.jit(paste_masks, static_argnums=2))


def _one_hot_logits(targets, vocab):
  return 10.0 * np.eye(vocab, dtype=np.float32)[np.asarray(targets)]


def test_vocabulary_layout_and_position_ranges():
  codec = InstanceSequence(num_bins=10, num_classes=3, num_codes=7,
                           mask_len=4, max_instances=2, offset=5)
  assert codec.vocab_size == 10 + 4 + 7
  assert codec.object_len == 9 and codec.seq_len == 18
  ranges = codec.position_ranges()
  assert ranges.dtype == np.int32 and ranges.shape == (18, 2)
  expected = [[5, 15]] * 4 + [[15, 19]] + [[19, 26]] * 4
  np.testing.assert_array_equal(ranges, np.array(expected * 2))
  assert codec.noise_token == 18
  # Sampling draws real classes only (15..17), as AiT.
  expected[4] = [15, 18]
  np.testing.assert_array_equal(codec.sampling_ranges(),
                                np.array(expected * 2))


# Most tests share one codec and batch shape (B=4, M=7), to compile once.
CODEC = InstanceSequence(num_bins=64, num_classes=4, num_codes=32,
                         mask_len=4, max_instances=6, offset=3)


def test_build_parse_round_trip():
  codec = CODEC
  # Row 0: 4 objects; row 1: none; row 2: 6 (full); row 3: 7, one too many.
  boxes, classes, codes = _objects(0, 4, 7, codec, [4, 0, 6, 7])
  seq = _jit_build(codec)(jax.random.key(0), boxes, classes, codes)
  assert seq["targets"].shape == seq["inputs"].shape == (4, codec.seq_len)
  assert seq["targets"].dtype == seq["inputs"].dtype == np.int32
  assert seq["weights"].dtype == np.float32
  vocab = codec.offset + codec.vocab_size + 2  # The LM's vocabulary is wider.
  out = _jit_parse(codec)(seq["targets"],
                          _one_hot_logits(seq["targets"], vocab))
  n = codec.max_instances
  assert out["boxes"].shape == (4, n, 4)
  assert out["mask_probs"].shape == (4, n, codec.mask_len, codec.num_codes)
  for i in range(4):
    real = np.flatnonzero(classes[i] >= 0)
    k = min(len(real), n)
    # The real objects come first, each exactly once (in some order; beyond
    # max_instances some are left out): match each parsed object with its
    # input by the mask codes (random, distinct).
    got_codes = np.argmax(out["mask_probs"][i, :k], -1)
    match = [int(np.flatnonzero((codes[i, real] == c).all(-1))[0])
             for c in got_codes]
    assert len(set(match)) == k
    if len(real) <= n:
      assert sorted(match) == list(range(k))
    src = real[match]
    # "objects" names the same input slots, and -1 for the noise objects.
    np.testing.assert_array_equal(seq["objects"][i, :k], src)
    assert (seq["objects"][i, k:] == -1).all()
    np.testing.assert_array_equal(out["classes"][i, :k], classes[i, src])
    # Dequantised boxes lie within half a step of the coordinates.
    err = np.abs(out["boxes"][i, :k] - boxes[i, src])
    assert (err <= 0.5 / (codec.num_bins - 1) + 1e-6).all()
    # The rest are noise objects: noise class target, parsed as class -1
    # with score 0, weight only on the class token.
    assert (out["classes"][i, k:] == -1).all()
    assert (out["scores"][i, k:] == 0).all()
    w = seq["weights"][i].reshape(n, codec.object_len)
    t = seq["targets"][i].reshape(n, codec.object_len)
    assert (t[k:, 4] == codec.noise_token).all()
    np.testing.assert_array_equal(w[k:, :4], 0)
    np.testing.assert_array_equal(w[k:, 5:], 0)
    np.testing.assert_array_equal(w[:, 4], codec.class_weight)
    np.testing.assert_array_equal(w[:k, :4], codec.box_weight)
    np.testing.assert_allclose(w[:k, 5:], codec.mask_weight)
    # Scores of real objects: the softmax of a one-hot logit of 10 among
    # the num_classes + 1 class tokens.
    np.testing.assert_allclose(
        out["scores"][i, :k], np.exp(10) / (np.exp(10) + codec.num_classes),
        rtol=1e-5)
    # Noise boxes are valid boxes in [0, 1] with ordered ends.
    nb = out["boxes"][i, k:]
    assert (nb >= 0).all() and (nb <= 1).all()
    assert (nb[:, 0] <= nb[:, 2]).all() and (nb[:, 1] <= nb[:, 3]).all()
  # Every target, and every input, lies in its position's slice.
  ranges = codec.position_ranges()
  for key in ("targets", "inputs"):
    assert (seq[key] >= ranges[:, 0]).all() and (seq[key] < ranges[:, 1]).all()


def test_order_is_random_across_rngs_and_examples():
  boxes, classes, codes = _objects(1, 1, 7, CODEC, [6])
  # Four copies of one example with 6 objects (720 orders).
  rep = lambda x: np.repeat(x, 4, axis=0)
  build = _jit_build(CODEC)
  first = build(jax.random.key(0), rep(boxes), rep(classes), rep(codes))
  second = build(jax.random.key(1), rep(boxes), rep(classes), rep(codes))
  t1 = first["targets"]
  assert len({tuple(r) for r in t1}) > 1
  assert not np.array_equal(t1, second["targets"])
  # Same rng, same sequences.
  again = build(jax.random.key(0), rep(boxes), rep(classes), rep(codes))
  np.testing.assert_array_equal(t1, again["targets"])


def test_noise_objects_duplicate_or_random():
  codec = InstanceSequence(num_bins=1000, num_classes=3, num_codes=128,
                           mask_len=4, max_instances=8, jitter_std=0.05)
  b = 68
  # One real object per example, a 0.2 x 0.3 box, codes 0..3; the last 4
  # examples have none.
  boxes = np.tile(np.array([0.4, 0.3, 0.6, 0.6], np.float32), (b, 2, 1))
  classes = np.tile(np.array([1, -1], np.int32), (b, 1))
  classes[64:] = -1
  codes = np.tile(np.arange(4, dtype=np.int32), (b, 2, 1))
  seq = _jit_build(codec)(jax.random.key(3), boxes, classes, codes,
                          noise_mask_codes=np.full(4, 127, np.int32))
  t = seq["targets"].reshape(b, 8, codec.object_len)
  # The noise objects of the examples with one object.
  noise = t[:64, 1:]
  noise_codes = noise[..., 5:] - codec.mask_start
  is_dup = (noise_codes == np.arange(4)).all(-1)
  is_rand = (noise_codes == 127).all(-1)
  assert (is_dup | is_rand).all()
  # About half are duplicates: 448 draws, std of the share 0.024.
  assert abs(is_dup.mean() - 0.5) < 0.1
  # Duplicates lie within 2 * jitter_std of the box size (and one bin).
  dup = (noise[..., :4][is_dup] - codec.box_start) / 999
  limit = 2 * 0.05 * np.array([0.2, 0.3, 0.2, 0.3]) + 1 / 999
  assert (np.abs(dup - boxes[0, 0]) <= limit).all()
  assert np.abs(dup - boxes[0, 0]).max() > 0.002  # They do move.
  # Random boxes are spread over the image.
  rand = noise[..., :4][is_rand] / 1000
  assert rand.min() < 0.1 and rand.max() > 0.9
  # Examples without objects: only noise objects, all random boxes.
  assert (t[64:, :, 4] == codec.noise_token).all()
  assert (t[64:, :, 5:] - codec.mask_start == 127).all()
  np.testing.assert_array_equal(seq["weights"][64:].reshape(4, 8, -1)[..., 5:],
                                0)


@pytest.mark.parametrize("prob,fake", [(0.5, 0.0), (1.0, 0.5)])
def test_input_class_corruption_rate(prob, fake):
  k = 4
  codec = InstanceSequence(num_bins=8, num_classes=k, num_codes=8,
                           mask_len=1, max_instances=8,
                           corrupt_class_prob=prob, fake_class_prob=fake)
  b = 512
  boxes, classes, codes = _objects(5, b, 8, codec, [4] * b)
  seq = _jit_build(codec)(jax.random.key(6), boxes, classes, codes)
  inp, tgt = seq["inputs"], seq["targets"]
  pos = np.arange(codec.seq_len) % codec.object_len == 4
  # Only class tokens differ.
  np.testing.assert_array_equal(inp[:, ~pos], tgt[:, ~pos])
  ic = inp[:, pos] - codec.class_start
  tc = tgt[:, pos] - codec.class_start
  real = tc < k
  # 2048 real and 2048 noise class tokens: the std of each rate below is
  # at most 0.011; the tolerance is 0.04.
  # A real class token changes if replaced by the noise class, or by a
  # random class other than its own: prob * (fake + (1 - fake) * (k-1)/k).
  expected = prob * (fake + (1 - fake) * (k - 1) / k)
  assert abs((ic != tc)[real].mean() - expected) < 0.04
  assert abs((ic == k)[real].mean() - prob * fake) < 0.04
  # A noise class token changes unless replaced by the noise class, and
  # then to a uniformly random real class.
  assert abs((ic != tc)[~real].mean() - prob * (1 - fake)) < 0.04
  counts = np.bincount(ic[(ic != tc) & ~real], minlength=k + 1)
  assert counts[k] == 0
  np.testing.assert_allclose(counts[:k] / counts.sum(), 1 / k, atol=0.05)


def test_offset_shifts_everything():
  shifted = CODEC  # offset 3
  base = dataclasses.replace(CODEC, offset=0)
  boxes, classes, codes = _objects(7, 4, 7, base, [2, 1, 0, 5])
  s0 = _jit_build(base)(jax.random.key(8), boxes, classes, codes)
  s1 = _jit_build(shifted)(jax.random.key(8), boxes, classes, codes)
  np.testing.assert_array_equal(s1["targets"], s0["targets"] + 3)
  np.testing.assert_array_equal(s1["inputs"], s0["inputs"] + 3)
  np.testing.assert_array_equal(s1["weights"], s0["weights"])
  np.testing.assert_array_equal(shifted.position_ranges(),
                                base.position_ranges() + 3)
  # The shifted codec reads the same logits 3 ids further on.
  logits = np.random.RandomState(9).normal(
      size=(4, base.seq_len, base.vocab_size + 3)).astype(np.float32)
  p0 = _jit_parse(base)(s0["targets"], logits[..., 3:])
  p1 = _jit_parse(shifted)(s1["targets"], logits)
  for key in p0:
    np.testing.assert_allclose(p1[key], p0[key], rtol=1e-6)


def test_sampled_objects_are_scored_against_noise():
  """Sampling leaves noise out of the class slot; the score counts it."""
  codec = InstanceSequence(num_bins=4, num_classes=2, num_codes=3,
                           mask_len=1, max_instances=2, offset=1)
  vocab = codec.offset + codec.vocab_size
  model = lm.Model(patches={"size": (4, 4)}, num_heads=2, num_layers=1,
                   mlp_dim=32, emb_dim=16, vocab_size=vocab,
                   seq_len=codec.seq_len, input_size=(8, 8),
                   posemb_type="learn")
  images = jnp.zeros((1, 8, 8, 3))
  params = model.init(jax.random.key(0), images,
                      jnp.zeros((1, codec.seq_len), jnp.int32))["params"]
  # The logits kernel starts at zero: every position's logits are this bias,
  # 5 for noise and 0 for the two classes.
  bias = params["decoder"]["LogitsDense"]["bias"]
  params["decoder"]["LogitsDense"]["bias"] = bias.at[codec.noise_token].set(5)
  tokens, _, logits = decode.sample(
      model, params, images, jnp.arange(1),
      position_ranges=codec.sampling_ranges(), with_logits=True)
  out = codec.parse(tokens[:, 0], logits[:, 0])
  np.testing.assert_array_equal(out["classes"], [[0, 0]])
  np.testing.assert_allclose(out["scores"], [[1 / (2 + np.exp(5))] * 2],
                             rtol=1e-5)


def test_parse_scores_and_mask_probs_by_hand():
  codec = InstanceSequence(num_bins=4, num_classes=2, num_codes=3,
                           mask_len=1, max_instances=2, offset=1)
  # Vocabulary: 0 other task; boxes 1..4; classes 5, 6, noise 7; codes 8..10.
  tokens = np.array([[4, 1, 2, 3, 6, 9,   # object 0: class 1
                      2, 2, 1, 1, 7, 8]])  # object 1: noise
  logits = np.zeros((1, 12, 12), np.float32)
  logits[0, 4, 5:8] = [0.0, 1.0, 2.0]
  logits[0, 4, 0] = 50.0  # Outside the class slice: ignored.
  logits[0, 5, 8:11] = [1.0, 2.0, 0.0]
  logits[0, 11, 8:11] = [0.0, 0.0, 3.0]  # Object 1 sampled code 0, not 2.
  out = _jit_parse(codec)(tokens, logits, mask_temperature=2.0)
  e = np.exp([0.0, 1.0, 2.0])
  np.testing.assert_allclose(out["scores"], [[e[1] / e.sum(), 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(out["classes"], [[1, -1]])
  # The sampled mask codes (tokens 9 and 8 of the codes 8..10), not the
  # argmax of their logits.
  np.testing.assert_array_equal(out["mask_codes"], [[[1], [0]]])
  m = np.exp([2.0, 4.0, 0.0])
  np.testing.assert_allclose(out["mask_probs"][0, 0, 0], m / m.sum(),
                             rtol=1e-6)
  # Tokens (3, 0, 1, 2) -> k / 3, ymin/ymax put in order.
  np.testing.assert_allclose(out["boxes"][0, 0], [1 / 3, 0, 1, 2 / 3])
  np.testing.assert_allclose(out["boxes"][0, 1], [0, 0, 1 / 3, 1 / 3])


def test_pixel_edge_boxes_round_trip_exactly():
  """num_bins = image size + 1: boxes on pixel edges come back exactly."""
  codec = InstanceSequence(num_bins=65, num_classes=4, num_codes=8,
                           mask_len=1, max_instances=2)
  boxes = np.array([[[3, 0, 17, 64], [40, 22, 41, 23]]], np.float32) / 64
  seq = codec.build(jax.random.key(0), boxes, np.array([[0, 1]]),
                    np.zeros((1, 2, 1), np.int32))
  out = codec.parse(seq["targets"],
                    _one_hot_logits(seq["targets"], codec.vocab_size))
  order = np.asarray(seq["objects"][0])
  np.testing.assert_array_equal(np.asarray(out["boxes"][0]) * 64,
                                boxes[0, order] * 64)


def test_paste_all_ones_crop_fills_exactly_the_box():
  h, w = 12, 16
  boxes = np.array([[[2 / h, 3 / w, 7 / h, 11 / w],
                     [0.0, 0.0, 1.0, 1.0]]], np.float32)
  out = _paste(np.ones((1, 2, 5, 5)), boxes,
                                               (h, w))
  assert out.shape == (1, 2, h, w)
  expected = np.zeros((h, w))
  expected[2:7, 3:11] = 1
  np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)
  np.testing.assert_allclose(out[0, 1], 1.0, atol=1e-6)


def _crop_reference(mask, box, s):
  """Numpy half-pixel crop: crop pixel i samples y = y0 + (i + .5) * h / s."""
  h, w = mask.shape

  def sample_points(lo, hi, size):
    p = lo * size + (np.arange(s) + 0.5) * (hi - lo) * size / s - 0.5
    p = np.clip(p, 0, size - 1)  # Pixel-index coordinates, edge clamped.
    i0 = np.floor(p).astype(int)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, p - i0

  y0, y1, fy = sample_points(box[0], box[2], h)
  x0, x1, fx = sample_points(box[1], box[3], w)
  fy, fx = fy[:, None], fx[None, :]
  return ((1 - fy) * (1 - fx) * mask[np.ix_(y0, x0)] +
          (1 - fy) * fx * mask[np.ix_(y0, x1)] +
          fy * (1 - fx) * mask[np.ix_(y1, x0)] +
          fy * fx * mask[np.ix_(y1, x1)])


def _round_trip(mask, box, s=64):
  crop = (_crop_reference(mask.astype(np.float64), box, s) >= 0.5)
  pasted = _paste(crop[None, None].astype(np.float32),
                       np.array(box, np.float32)[None, None], mask.shape)
  return np.asarray(pasted[0, 0]) >= 0.5


def test_crop_paste_round_trip():
  h, w = 40, 56
  yy, xx = np.mgrid[:h, :w] + 0.5
  # A rectangle inside a box on pixel edges: exact.
  rect = np.zeros((h, w), bool)
  rect[10:22, 15:41] = True
  box = [6 / h, 12 / w, 30 / h, 44 / w]
  np.testing.assert_array_equal(_round_trip(rect, box), rect)
  # An ellipse in its (non-pixel-aligned) bounding box: IoU > 0.9.
  cy, cx, ry, rx = 19.3, 27.6, 12.4, 17.8
  ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
  box = [(cy - ry) / h, (cx - rx) / w, (cy + ry) / h, (cx + rx) / w]
  back = _round_trip(ellipse, box)
  iou = (back & ellipse).sum() / (back | ellipse).sum()
  assert iou > 0.9, iou


def test_crop_paste_round_trip_is_exact_for_a_linear_ramp():
  # Bilinear sampling reproduces a linear function exactly, so a ramp
  # cropped (not thresholded) and pasted back is the ramp again wherever
  # the paste needs no edge clamping: this pins the half-pixel alignment of
  # the two directions to each other, to float precision.
  h, w = 24, 32
  yy, xx = np.mgrid[:h, :w] + 0.5
  ramp = 0.01 * yy + 0.02 * xx
  for box, s in [([3.3 / h, 5.6 / w, 20.1 / h, 29.4 / w], 64),  # Upsampled.
                 ([2.0 / h, 4.0 / w, 22.0 / h, 28.0 / w], 8)]:  # Downsampled.
    crop = _crop_reference(ramp, box, s)
    pasted = _paste(crop[None, None].astype(np.float32),
                    np.array(box, np.float32)[None, None], (h, w))[0, 0]
    # Interior: crop coordinates u in [0, s - 1], no clamping.
    uy = (yy - box[0] * h) * s / ((box[2] - box[0]) * h) - 0.5
    ux = (xx - box[1] * w) * s / ((box[3] - box[1]) * w) - 0.5
    interior = (uy >= 0) & (uy <= s - 1) & (ux >= 0) & (ux <= s - 1)
    assert interior.sum() > 100
    np.testing.assert_allclose(pasted[interior], ramp[interior], atol=1e-5)
    # Outside the box: 0.
    inside = ((yy >= box[0] * h) & (yy < box[2] * h) &
              (xx >= box[1] * w) & (xx < box[3] * w))
    assert (pasted[~inside] == 0).all() and (pasted[inside] > 0).all()
