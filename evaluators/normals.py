"""Surface normal metrics (Fouhey et al., ICCV 2013), pooled over pixels.

As in the NYU depth v2 normals evaluations (Bae et al., Eftekhar et al., and
PolyMaX), the angular error between predicted and ground-truth normal is
pooled over all valid pixels of the split: `mean`, `median` and `rmse` of the
angle, in degrees, and `within_t`, the percentage of pixels with an angle
below t degrees. A pixel is valid where its ground truth is not the zero
vector (how `decode_normals_png` marks missing normals). A predicted normal
with a NaN or infinite component (e.g. a zero vector renormalised) counts as
the worst angle, 180 degrees, in every metric.

  config.evals.normals = dict(type="normals", data=..., pp=..., batch_size=64)
"""
import numpy as np

from evaluators import common

THRESHOLDS = (11.25, 22.5, 30)  # Degrees; names "within_11.25" ...
METRICS = ("mean", "median", "rmse", *(f"within_{t}" for t in THRESHOLDS))
# The Evaluator's median is that of a histogram of the angles over [0, 180]
# with this bin width in degrees: it is within BIN / 2 of the exact one.
BIN = 0.01
_NUM_BINS = round(180 / BIN)


def angles(gt, pred):
  """Angle between normals in degrees, exact also for nearly parallel ones.

  atan2(|a x b|, a . b), in float64: unlike arccos of the cosine, it keeps
  full relative precision for small angles, and it is the same for any
  positive scale of either vector, so `pred` needs no normalising. A zero
  prediction has no direction: it counts as 90 degrees (the mean angle of a
  random direction), never as correct. A non-finite one (a NaN or infinite
  component) counts as 180 degrees, the worst angle: NaN angles would drop
  out of the counts below thresholds and make the means NaN.

  Args:
    gt: (..., 3) ground-truth normals.
    pred: (..., 3) predicted normals, of any length.

  Returns:
    (...) float64 angles in [0, 180], never NaN.
  """
  gt = np.asarray(gt, np.float64)
  pred = np.asarray(pred, np.float64)
  if gt.shape[-1:] != (3,) or gt.shape != pred.shape:
    raise ValueError(
        f"Normal labels {gt.shape} and predictions {pred.shape} must be "
        "(..., 3) maps of the same size; predictions of another size must be "
        "resized to the label size by the task's predict fn.")
  finite = np.isfinite(pred).all(axis=-1)
  # Zeroed so that inf * 0 in the products below raises no warning.
  pred = np.where(finite[..., None], pred, 0.0)
  sin = np.linalg.norm(np.cross(pred, gt), axis=-1)
  cos = np.sum(pred * gt, axis=-1)
  zero = ~pred.any(axis=-1)
  angle = np.where(zero, 90.0, np.degrees(np.arctan2(sin, cos)))
  return np.where(finite, angle, 180.0)


def _valid(gt, valid):
  """Pixels with a non-zero ground truth (and `valid`, if given)."""
  has_normal = np.asarray(gt).any(axis=-1)
  return has_normal if valid is None else has_normal & valid


def _sums(angle):
  """[sum, sum of squares, counts below each threshold, count] of angles."""
  return np.array([angle.sum(), (angle ** 2).sum(),
                   *((angle < t).sum() for t in THRESHOLDS), angle.size],
                  np.float64)


def _metrics(sums, median):
  """The metrics from `_sums` of all valid angles and their median."""
  total, total_sq, *within, n = sums
  return {"mean": total / n, "median": median, "rmse": np.sqrt(total_sq / n),
          **{f"within_{t}": 100 * c / n for t, c in zip(THRESHOLDS, within)}}


def normal_metrics(gt, pred, valid=None):
  """Angular error metrics pooled over all valid pixels.

  Args:
    gt: (..., 3) ground-truth unit normals; zero vectors mark pixels without
      a normal, which are left out.
    pred: (..., 3) predicted normals, of any length; non-finite ones count
      as 180 degrees.
    valid: optional (...) bool: only these pixels count.

  Returns:
    {metric name: float}: "mean", "median", "rmse" of the angle in degrees,
    and "within_11.25", "within_22.5", "within_30", percentages of pixels.
  """
  angle = angles(gt, pred)[_valid(gt, valid)]
  if not angle.size:
    raise ValueError("No pixel has a ground-truth normal (all are the zero "
                     "vector or not `valid`).")
  return {k: float(v) for k, v in _metrics(_sums(angle),
                                           np.median(angle)).items()}


def _histogram_median(counts):
  """Median of values histogrammed into `counts` (BIN-wide bins from 0).

  Like np.median, the mean of the two middle values for an even count, each
  taken as the centre of its bin: hence within BIN / 2 of the exact median.
  """
  cumulative = np.cumsum(counts)
  n = cumulative[-1]
  middle = np.searchsorted(cumulative, [(n - 1) // 2 + 1, n // 2 + 1])
  return float(np.mean(middle + 0.5) * BIN)


class Evaluator:
  """Surface normal metrics of a predict fn, pooled over a whole split."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size,
               pred_key="normals", label_key="normals"):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> outputs; `outputs[pred_key]` is the
        (B, H, W, 3) predicted normals, at the label size.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string giving `label_key`, (H, W, 3) unit normals, zero where
        missing (e.g. `decode_normals_png`).
      batch_size: global eval batch size.
      pred_key: the normals key of the predict fn's outputs.
      label_key: the normals key of the batch.
    """
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)
    self.pred_key = pred_key
    self.label_key = label_key

  def run(self, variables):
    """Yields (metric name, value) for every name in `METRICS`."""
    # A split of NYU size has ~2e8 pixels: too many angles to keep for an
    # exact median, so the angles go into a fine histogram instead.
    sums = np.zeros(len(THRESHOLDS) + 3)
    counts = np.zeros(_NUM_BINS, np.int64)
    for batch, outputs in self.predictions(variables):
      gt = common.get(batch, self.label_key, "eval batch (label_key)")
      pred = common.get(outputs, self.pred_key, "predict fn outputs (pred_key)")
      mask = batch["_mask"].reshape((-1,) + (1,) * (gt.ndim - 2))
      angle = angles(gt, pred)[_valid(gt, mask)]
      sums += _sums(angle)
      # 180 degrees exactly goes into the last bin.
      bins = np.minimum((angle / BIN).astype(np.int64), _NUM_BINS - 1)
      counts += np.bincount(bins, minlength=_NUM_BINS)
    sums = common.process_sum(sums)
    counts = common.process_sum(counts)
    if not sums[-1]:
      raise ValueError("No pixel of the split has a ground-truth normal (all "
                       "are the zero vector); does the pp decode the normals "
                       "(decode_normals_png)?")
    for name, value in _metrics(sums, _histogram_median(counts)).items():
      yield name, float(value)
