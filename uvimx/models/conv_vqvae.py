"""AiT's label-only VQ-VAE: a small conv tokenizer and detokenizer of labels.

Ning et al., "All in Tokens" (AiT), Sec. 3.1 and the appendix, with the
details of its public code (SwinTransformer/AiT, vae/models/VQVAE.py):

  encoder  log2(downsample) stride-2 4x4 convolutions with ReLU, `width`
           channels doubling per layer (16, 32, ..., for depth 16 -> 256),
           then `num_res_blocks` residual blocks (3x3, 3x3, 1x1 with skip)
           and a 1x1 projection to the codebook dimension.
  decoder  the mirror image: a 1x1 projection (ReLU), the residual blocks,
           log2(downsample) stride-2 4x4 transposed convolutions with ReLU
           halving the channels back to `width`, a 1x1 projection to the
           label's channels. The output is unconstrained (AiT regresses depth
           directly).
  codebook `num_codes` rows learned by an exponential moving average, not by
           gradients (Sonnet's VectorQuantizerEMA, which AiT copies): EMA
           cluster sizes `counts` and EMA sums `sums` of the encoder outputs
           assigned to each code, with decay 0.99, and the codebook
           sums / laplace_smoothed(counts). The encoder output reaches the
           decoder through the nearest code with a straight-through gradient.
           Optionally (`restart_threshold`, not AiT's), codes that fall out
           of use restart at batch vectors, as in Jukebox.

The label comes in as (B, H, W, C) with H and W multiples of `downsample`;
its codes are a (B, H / downsample, W / downsample) grid. `counts` and `sums`
live in the "state" collection and are updated by `__call__(train=True)`
(with `mutable=["state"]`); the batch statistics are plain sums, global under
jit with a sharded batch.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from uvimx.models import vq


def num_doublings(downsample):
  """log2(downsample): how many stride-2 layers each side has."""
  n = int(downsample).bit_length() - 1
  if downsample < 2 or 2 ** n != downsample:
    raise ValueError(f"conv_vqvae downsample must be a power of two >= 2 "
                     f"(one stride-2 convolution per factor 2), not "
                     f"{downsample}.")
  return n


def laplace_smoothed(counts, epsilon):
  """(c + eps) / (n + K eps) * n with n = sum(c): Sonnet's smoothed counts.

  Every code keeps a count > 0, so that sums / counts stays defined for a
  code that has not been used for long, and the total n is unchanged.
  """
  n = jnp.sum(counts)
  return (counts + epsilon) / (n + counts.shape[0] * epsilon) * n


def ema_update(counts, sums, batch_counts, batch_sums, decay):
  """Sonnet's EMA step: decay * old + (1 - decay) * batch, for both.

  `vq.ema_update` with the batch's statistics scaled by (1 - decay): the
  codebook, their ratio, is the same EMA mean as UViM's discounted totals
  give; the scale matters only against the smoothing's epsilon.

  Returns:
    The new (counts, sums).
  """
  sums, counts = vq.ema_update(sums, counts, (1 - decay) * batch_counts,
                               (1 - decay) * batch_sums, decay)
  return counts, sums


def restart_dead_codes(counts, sums, x, key, threshold, weights=None):
  """Jukebox's random restarts: codes used too little become batch vectors.

  A code whose EMA count is below `threshold` is replaced by a random one of
  the vectors `x` that were just quantised, with count `threshold`: it is
  then where the data is, and must win assignments to stay.

  Args:
    counts: (K,) EMA counts, after this step's update.
    sums: (K, D) EMA sums.
    x: (..., D) the batch's encoder outputs.
    key: PRNG key for the choice of vectors.
    threshold: the count below which a code restarts.
    weights: optional, broadcastable to x.shape[:-1]: only vectors of
      weight > 0 are picked (any, if none has).

  Returns:
    The new (counts, sums).
  """
  flat = jax.lax.stop_gradient(x).reshape(-1, x.shape[-1]).astype(sums.dtype)
  if weights is None:
    picks = flat[jax.random.randint(key, counts.shape, 0, flat.shape[0])]
  else:
    eligible = jnp.broadcast_to(weights, x.shape[:-1]).reshape(-1) > 0
    # Uniform over the eligible vectors; over all of them if none is.
    logits = jnp.where(eligible | ~jnp.any(eligible), 0.0, -jnp.inf)
    picks = flat[jax.random.categorical(key, logits, shape=counts.shape)]
  dead = counts < threshold
  return (jnp.where(dead, threshold, counts),
          jnp.where(dead[:, None], picks * threshold, sums))


class ResBlock(nn.Module):
  """AiT's ResBlock_v1: x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    y = nn.relu(nn.Conv(c, (3, 3), name="conv1")(x))
    y = nn.relu(nn.Conv(c, (3, 3), name="conv2")(y))
    return x + nn.Conv(c, (1, 1), name="conv3")(y)


