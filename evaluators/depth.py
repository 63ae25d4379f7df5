"""Monocular depth metrics (Eigen et al., NIPS 2014), averaged over images.

As in the AdaBins / BTS NYU depth v2 evaluation, every metric is computed per
image over its valid pixels and then averaged over the images of the split (so
each image weighs the same, whatever its number of valid pixels). Depths are
in metres; `rmse` is in metres, `silog` is 100x a log-space standard deviation
(see `per_image_metrics`), the other metrics are unitless; `delta*` are
fractions in [0, 1].

Non-finite predictions are replaced as in AdaBins' evaluation before the
clipping: NaN and -inf by min_depth, +inf by max_depth, so that one bad pixel
cannot make rmse, abs_rel or silog NaN.

Predictions of another size than the labels (e.g. a 512x512 model output
against NYU's 426x560 Eigen-cropped ground truth) are resized to the label
size by nearest neighbour with `resize_pred="nearest"`, as UViM does: the
metrics are then computed at the ground truth's own resolution.

  config.evals.depth = dict(type="depth", data=..., pp=..., batch_size=64,
                            max_depth=10.0, crop=(45, 471, 41, 601))
"""
import numpy as np

from evaluators import common
from pp import ops_dense

# The Eigen crop of a 480x640 NYU depth v2 frame, rows 45:471 and columns
# 41:601, as (top, bottom, left, right) with exclusive ends: pass
# `crop=NYU_CROP` for the standard NYU evaluation of full-frame predictions.
NYU_CROP = ops_dense.EIGEN_CROP

METRICS = ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "silog",
           "delta1", "delta2", "delta3")


def _check_range(min_depth, max_depth):
  # Predictions are clipped to min_depth and then go through logs and ratios.
  if not 0 < min_depth < max_depth:
    raise ValueError(f"Depth evaluation needs 0 < min_depth < max_depth, got "
                     f"min_depth={min_depth}, max_depth={max_depth}.")


def per_image_metrics(gt, pred, *, min_depth=1e-3, max_depth=10.0, crop=None):
  """Every metric of every image, over the image's valid pixels.

  A pixel is valid if min_depth < gt < max_depth and it lies inside `crop`.
  Predictions are first clipped to [min_depth, max_depth], after NaN and
  -inf become min_depth and +inf max_depth (AdaBins). With n valid
  pixels, d = log(pred) - log(gt) (natural log) and means over valid pixels:
    rmse = sqrt(mean((gt - pred)^2))     abs_rel = mean(|gt - pred| / gt)
    sq_rel = mean((gt - pred)^2 / gt)    rmse_log = sqrt(mean(d^2))
    log10 = mean(|log10(gt) - log10(pred)|)
    silog = 100 * sqrt(mean(d^2) - mean(d)^2)   (AdaBins' and BTS' silog: the
      population standard deviation of d, times 100, i.e. the scale-invariant
      error with lambda = 1; the variance is clipped at 0 against roundoff)
    delta_i = fraction of pixels with max(gt / pred, pred / gt) < 1.25^i.

  Args:
    gt: (B, H, W) ground-truth depth in metres; invalid pixels (e.g. 0 for
      "not measured") fall outside (min_depth, max_depth).
    pred: (B, H, W) predicted depth in metres.
    min_depth: lower bound of valid depths and of predictions (> 0).
    max_depth: upper bound of valid depths and of predictions.
    crop: optional (top, bottom, left, right), exclusive ends: only pixels in
      rows top:bottom and columns left:right count, e.g. `NYU_CROP`.

  Returns:
    ({metric name: (B,) float64}, (B,) bool: whether the image has a valid
    pixel). The metrics of an image without one are meaningless.
  """
  _check_range(min_depth, max_depth)
  gt = np.asarray(gt, np.float64)
  pred = np.asarray(pred, np.float64)
  if gt.ndim != 3 or gt.shape != pred.shape:
    raise ValueError(
        f"Depth labels {gt.shape} and predictions {pred.shape} must be "
        "(B, H, W) maps of the same size; predictions of another size must be "
        "resized to the label size by the task's predict fn, or by the depth "
        "evaluator's resize_pred='nearest'.")
  valid = (gt > min_depth) & (gt < max_depth)
  if crop is not None:
    top, bottom, left, right = crop
    height, width = gt.shape[1:]
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
      raise ValueError(f"Depth crop (top, bottom, left, right) = {crop} does "
                       f"not fit in {height}x{width} maps.")
    inside = np.zeros(gt.shape[1:], bool)
    inside[top:bottom, left:right] = True
    valid &= inside
  n = valid.sum(axis=(1, 2))
  pred = np.clip(np.nan_to_num(pred, nan=min_depth, posinf=max_depth,
                               neginf=min_depth), min_depth, max_depth)
  # Invalid pixels (gt maybe 0) are masked out of every mean; a dummy gt of
  # 1 keeps the logs and ratios there finite and warning-free.
  gt = np.where(valid, gt, 1.0)

  def mean(x):
    return np.where(valid, x, 0.0).sum(axis=(1, 2)) / np.maximum(n, 1)

  sq_err = (gt - pred) ** 2
  d = np.log(pred) - np.log(gt)
  ratio = np.maximum(gt / pred, pred / gt)
  metrics = {
      "rmse": np.sqrt(mean(sq_err)),
      "abs_rel": mean(np.abs(gt - pred) / gt),
      "sq_rel": mean(sq_err / gt),
      "rmse_log": np.sqrt(mean(d ** 2)),
      "log10": mean(np.abs(np.log10(gt) - np.log10(pred))),
      "silog": 100 * np.sqrt(np.maximum(mean(d ** 2) - mean(d) ** 2, 0.0)),
  }
  for i in (1, 2, 3):
    metrics[f"delta{i}"] = mean(ratio < 1.25 ** i)
  return metrics, n > 0


