"""Colorization: PSNR and, given Inception weights, FID.

Images are floats in [-1, 1] or uint8 in [0, 255]; both metrics first map
uint8 ones to [-1, 1] by x / 127.5 - 1 (`to_unit_range`), so that either kind
gives the same numbers.

PSNR as big_vision's UViM colorization evaluator: per image over all its
pixels and channels, 10 log10(range^2 / MSE), then averaged over the images
(in dB). An exact prediction has an infinite PSNR, and so has the mean.

FID (Heusel et al., NeurIPS 2017) between the predictions and the labels of
the split: the Fréchet distance between Gaussians fitted to their 2048-d
Inception-v3 pool features (`uvimx/models/inception.py`, the FID network,
whose weights the user provides: nothing is downloaded). Images are resized
to 299x299 as pytorch-fid does, and predictions clipped to [-1, 1] first, as
saving them as images would. (big_vision's ColTran FID compares 5000
ImageNet colorizations with 5000 other real images instead.) FID estimates
are biased upwards, the more so the fewer the images: compare FIDs of equal
numbers of images only.

  config.evals.color = dict(type="colorization", data=..., pp=...,
                            batch_size=64,
                            inception_weights="/path/inception_fid.npz")
"""
import jax
import numpy as np

from evaluators import common
from uvimx import sharding
from uvimx.models import inception


def to_unit_range(images):
  """Images as float64 in [-1, 1]: uint8 ones mapped by x / 127.5 - 1."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images / 127.5 - 1
  return images.astype(np.float64)


def psnr(gt, pred):
  """Per-image PSNR (dB) of images in [-1, 1] (range 2) or uint8 (255).

  Args:
    gt: (B, H, W, C) labels, floats in [-1, 1] or uint8.
    pred: (B, H, W, C) predictions of the same shape and kind.

  Returns:
    float64 (B,).
  """
  gt, pred = np.asarray(gt), np.asarray(pred)
  if gt.shape != pred.shape or gt.ndim != 4:
    raise ValueError(
        f"Colorization labels {gt.shape} and predictions {pred.shape} must be "
        "(B, H, W, C) images of the same size; predictions of another size "
        "must be resized to the label size by the task's predict fn.")
  kinds = {x.dtype == np.uint8 for x in (gt, pred)}
  if len(kinds) > 1:
    raise ValueError(f"Labels ({gt.dtype}) and predictions ({pred.dtype}) "
                     "must both be uint8 or both be floats in [-1, 1].")
  # In [-1, 1], of range 2: the PSNR of uint8 images with range 255.
  mse = np.mean((to_unit_range(gt) - to_unit_range(pred)) ** 2,
                axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    return 10 * np.log10(2.0 ** 2 / mse)


def gaussian_fit(count, total, outer):
  """Mean and (unbiased) covariance from the sums of features.

  Args:
    count: number of feature vectors n (>= 2).
    total: (D,) their sum.
    outer: (D, D) the sum of their outer products x x^T.

  Returns:
    (mu, sigma): (D,) and (D, D) float64.
  """
  if count < 2:
    raise ValueError(f"A covariance needs 2 or more feature vectors, got "
                     f"{count}.")
  mu = np.asarray(total, np.float64) / count
  sigma = (np.asarray(outer, np.float64) - count * np.outer(mu, mu)) / (
      count - 1)
  return mu, sigma


def _sqrt_eigenvalues(w):
  """Square roots of a PSD matrix's computed eigenvalues, roundoff zeroed.

  Eigenvalues below np.linalg.matrix_rank's tolerance (largest * size *
  machine epsilon) are zero up to roundoff; their square roots would add
  about sqrt(epsilon) each, e.g. 1e-4 in all to a FID from 1000 images'
  2048-d features, with 1000+ zero eigenvalues.
  """
  tolerance = max(w.max(), 0) * len(w) * np.finfo(w.dtype).eps
  return np.sqrt(np.where(w > tolerance, w, 0))


def _sqrtm_psd(sigma):
  """Symmetric square root of a symmetric PSD matrix."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * _sqrt_eigenvalues(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).
  sigma1 sigma2 = A (A sigma2 A) A^-1 with A = sigma1^(1/2) (if invertible,
  else by continuity), so the trace of its square root is the sum of the
  square roots of the eigenvalues of the symmetric PSD A sigma2 A: found by
  eigh, stable also for the singular covariances of fewer samples than
  dimensions, with no complex roundoff as scipy.linalg.sqrtm can give.

  Args:
    mu1: (D,) mean.
    sigma1: (D, D) symmetric PSD covariance.
    mu2: (D,) mean.
    sigma2: (D, D) symmetric PSD covariance.

  Returns:
    The distance, a float.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1 = np.asarray(sigma1, np.float64)
  sigma2 = np.asarray(sigma2, np.float64)
  d = mu1.shape[0]
  if (mu1.shape, mu2.shape, sigma1.shape, sigma2.shape) != (
      (d,), (d,), (d, d), (d, d)):
    raise ValueError(f"Means (D,) and covariances (D, D) of one D, got "
                     f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, "
                     f"{sigma2.shape}.")
  root1 = _sqrtm_psd(sigma1)
  product = root1 @ sigma2 @ root1
  trace_sqrt = _sqrt_eigenvalues(
      np.linalg.eigvalsh((product + product.T) / 2)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2 * trace_sqrt)