class UpConv(nn.Module):
  """A stride-2 4x4 transposed convolution, as one 2x2 convolution.

  PyTorch's ConvTranspose2d(kernel_size=4, stride=2, padding=1), AiT's: input
  pixel i adds kernel[k] * x[i] to output pixel 2i + k - 1, per axis. So
  output 2m + a (phase a in {0, 1}) is the sum over t in {0, 1} of
  x[m - 1 + a + t] * kernel[3 - a - 2t]: a 2x2 window of the input padded by
  1, starting at m + a. One 2x2 convolution with 4 x features outputs, one
  group per phase pair (a, b), computes all of them. XLA's own transposed
  convolution, a convolution of the zero-dilated input, does 4x the
  multiplications, and on CPU its backward pass is about 10x slower.
  """
  features: int

  @nn.compact
  def __call__(self, x):
    # Each output sums 2x2 of the 4x4 taps: fan-in 4 x channels, not 16 x.
    kernel = self.param(
        "kernel", nn.initializers.variance_scaling(4.0, "fan_in",
                                                   "truncated_normal"),
        (4, 4, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    taps = jnp.array([[3, 1], [2, 0]])  # [phase a, window offset t].
    # (a, t, b, u, in, out) -> (t, u, in, (a, b, out)).
    k = jnp.transpose(kernel[taps][:, :, taps], (1, 3, 4, 0, 2, 5))
    k = k.reshape(2, 2, x.shape[-1], 4 * self.features)
    # Padded explicitly: with padding=1 in the convolution itself, XLA:CPU's
    # backward pass is another 10x slower.
    y = jax.lax.conv_general_dilated(
        jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), k, window_strides=(1, 1),
        padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    batch, height, width = x.shape[:3]
    y = y.reshape(*y.shape[:3], 2, 2, self.features)
    phases = jnp.stack([  # (B, H, a, W, b, features).
        jnp.stack([y[:, a:a + height, b:b + width, a, b] for b in (0, 1)],
                  axis=3) for a in (0, 1)], axis=2)
    return phases.reshape(batch, 2 * height, 2 * width, self.features) + bias


class Encoder(nn.Module):
  """Label (B, H, W, C) -> (B, H / 2^n, W / 2^n, code_dim) vectors."""
  width: int
  num_doublings: int
  num_res_blocks: int
  code_dim: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_doublings):
      x = nn.relu(nn.Conv(self.width * 2 ** i, (4, 4), strides=2, padding=1,
                          name=f"down{i}")(x))
    for i in range(self.num_res_blocks):
      x = ResBlock(name=f"res{i}")(x)
    return nn.Conv(self.code_dim, (1, 1), name="to_code")(x)


class Decoder(nn.Module):
  """Code vectors (B, h, w, code_dim) -> label (B, h 2^n, w 2^n, channels)."""
  width: int
  num_doublings: int
  num_res_blocks: int
  channels: int

  @nn.compact
  def __call__(self, z):
    top = self.width * 2 ** (self.num_doublings - 1)
    x = nn.relu(nn.Conv(top, (1, 1), name="from_code")(z))
    for i in range(self.num_res_blocks):
      x = ResBlock(name=f"res{i}")(x)
    for i in range(self.num_doublings):
      x = nn.relu(UpConv(top // 2 ** i, name=f"up{i}")(x))
    return nn.Conv(self.channels, (1, 1), name="to_label")(x)


class Model(nn.Module):
  """The VQ-VAE: `__call__` reconstructs, `encode`/`decode*` (de)tokenize.

  Defaults are AiT's depth tokenizer (480x480 -> 15x15 codes of 512 dims,
  128 codes).
  """
  channels: int = 1
  downsample: int = 32
  width: int = 16
  num_res_blocks: int = 2
  code_dim: int = 512
  num_codes: int = 128
  decay: float = 0.99
  epsilon: float = 1e-5
  restart_threshold: float = 0.0  # > 0: `restart_dead_codes`; AiT has none.

  def setup(self):
    n = num_doublings(self.downsample)
    self.encoder = Encoder(self.width, n, self.num_res_blocks, self.code_dim)
    self.decoder = Decoder(self.width, n, self.num_res_blocks, self.channels)
    # A pseudo-count of 1 per code, so that the initial codebook is the
    # initial (standard normal, as AiT's) sums. AiT starts from zero counts
    # and a separate random codebook instead; a code unused in the first step
    # then gets sums / epsilon, about 1e5 times its scale, and is dead.
    self.counts = self.variable("state", "counts", jnp.ones,
                                (self.num_codes,), jnp.float32)
    self.sums = self.variable(
        "state", "sums", lambda: jax.random.normal(
            self.make_rng("params"), (self.num_codes, self.code_dim)))

  def codebook(self):
    """The (num_codes, code_dim) codebook, sums / smoothed counts."""
    return self.sums.value / laplace_smoothed(self.counts.value,
                                              self.epsilon)[:, None]

  def _encode(self, labels):
    height, width = labels.shape[1:3]
    if height % self.downsample or width % self.downsample:
      raise ValueError(f"conv_vqvae: the label size {height}x{width} is not "
                       f"divisible by downsample={self.downsample}; resize "
                       "or crop the labels (pp) or change model.downsample.")
    return self.encoder(labels)

  def __call__(self, labels, train=False, weights=None):
    """Reconstructs `labels` through the code; `train` updates the codebook.

    Args:
      labels: (B, H, W, channels).
      train: update the EMA codebook (and restart dead codes).
      weights: optional (B,) weights of the examples in the codebook
        statistics: 0 leaves an example out of the counts, sums and
        restarts (e.g. a padding object), None counts all once.

    Returns:
      (reconstruction (B, H, W, channels), aux) with aux {"z": encoder
      output, "z_q": its quantisation (straight-through gradient), "codes":
      (B, h, w) int indices, "code_counts": (num_codes,) (weighted) uses in
      the batch}.
    """
    z = self._encode(labels)
    z_q, codes = self.quantize(z)
    if weights is not None:
      weights = jnp.asarray(weights, jnp.float32)[:, None, None]
    batch_counts, batch_sums = vq.assignment_stats(codes, z, self.num_codes,
                                                   weights)
    # Not at init: the initial state is the one documented in `setup`.
    if train and not self.is_initializing():
      self.counts.value, self.sums.value = ema_update(
          self.counts.value, self.sums.value, batch_counts, batch_sums,
          self.decay)
      if self.restart_threshold:
        self.counts.value, self.sums.value = restart_dead_codes(
            self.counts.value, self.sums.value, z, self.make_rng("restart"),
            self.restart_threshold, weights)
    aux = {"z": z, "z_q": z_q, "codes": codes, "code_counts": batch_counts}
    return self.decoder(z_q), aux

  def quantize(self, z):
    """Encoder outputs -> (nearest codes' rows, straight-through; indices)."""
    return vq.quantize(z, self.codebook())

  def encode(self, labels):
    """Labels (B, H, W, channels) -> codes (B, H / downsample, W / ...)."""
    return self.quantize(self._encode(labels))[1]

  def decode(self, codes):
    """Codes (B, h, w) -> labels (B, h * downsample, w * ..., channels)."""
    return self.decoder(self.codebook()[codes])

  def decode_soft(self, probabilities):
    """Decodes sum_k p_k c_k, AiT's soft token: (B, h, w, num_codes) -> labels.

    With one-hot probabilities this is `decode` of their argmax.
    """
    return self.decoder(vq.soft_codewords(probabilities, self.codebook()))
