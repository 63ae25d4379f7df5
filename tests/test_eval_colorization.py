"""Tests of evaluators/colorization.py: PSNR by hand, the Fréchet distance
against closed forms, and the evaluator on synthetic_scenes/tiny."""
import jax
import numpy as np
import pytest
import scipy.linalg
import tensorflow_datasets as tfds

from evaluators import colorization
from uvimx import sharding
import test_inception


def test_psnr_hand_computed():
  gt = np.zeros((2, 2, 2, 3), np.float32)
  pred = gt.copy()
  # Image 0: every value off by 0.1: MSE 0.01, PSNR 10 log10(2^2 / 0.01)
  # = 10 log10(400) = 26.02 dB. Image 1: 3 of 12 values off by 1: MSE 1/4,
  # PSNR 10 log10(16) = 12.04 dB.
  pred[0] += 0.1
  pred[1, 0, 0] = 1
  np.testing.assert_allclose(colorization.psnr(gt, pred),
                             [10 * np.log10(400), 10 * np.log10(16)],
                             rtol=1e-6)
  # uint8 images have the range 255: an error of 5 everywhere gives
  # 10 log10(255^2 / 25) = 20 log10(51) = 34.15 dB.
  gt8 = np.full((1, 2, 2, 3), 100, np.uint8)
  np.testing.assert_allclose(colorization.psnr(gt8, gt8 + 5),
                             [20 * np.log10(51)])
  # Exact: infinite, without a warning.
  assert colorization.psnr(gt, gt).tolist() == [np.inf, np.inf]
  with pytest.raises(ValueError, match="both be uint8"):
    colorization.psnr(gt8, gt[:1])
  with pytest.raises(ValueError, match="resized to the label size"):
    colorization.psnr(gt, pred[:, :1])