def depth_metrics(gt, pred, *, min_depth=1e-3, max_depth=10.0, crop=None):
  """The metrics of `per_image_metrics`, averaged over the images.

  Images without a valid pixel have no metrics and are left out of the
  average.

  Args:
    gt: (B, H, W) ground-truth depth in metres.
    pred: (B, H, W) predicted depth in metres.
    min_depth: see `per_image_metrics`.
    max_depth: see `per_image_metrics`.
    crop: see `per_image_metrics`.

  Returns:
    {metric name: float}.
  """
  metrics, has_valid = per_image_metrics(
      gt, pred, min_depth=min_depth, max_depth=max_depth, crop=crop)
  if not has_valid.any():
    raise ValueError(f"No image has a valid depth pixel (min_depth "
                     f"{min_depth} < gt < max_depth {max_depth}, in the crop).")
  return {k: float(v[has_valid].mean()) for k, v in metrics.items()}


def resize_nearest(x, size):
  """(B, h, w, ...) maps resized to (B, *size, ...) by nearest neighbour.

  With half-pixel centres (output pixel i reads input pixel
  floor((i + 0.5) * h / H)), as jax.image.resize and tf.image.resize do, so
  that a prediction is resized like the labels of a `resize(..., method=
  'nearest')` pp.
  """
  (height, width), (h, w) = size, x.shape[1:3]
  rows = np.floor((np.arange(height) + 0.5) * h / height).astype(int)
  cols = np.floor((np.arange(width) + 0.5) * w / width).astype(int)
  return x[:, rows[:, None], cols]


class Evaluator:
  """Depth metrics of a predict fn over a whole split, averaged per image."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size,
               pred_key="depth", label_key="depth", min_depth=1e-3,
               max_depth=10.0, crop=None, resize_pred=None):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> outputs; `outputs[pred_key]` is the
        (B, H, W) or (B, H, W, 1) depth in metres, at the label size unless
        `resize_pred` is set.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string giving `label_key`, (H, W, 1) or (H, W) depth in metres.
      batch_size: global eval batch size.
      pred_key: the depth key of the predict fn's outputs.
      label_key: the depth key of the batch.
      min_depth: see `per_image_metrics`.
      max_depth: see `per_image_metrics`.
      crop: see `per_image_metrics`.
      resize_pred: None: predictions must have the label size; "nearest":
        they are resized to it by `resize_nearest` (UViM's NYU evaluation,
        at the Eigen crop's 426x560).
    """
    _check_range(min_depth, max_depth)
    if resize_pred not in (None, "nearest"):
      raise ValueError(f"Depth evaluator resize_pred={resize_pred!r}: use "
                       "None (predictions at the label size) or 'nearest'.")
    self.resize_pred = resize_pred
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)
    self.pred_key = pred_key
    self.label_key = label_key
    self.metric_kwargs = dict(min_depth=min_depth, max_depth=max_depth,
                              crop=crop)

  def run(self, variables):
    """Yields (metric name, value) for every name in `METRICS`."""
    # Per-metric sums over images, then the number of images.
    sums = np.zeros(len(METRICS) + 1)
    for batch, outputs in self.predictions(variables):
      gt = common.get(batch, self.label_key, "eval batch (label_key)")
      pred = common.get(outputs, self.pred_key, "predict fn outputs (pred_key)")
      gt, pred = common.squeeze_map(gt), common.squeeze_map(pred)
      if self.resize_pred:
        pred = resize_nearest(pred, gt.shape[1:3])
      metrics, has_valid = per_image_metrics(gt, pred, **self.metric_kwargs)
      # Padding examples are all-zero, hence without valid pixels, but the
      # mask, not that coincidence, is what keeps them out.
      counted = batch["_mask"] & has_valid
      sums += [*(metrics[k][counted].sum() for k in METRICS), counted.sum()]
    sums = common.process_sum(sums)
    if not sums[-1]:
      raise ValueError(
          f"No image of the split has a valid depth pixel (min_depth "
          f"{self.metric_kwargs['min_depth']} < gt < max_depth "
          f"{self.metric_kwargs['max_depth']}, in the crop); are the labels "
          "in metres?")
    for name, total in zip(METRICS, sums):
      yield name, float(total / sums[-1])
