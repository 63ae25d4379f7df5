"""Losses on dense (B, H, W[, C]) maps with validity masks, per example.

The PolyMaX cluster-prediction head (Yang et al., 2024, "Implementation
Details") trains depth with the scale-invariant log error plus ViP-DeepLab's
relative squared error plus MegaDepth's multi-scale gradient matching loss
(NYU depth v2), or with the robust Charbonnier loss (Taskonomy, whose depths
reach 128 m with many outliers); surface normals with a plain L2 loss; and
semantic segmentation with kMaX-DeepLab's cross-entropy and dice losses.

Every loss takes a bool `valid` mask of shape (B, H, W) and returns (B,)
values, one per example, for the caller to average. Below, n is the number of
valid pixels of an example and mean(.) is the mean over them. Invalid pixels
may hold anything (0 or huge depths, zero normals): they are replaced by
harmless values before any log or division, so they change neither the losses
nor their gradients. An example without a valid pixel has loss 0 and gradient
0.

  silog         10 * sqrt(mean(g^2) - lam * mean(g)^2), g = log(pred) -
                log(gt): Eigen et al., NIPS 2014, with the weighting and scale
                of BTS and AdaBins (lam = 0.85, x10).
  relative_squared_error
                sqrt(mean(((pred - gt) / gt)^2)): ViP-DeepLab's (Qiao et al.,
                CVPR 2021) second depth term.
  gradient_matching
                sum_k sum |grad R_k| / n_k, R = log(pred) - log(gt), R_k: R
                subsampled by 2^k: MegaDepth (Li & Snavely, CVPR 2018).
  charbonnier   mean(sqrt(((pred - gt) / c)^2 + 1) - 1): Barron's general
                robust loss (CVPR 2019) with alpha = 1.
  normals_l2    mean(|pred - gt|^2) of 3-vectors: PolyMaX's normals loss.
  normals_angular
                mean(angle(pred, gt)), in radians.
  dice          mean over classes of 1 - (2 sum p t + eps) / (sum p + sum t +
                eps): the soft dice loss (Milletari et al., 2016) that
                kMaX-DeepLab adds to the cross-entropy.
  softmax_xent  mean(-log softmax(logits)[label]).
"""
import jax.numpy as jnp

from uvimx.tasks import common

_AXES = (1, 2)  # The pixel axes of a (B, H, W) map.


def _fill(x, valid, value):
  """`x` at valid pixels, `value` elsewhere (`valid` broadcasts over C)."""
  if x.ndim > valid.ndim:
    valid = valid[..., None]
  return jnp.where(valid, x, value)