def _diagonal_fid(mu1, a, mu2, b):
  """Closed form for commuting covariances with eigenvalues a and b (in a
  common eigenbasis): |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
  return np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)


MU1, A = np.array([0.0, 0.0, 0.0]), np.array([1.0, 4.0, 0.25])
MU2, B = np.array([1.0, -0.5, 0.25]), np.array([2.0, 1.0, 0.25])
# A common rotation: the covariances are not diagonal but still commute.
Q = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]


def test_frechet_distance_commuting_closed_form():
  exact = _diagonal_fid(MU1, A, MU2, B)                       # 2.4841
  fid = colorization.frechet_distance(MU1, np.diag(A), MU2, np.diag(B))
  assert fid == pytest.approx(exact, rel=1e-12)
  # Rotating both Gaussians changes no distance.
  rotated = colorization.frechet_distance(
      Q @ MU1, Q @ np.diag(A) @ Q.T, Q @ MU2, Q @ np.diag(B) @ Q.T)
  assert rotated == pytest.approx(exact, rel=1e-12)
  assert colorization.frechet_distance(
      MU2, np.diag(B), MU1, np.diag(A)) == pytest.approx(exact, rel=1e-12)
  assert colorization.frechet_distance(
      MU1, np.diag(A), MU1, np.diag(A)) == pytest.approx(0, abs=1e-12)


def test_frechet_distance_non_commuting():
  # 2x2: the square root of M = S1 S2 has eigenvalues sqrt(l1), sqrt(l2), so
  # tr sqrt(M) = sqrt(l1 + l2 + 2 sqrt(l1 l2)) = sqrt(tr M + 2 sqrt(det M)).
  s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
  s2 = np.array([[1.0, -0.7], [-0.7, 3.0]])
  assert not np.allclose(s1 @ s2, s2 @ s1)
  mu1, mu2 = np.array([0.5, 1.0]), np.array([-1.0, 0.0])
  m = s1 @ s2
  exact = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
           - 2 * np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m))))
  assert colorization.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
      exact, rel=1e-12)
  # Larger: scipy's sqrtm (what pytorch-fid uses) on full-rank covariances.
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 40, 16)) @ rng.normal(size=(2, 16, 16))
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  reference = (np.trace(s1) + np.trace(s2)
               - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
  assert colorization.frechet_distance(
      np.zeros(16), s1, np.zeros(16), s2) == pytest.approx(reference,
                                                           rel=1e-8)


def test_frechet_distance_singular_covariances():
  # 20 samples in 64 dimensions, as an eval split smaller than the 2048
  # Inception features: rank-19 covariances. tr sqrt(S1 S2) is then the sum
  # of the singular values of S1^(1/2) S2^(1/2) (the nuclear norm), with the
  # roots from an SVD of the centred samples: S = U diag(s^2 / (n-1)) U^T.
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(2, 20, 64))

  def cov_and_root(z):
    u, s, _ = np.linalg.svd((z - z.mean(0)).T, full_matrices=False)
    return (u * s ** 2) @ u.T / 19, (u * s) @ u.T / np.sqrt(19)

  (s1, r1), (s2, r2) = cov_and_root(x), cov_and_root(y)
  trace_sqrt = np.linalg.svd(r1 @ r2, compute_uv=False).sum()
  exact = np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
  # The 45 zero eigenvalues, computed as roundoff of about 1e-15, would add
  # 1e-6 through their square roots if not zeroed.
  got = colorization.frechet_distance(np.zeros(64), s1, np.zeros(64), s2)
  assert got == pytest.approx(exact, rel=1e-12)
  assert colorization.frechet_distance(
      np.zeros(64), s1, np.zeros(64), s1) == pytest.approx(0, abs=1e-12)


def test_sample_statistics_converge_to_the_closed_form():
  # n = 10^6 samples of each rotated Gaussian, through `gaussian_fit` from
  # the sums as the evaluator accumulates them. By the delta method the
  # estimate's standard deviation is sqrt(v / n) with
  # v = 4 dmu^T (S1 + S2) dmu                    (the mean term)
  #   + sum_i 2 a_i^2 (1 - sqrt(b_i / a_i))^2    (sample variances of x)
  #   + sum_i 2 b_i^2 (1 - sqrt(a_i / b_i))^2    (and of y),
  # here 0.0053 (measured over 200 seeds at n = 20000: 0.040 against the
  # predicted 0.0375); its bias, tr(S1 + S2) / n and O(d^2 / n) from the
  # covariances, is < 1e-4. Hence 4 standard deviations as tolerance, 0.85%
  # of the distance 2.48.
  n = 10 ** 6
  dmu = MU1 - MU2
  v = (4 * dmu @ ((A + B) * dmu)
       + np.sum(2 * A ** 2 * (1 - np.sqrt(B / A)) ** 2)
       + np.sum(2 * B ** 2 * (1 - np.sqrt(A / B)) ** 2))
  std = np.sqrt(v / n)
  assert 0.005 < std < 0.0055
  rng = np.random.default_rng(2)
  fits = []
  for mu, var in ((MU1, A), (MU2, B)):
    z = (rng.normal(size=(n, 3)) * np.sqrt(var) + mu) @ Q.T
    fits.append(colorization.gaussian_fit(n, z.sum(0), z.T @ z))
  np.testing.assert_allclose(fits[0][1], Q @ np.diag(A) @ Q.T, atol=0.02)
  got = colorization.frechet_distance(*fits[0], *fits[1])
  assert got == pytest.approx(_diagonal_fid(MU1, A, MU2, B), abs=4 * std)


def test_gaussian_fit_and_errors():
  z = np.random.default_rng(3).normal(size=(50, 4))
  mu, sigma = colorization.gaussian_fit(50, z.sum(0), z.T @ z)
  np.testing.assert_allclose(mu, z.mean(0))
  np.testing.assert_allclose(sigma, np.cov(z, rowvar=False))
  with pytest.raises(ValueError, match="2 or more"):
    colorization.gaussian_fit(1, z[0], np.outer(z[0], z[0]))
  with pytest.raises(ValueError, match="one D"):
    colorization.frechet_distance(mu, sigma, mu[:3], sigma)


PP = ("decode|value_range(-1, 1)|copy('image', 'labels')|"
      "rgb_to_grayscale_to_rgb|keep('image', 'labels')")


def _kwargs(data_dir, num_devices=8, batch_size=16):
  # 24 validation examples in batches of 16 on 8 devices: the second batch
  # has 8 all-zero padding examples.
  return dict(mesh=sharding.make_mesh([("data", -1)],
                                      devices=jax.devices()[:num_devices]),
              data=dict(name="synthetic_scenes/tiny", split="validation",
                        data_dir=data_dir), pp=PP, batch_size=batch_size)


def test_evaluator_psnr(tfds_data_dir):
  evaluator = colorization.Evaluator(
      lambda v, b: {"color": b["labels"] * 0.5}, **_kwargs(tfds_data_dir))
  got = dict(evaluator.run({}))
  assert list(got) == ["psnr"]
  # Independently, from the raw uint8 images: the error is half the label,
  # x / 2 with x = image / 127.5 - 1; PSNR per image, then the mean.
  ds = tfds.builder("synthetic_scenes/tiny", data_dir=tfds_data_dir
                    ).as_dataset(split="validation")
  images = np.stack([ex["image"] for ex in tfds.as_numpy(ds)]) / 127.5 - 1
  assert len(images) == 24
  mse = np.mean((images / 2) ** 2, axis=(1, 2, 3))
  assert got["psnr"] == pytest.approx(np.mean(10 * np.log10(4 / mse)),
                                      rel=1e-5)


def test_evaluator_fid(tfds_data_dir, tmp_path):
  weights = tmp_path / "inception.npz"
  test_inception.write_random_weights(weights)
  # One device, so that a batch of 2 can be split over the mesh.
  evaluator = colorization.Evaluator(
      lambda v, b: {}, **_kwargs(tfds_data_dir, num_devices=1, batch_size=2),
      inception_weights=str(weights))
  rng = np.random.default_rng(0)
  labels = rng.uniform(-1, 1, size=(4, 8, 8, 3)).astype(np.float32)
  preds = labels + rng.normal(scale=0.5, size=labels.shape).astype(np.float32)
  # Two batches; the masked example (its prediction far off) must not count.
  mask = np.array([True, True, True, False])
  preds[3] = 1
  evaluator.predictions = lambda variables: iter([
      ({"labels": labels[i:i + 2], "_mask": mask[i:i + 2]},
       {"color": preds[i:i + 2]}) for i in (0, 2)])
  # Record what goes through the network: per batch the predictions, then
  # the labels.
  calls, inception_fn = [], evaluator.inception

  def recording(variables, images):
    features = inception_fn(variables, images)
    calls.append((np.asarray(images), np.asarray(features, np.float64)))
    return features

  evaluator.inception = recording
  got = dict(evaluator.run({}))
  assert len(calls) == 4
  # Predictions clipped to [-1, 1], as saved images would be.
  np.testing.assert_array_equal(
      np.concatenate([calls[0][0], calls[2][0]]), np.clip(preds, -1, 1))
  np.testing.assert_array_equal(
      np.concatenate([calls[1][0], calls[3][0]]), labels)
  # Independently of the running sums and of 2048x2048 algebra, from the 3
  # real examples' features: with centred features Z1, Z2 (3 x 2048) and
  # S_i = Z_i^T Z_i / 2, the non-zero eigenvalues of S1 S2 are those of
  # (Z1 Z2^T / 2)(Z1 Z2^T / 2)^T, so tr sqrt(S1 S2) is the sum of the
  # singular values of the 3x3 Z1 Z2^T / 2.
  pred_f, label_f = (np.concatenate([calls[i][1], calls[i + 2][1]])[:3]
                     for i in (0, 1))
  z1, z2 = pred_f - pred_f.mean(0), label_f - label_f.mean(0)
  expected = (np.sum((pred_f.mean(0) - label_f.mean(0)) ** 2)
              + (np.sum(z1 ** 2) + np.sum(z2 ** 2)) / 2
              - 2 * np.linalg.svd(z1 @ z2.T / 2, compute_uv=False).sum())
  assert got["fid"] == pytest.approx(expected, rel=1e-6)
  assert got["fid"] > 0
  assert got["psnr"] == pytest.approx(
      colorization.psnr(labels[:3], preds[:3]).mean())


def test_evaluator_missing_weights(tfds_data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="inception_weights"):
    colorization.Evaluator(lambda v, b: {}, **_kwargs(tfds_data_dir),
                           inception_weights=str(tmp_path / "nope.npz"))


def test_evaluator_uint8_images_as_their_floats(tfds_data_dir, tmp_path):
  # uint8 x is the float x / 127.5 - 1 for both metrics: the same images
  # reach Inception, so the same FID (uint8 images used to reach it clipped
  # to a constant 1).
  weights = tmp_path / "inception.npz"
  test_inception.write_random_weights(weights)
  rng = np.random.default_rng(0)
  labels8 = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
  preds8 = 255 - labels8

  evaluator = colorization.Evaluator(
      lambda v, b: {}, **_kwargs(tfds_data_dir, num_devices=1, batch_size=2),
      inception_weights=str(weights))
  inception_fn = evaluator.inception

  def evaluate(labels, preds):
    """The metrics and the images that went through Inception."""
    evaluator.predictions = lambda variables: iter([
        ({"labels": labels[i:i + 2], "_mask": np.array([True, True])},
         {"color": preds[i:i + 2]}) for i in (0, 2)])
    calls = []

    def recording(variables, images):
      calls.append(np.asarray(images))
      return inception_fn(variables, images)

    evaluator.inception = recording
    return dict(evaluator.run({})), calls

  got8, calls8 = evaluate(labels8, preds8)
  got, calls = evaluate(labels8 / 127.5 - 1, preds8 / 127.5 - 1)
  assert len(calls8) == len(calls) == 4
  for images8, images in zip(calls8, calls):
    np.testing.assert_allclose(images8, images, rtol=0, atol=1e-7)
  # Label images span [-1, 1], not a constant.
  assert calls8[1].min() == -1 and calls8[1].max() == 1
  assert got8["fid"] == pytest.approx(got["fid"], rel=1e-6)
  assert got8["fid"] > 0
  # PSNR by hand: |error| = |255 - 2 x| / 127.5 in [-1, 1] units.
  mse = np.mean(((255 - 2 * labels8.astype(np.float64)) / 127.5) ** 2,
                axis=(1, 2, 3))
  assert got8["psnr"] == pytest.approx(np.mean(10 * np.log10(4 / mse)))
  assert got8["psnr"] == pytest.approx(got["psnr"])