class Evaluator:
  """PSNR (and FID) of a predict fn's colorizations over a whole split."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size,
               pred_key="color", label_key="labels", inception_weights=None):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> outputs; `outputs[pred_key]` is the
        (B, H, W, 3) RGB prediction in [-1, 1] (or uint8, like the labels),
        at the label size.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string giving `label_key`, the (H, W, 3) RGB image in [-1, 1]
        (or uint8).
      batch_size: global eval batch size.
      pred_key: the image key of the predict fn's outputs.
      label_key: the image key of the batch.
      inception_weights: path of the FID Inception-v3 weights (.npz, see
        `uvimx/models/inception.py`); None: no FID.
    """
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)
    self.pred_key = pred_key
    self.label_key = label_key
    self.mesh = mesh
    self.inception = None
    if inception_weights:
      # Loaded (or failing) at startup; replicated on every device, while
      # images are split over them like the eval batch.
      self.inception_variables = jax.device_put(
          inception.load_variables(inception_weights),
          sharding.replicated(mesh))
      self.inception = jax.jit(inception.InceptionV3().apply,
                               out_shardings=sharding.batch_sharding(mesh))

  def _features(self, images, real):
    """Inception pool features (float64) of the real images of a batch."""
    images = np.clip(to_unit_range(images), -1, 1).astype(np.float32)
    features = self.inception(self.inception_variables,
                              sharding.put_batch(images, self.mesh))
    return sharding.to_host(features)[real].astype(np.float64)

  def run(self, variables):
    """Yields ("psnr", mean dB) and, with Inception weights, ("fid", .)."""
    psnr_sum, count = 0.0, 0
    if self.inception is not None:
      # Per set (predictions, labels): the sums of x and of x x^T.
      dim = inception.NUM_FEATURES
      total, outer = np.zeros((2, dim)), np.zeros((2, dim, dim))
    for batch, outputs in self.predictions(variables):
      gt = common.get(batch, self.label_key, "eval batch (label_key)")
      pred = common.get(outputs, self.pred_key, "predict fn outputs (pred_key)")
      real = batch["_mask"]
      psnr_sum += psnr(gt[real], pred[real]).sum()
      count += real.sum()
      if self.inception is not None:
        for i, images in enumerate((pred, gt)):
          features = self._features(images, real)
          total[i] += features.sum(axis=0)
          outer[i] += features.T @ features
    psnr_sum, count = common.process_sum(np.array([psnr_sum, count]))
    yield "psnr", float(psnr_sum / count)
    if self.inception is not None:
      total, outer = common.process_sum(total), common.process_sum(outer)
      yield "fid", frechet_distance(*gaussian_fit(count, total[0], outer[0]),
                                    *gaussian_fit(count, total[1], outer[1]))