def _sqrt(x):
  """sqrt(x) of x >= 0 with gradient 0 (rather than inf) at x = 0."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _log_ratio(pred, gt, valid):
  """log(pred) - log(gt) at valid pixels, 0 elsewhere."""
  return jnp.log(_fill(pred, valid, 1.0)) - jnp.log(_fill(gt, valid, 1.0))


def silog(pred, gt, valid, lam=0.85, scale=10.0):
  """Scale-invariant log loss: scale * sqrt(mean(g^2) - lam * mean(g)^2).

  With g = log(pred) - log(gt). lam = 1 makes it invariant to a global scale
  of pred (it is then the standard deviation of g); lam < 1 keeps some of the
  absolute scale error. Computed as sqrt(mean((g - mean(g))^2) + (1 - lam) *
  mean(g)^2), the same value, which is >= 0 without cancellation.

  Args:
    pred: (B, H, W) predicted depth, > 0 at valid pixels.
    gt: (B, H, W) ground-truth depth, > 0 at valid pixels.
    valid: (B, H, W) bool, the pixels that count.
    lam: weight of the squared mean, in [0, 1].
    scale: factor of the result (BTS and AdaBins use 10).

  Returns:
    (B,) losses.
  """
  if not 0 <= lam <= 1:  # Above 1 the root's argument can go negative.
    raise ValueError(f"silog's lam weighs the squared mean, in [0, 1]; got "
                     f"{lam}.")
  g = _log_ratio(pred, gt, valid)
  mean = common.masked_mean(g, valid, axis=_AXES)
  var = common.masked_mean((g - mean[:, None, None]) ** 2, valid, axis=_AXES)
  return scale * _sqrt(var + (1.0 - lam) * mean ** 2)


def relative_squared_error(pred, gt, valid):
  """Root mean squared relative error, sqrt(mean(((pred - gt) / gt)^2)).

  Args:
    pred: (B, H, W) predicted depth.
    gt: (B, H, W) ground-truth depth, > 0 at valid pixels.
    valid: (B, H, W) bool, the pixels that count.

  Returns:
    (B,) losses.
  """
  gt = _fill(gt, valid, 1.0)
  rel = (_fill(pred, valid, 1.0) - gt) / gt
  return _sqrt(common.masked_mean(rel ** 2, valid, axis=_AXES))


def gradient_matching(pred, gt, valid, scales=4):
  """MegaDepth's multi-scale scale-invariant gradient matching loss.

  With R = log(pred) - log(gt) and, at scale k, R_k and valid_k the maps
  subsampled to every 2^k-th row and column: the sum over k < scales of
  (sum |R_k(x+1, y) - R_k(x, y)| + sum |R_k(x, y+1) - R_k(x, y)|) / n_k,
  where the sums run over neighbour pairs whose pixels are both valid and n_k
  is the number of valid pixels of valid_k. A global scale of pred shifts R
  by a constant and leaves the loss unchanged.

  Args:
    pred: (B, H, W) predicted depth, > 0 at valid pixels.
    gt: (B, H, W) ground-truth depth, > 0 at valid pixels.
    valid: (B, H, W) bool, the pixels that count.
    scales: number of scales.

  Returns:
    (B,) losses.
  """
  r = _log_ratio(pred, gt, valid)
  total = 0.0
  for k in range(scales):
    step = 2 ** k
    rk, vk = r[:, ::step, ::step], valid[:, ::step, ::step]
    dx = jnp.where(vk[:, :, 1:] & vk[:, :, :-1],
                   jnp.abs(rk[:, :, 1:] - rk[:, :, :-1]), 0.0)
    dy = jnp.where(vk[:, 1:] & vk[:, :-1], jnp.abs(rk[:, 1:] - rk[:, :-1]),
                   0.0)
    total += (dx.sum(axis=_AXES) + dy.sum(axis=_AXES)) / jnp.maximum(
        vk.sum(axis=_AXES), 1)
  return total


def charbonnier(pred, gt, valid, c=1.0):
  """Robust Charbonnier loss, mean(sqrt(((pred - gt) / c)^2 + 1) - 1).

  Barron's general robust loss with alpha = 1: about ((pred - gt) / c)^2 / 2
  for errors well below c and |pred - gt| / c - 1 above, so outliers pull
  linearly, not quadratically. The default c = 1 (one metre for depths in
  metres) keeps the typical errors of indoor depth (tenths of a metre) in the
  quadratic regime, counts the metres-off outliers of Taskonomy's long range
  linearly, and leaves the loss in the units of the maps, so that learning
  rates tuned for L2/L1 losses still fit.

  Args:
    pred: (B, H, W) predictions.
    gt: (B, H, W) targets.
    valid: (B, H, W) bool, the pixels that count.
    c: the error scale at which the loss turns from quadratic to linear.

  Returns:
    (B,) losses.
  """
  sq = ((_fill(pred, valid, 0.0) - _fill(gt, valid, 0.0)) / c) ** 2
  # sqrt(sq + 1) - 1 without its cancellation for small errors (in float32,
  # a 1e-2 error would lose 3 of its 7 digits).
  return common.masked_mean(sq / (jnp.sqrt(sq + 1.0) + 1.0), valid,
                            axis=_AXES)


def normals_l2(pred, gt, valid):
  """Mean squared L2 distance of normal vectors, mean(|pred - gt|^2).

  Args:
    pred: (B, H, W, 3) predicted normals (not necessarily unit).
    gt: (B, H, W, 3) ground-truth normals.
    valid: (B, H, W) bool, the pixels that count.

  Returns:
    (B,) losses.
  """
  sq = jnp.sum((_fill(pred, valid, 0.0) - _fill(gt, valid, 0.0)) ** 2, -1)
  return common.masked_mean(sq, valid, axis=_AXES)


def normals_angular(pred, gt, valid):
  """Mean angle in radians between predicted and ground-truth normals.

  atan2(|a x b|, a . b) is exact for nearly parallel vectors, where arccos of
  the cosine loses precision, and needs no normalisation: it is the same for
  any positive scale of a or b. A zero prediction has no direction; it counts
  as pi / 2 (the mean angle of a random direction), with gradient 0.

  Args:
    pred: (B, H, W, 3) predicted normals (any length).
    gt: (B, H, W, 3) ground-truth normals, non-zero at valid pixels.
    valid: (B, H, W) bool, the pixels that count.

  Returns:
    (B,) losses.
  """
  a = _fill(pred, valid, 1.0)
  b = _fill(gt, valid, 1.0)
  sin = _sqrt(jnp.sum(jnp.cross(a, b) ** 2, axis=-1))
  cos = jnp.sum(a * b, axis=-1)
  defined = (sin > 0) | (cos != 0)
  angle = jnp.where(defined, jnp.arctan2(sin, jnp.where(defined, cos, 1.0)),
                    jnp.pi / 2)
  return common.masked_mean(angle, valid, axis=_AXES)


def dice(probs, targets, valid, eps=1.0):
  """Soft dice loss, averaged over all classes.

  Per class, over the valid pixels: 1 - (2 sum p t + eps) / (sum p + sum t +
  eps). The mean is over all K classes, not only those present: the loss is
  then a smooth function of `probs` (no class set that flips with the data)
  and of static shape under jit. With eps = 1 a class absent from the target
  costs sum p / (sum p + 1), i.e. about 0 if it is not predicted either and
  up to 1 for predicted mass, so it still penalises false positives.

  Args:
    probs: (B, H, W, K) class probabilities.
    targets: (B, H, W, K) one-hot (or soft) targets.
    valid: (B, H, W) bool, the pixels that count.
    eps: smoothing added to numerator and denominator.

  Returns:
    (B,) losses.
  """
  p = _fill(probs, valid, 0.0)
  t = _fill(targets, valid, 0.0)
  overlap = jnp.sum(p * t, axis=_AXES)
  total = jnp.sum(p, axis=_AXES) + jnp.sum(t, axis=_AXES)
  return jnp.mean(1.0 - (2.0 * overlap + eps) / (total + eps), axis=-1)


def softmax_xent(logits, labels, valid):
  """Mean softmax cross-entropy of a dense map over its valid pixels.

  `common.softmax_xent` in the (B, H, W, K) layout: its patch layout has
  the classes on axis -2, so H plays num_patches and W patch_pixels.

  Args:
    logits: (B, H, W, K).
    labels: int (B, H, W), in [0, K) at valid pixels.
    valid: (B, H, W) bool, the pixels that count.

  Returns:
    (B,) losses.
  """
  return common.softmax_xent(jnp.swapaxes(logits, -1, -2), labels, valid)
