"""AiT's conv VQ-VAE: shapes, the transposed convolution, EMA, soft decoding."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvimx.models import conv_vqvae
from uvimx.models import vq

TINY = dict(width=2, num_res_blocks=1, code_dim=4, num_codes=8)
LABELS = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))


@pytest.fixture(scope="module")
def tiny():
  """A tiny model (4x4 codes of LABELS) and its variables, shared.

  Initialised with the "rbg" PRNG: XLA:CPU compiles the default threefry
  of every parameter's initializer several times slower.
  """
  model = conv_vqvae.Model(**TINY, downsample=8, decay=0.9)
  return model, jax.jit(model.init)(jax.random.key(0, impl="rbg"), LABELS)


def _apply(model, variables, *args, **kwargs):
  """`model.apply`, jitted: eager flax compiles op by op, slowly."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


@pytest.mark.parametrize("downsample", [8, 16, 32])
def test_shapes(downsample):
  labels = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  model = conv_vqvae.Model(**TINY, channels=3, downsample=downsample)
  variables = jax.eval_shape(model.init, jax.random.key(0), labels)
  grid = (64 // downsample, 96 // downsample)
  reconstruction, aux = jax.eval_shape(model.apply, variables, labels)
  assert reconstruction.shape == labels.shape
  assert aux["z"].shape == (2, *grid, 4)
  codes = jax.eval_shape(
      functools.partial(model.apply, method=model.encode), variables, labels)
  assert codes.shape == (2, *grid) and codes.dtype == jnp.int32
  assert jax.eval_shape(functools.partial(model.apply, method=model.decode),
                        variables, codes).shape == labels.shape
  # log2(downsample) stride-2 layers per side, widths 2, 4, 8, ... and back.
  n = downsample.bit_length() - 1
  encoder, decoder = (variables["params"][k] for k in ("encoder", "decoder"))
  assert [encoder[f"down{i}"]["kernel"].shape for i in range(n)] == [
      (4, 4, 3 if i == 0 else 2 ** i, 2 ** (i + 1)) for i in range(n)]
  assert [decoder[f"up{i}"]["kernel"].shape[-1] for i in range(n)] == [
      2 ** (n - i) for i in range(n)]
  assert f"down{n}" not in encoder and f"up{n}" not in decoder
  assert variables["state"]["counts"].shape == (8,)
  assert variables["state"]["sums"].shape == (8, 4)


def test_bad_sizes_are_clear_errors():
  labels = jax.ShapeDtypeStruct((1, 48, 48, 1), jnp.float32)
  for downsample, error in ((12, "power of two"),
                            (32, "not divisible by downsample=32")):
    with pytest.raises(ValueError, match=error):
      jax.eval_shape(conv_vqvae.Model(**TINY, downsample=downsample).init,
                     jax.random.key(0), labels)


def test_up_conv_is_a_stride_2_transposed_convolution():
  """Against the definition, PyTorch's ConvTranspose2d(4, 2, padding=1):
  input pixel (i, j) adds kernel[ky, kx] x[i, j] to output (2i+ky-1, 2j+kx-1).
  """
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 2)).astype(np.float32)
  up = conv_vqvae.UpConv(3)
  params = up.init(jax.random.key(0), x)
  kernel = np.asarray(params["params"]["kernel"])
  params["params"]["bias"] = jnp.array([0.1, 0.2, 0.3])
  full = np.zeros((2, 8, 12, 3))  # Before cropping the 1-pixel padding.
  for i in range(3):
    for j in range(5):
      full[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += np.einsum(
          "bc,yxcd->byxd", x[:, i, j], kernel)
  np.testing.assert_allclose(jax.jit(up.apply)(params, x),
                             full[:, 1:-1, 1:-1] + [0.1, 0.2, 0.3],
                             rtol=1e-5, atol=1e-5)


def test_ema_update_and_laplace_smoothing_by_hand():
  counts = jnp.array([2.0, 1.0, 0.0])
  sums = jnp.array([[2.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
  # Code 0 gets (1, 1) and (3, -1), code 2 gets (2, 2).
  batch_counts, batch_sums = vq.assignment_stats(
      jnp.array([0, 0, 2]), jnp.array([[1.0, 1.0], [3.0, -1.0], [2.0, 2.0]]),
      3)
  counts, sums = conv_vqvae.ema_update(counts, sums, batch_counts, batch_sums,
                                       decay=0.5)
  # 0.5 old + 0.5 batch.
  np.testing.assert_allclose(counts, [2.0, 0.5, 0.5])
  np.testing.assert_allclose(sums, [[3.0, 2.0], [0.5, 0.5], [1.0, 1.0]])
  # n = 3, eps = 0.5: (c + 0.5) / (3 + 3 * 0.5) * 3 = (c + 0.5) * 2 / 3;
  # the total stays 3.
  smoothed = conv_vqvae.laplace_smoothed(counts, 0.5)
  np.testing.assert_allclose(smoothed, [5 / 3, 2 / 3, 2 / 3], rtol=1e-6)


def test_training_call_updates_the_codebook_by_ema(tiny):
  model, variables = tiny
  state = variables["state"]
  # The pseudo-count of 1 per code: the first codebook is the sums.
  np.testing.assert_array_equal(state["counts"], 1)
  np.testing.assert_allclose(
      _apply(model, variables, method=model.codebook), state["sums"],
      rtol=1e-6)
  (_, aux), new = _apply(model, variables, LABELS, train=True,
                         mutable=["state"])
  counts, sums = vq.assignment_stats(aux["codes"], aux["z"], 8)
  np.testing.assert_array_equal(aux["code_counts"], counts)
  assert counts.sum() == 2 * 4 * 4  # Summed over the whole batch.
  np.testing.assert_allclose(new["state"]["counts"],
                             0.9 * state["counts"] + 0.1 * counts, rtol=1e-6)
  np.testing.assert_allclose(new["state"]["sums"],
                             0.9 * state["sums"] + 0.1 * sums, rtol=1e-5,
                             atol=1e-6)
  # Outside training (and at init) the state stays.
  _, unchanged = _apply(model, variables, LABELS, mutable=["state"])
  jax.tree.map(np.testing.assert_array_equal, unchanged["state"], state)


def test_restart_dead_codes():
  counts = jnp.array([5.0, 0.5, 2.0, 0.0])
  sums = jnp.arange(8.0).reshape(4, 2)
  x = jnp.array([[[10.0, 11.0], [12.0, 13.0], [14.0, 15.0]]])
  new_counts, new_sums = conv_vqvae.restart_dead_codes(
      counts, sums, x, jax.random.key(0), threshold=1.0)
  # Codes 1 and 3 are below 1 use per step: count 1, sum one of the vectors.
  np.testing.assert_array_equal(new_counts, [5.0, 1.0, 2.0, 1.0])
  np.testing.assert_array_equal(new_sums[::2], sums[::2])
  for row in new_sums[1::2]:
    assert any(np.array_equal(row, v) for v in x[0])


def test_straight_through_gradient_is_identity(tiny):
  model, variables = tiny
  z = jax.random.normal(jax.random.key(2), (1, 2, 2, 4))
  quantize = functools.partial(model.apply, variables, method=model.quantize)
  jacobian = jax.jit(jax.jacobian(lambda z: quantize(z)[0]))(z)
  np.testing.assert_array_equal(jacobian.reshape(16, 16), np.eye(16))
  # While the forward value is the nearest code's row.
  z_q, codes = jax.jit(quantize)(z)
  codebook = _apply(model, variables, method=model.codebook)
  np.testing.assert_allclose(z_q, codebook[codes], atol=1e-6)


def test_commitment_loss_by_hand():
  x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  x_q = jnp.array([[1.0, 0.0], [2.0, 4.0]])
  # Squared differences 0, 4, 1, 0: mean 5 / 4.
  assert vq.commitment_loss(x, x_q) == pytest.approx(1.25)
  grad_x, grad_x_q = jax.grad(vq.commitment_loss, argnums=(0, 1))(x, x_q)
  np.testing.assert_allclose(grad_x, [[0.0, 1.0], [0.5, 0.0]])  # 2 d / 4.
  np.testing.assert_array_equal(grad_x_q, 0)


def test_perplexity():
  assert vq.perplexity(jnp.array([3.0, 3.0, 0.0, 3.0])) == pytest.approx(3.0)
  assert vq.perplexity(jnp.array([0.0, 7.0])) == pytest.approx(1.0)


def test_soft_decoding(tiny):
  model, variables = tiny
  codes = jnp.array([[[0, 3], [7, 3]], [[5, 5], [1, 2]]])
  hard = _apply(model, variables, codes, method=model.decode)
  soft = _apply(model, variables, jax.nn.one_hot(codes, 8),
                method=model.decode_soft)
  np.testing.assert_allclose(soft, hard, rtol=1e-6, atol=1e-7)
  # Half code 0, half code 3 everywhere: the decoder of the mean row.
  codebook = _apply(model, variables, method=model.codebook)
  p = jnp.zeros((1, 2, 2, 8)).at[..., 0].set(0.5).at[..., 3].set(0.5)
  mean_row = jnp.broadcast_to((codebook[0] + codebook[3]) / 2, (1, 2, 2, 4))
  np.testing.assert_allclose(
      _apply(model, variables, p, method=model.decode_soft),
      _apply(model, variables, mean_row, method=lambda m, z: m.decoder(z)),
      rtol=1e-5, atol=1e-6)


def test_weights_leave_examples_out_of_the_codebook_statistics(tiny):
  model, variables = tiny
  # Example 1 has weight 0: the update is the one of example 0 alone.
  (_, aux), new = _apply(model, variables, LABELS, train=True,
                         weights=jnp.array([1.0, 0.0]), mutable=["state"])
  counts, sums = vq.assignment_stats(aux["codes"][:1], aux["z"][:1], 8)
  assert counts.sum() == 4 * 4
  np.testing.assert_array_equal(aux["code_counts"], counts)
  state = variables["state"]
  np.testing.assert_allclose(new["state"]["counts"],
                             0.9 * state["counts"] + 0.1 * counts, rtol=1e-6)
  np.testing.assert_allclose(new["state"]["sums"],
                             0.9 * state["sums"] + 0.1 * sums, rtol=1e-5,
                             atol=1e-6)
  weighted, _ = vq.assignment_stats(jnp.array([[0, 1], [1, 1]]),
                                    jnp.ones((2, 2, 3)), 3,
                                    jnp.array([[2.0], [0.5]]))
  np.testing.assert_array_equal(weighted, [2.0, 3.0, 0.0])


def test_restart_dead_codes_picks_only_weighted_vectors():
  counts = jnp.zeros(16)  # All dead.
  x = jnp.arange(12.0).reshape(2, 3, 2)
  _, new_sums = conv_vqvae.restart_dead_codes(
      counts, jnp.zeros((16, 2)), x, jax.random.key(0), threshold=1.0,
      weights=jnp.array([[0.0], [1.0]]))
  for row in new_sums:
    assert any(np.array_equal(row, v) for v in x[1])
