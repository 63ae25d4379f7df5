"""Vector quantisation for UViM's stage-I bottleneck, as pure functions.

The codebook follows big_vision's `proj/uvim/vit.py`: a `dictionary` of
discounted sums of the vectors assigned to each codeword and their discounted
`counts`, so that a codeword is the (L2-normalised) discounted mean of its
vectors. The dictionary is learned by an exponential moving average, not by
gradients, and codewords that fall out of use are replaced by splitting the
most used one (LBG). Every reduction over the batch is a plain sum: under
`jax.jit` with a sharded global batch XLA makes it a global reduction, so the
dictionary stays identical on all devices without explicit collectives.
"""
import jax
import jax.numpy as jnp

# Relative perturbation of a split codeword. As big_vision: the multiplicative
# noise is not exactly symmetric, so repeated splits may shrink a codeword a
# little, which does not matter at this size.
PERTURB = 0.001


def codewords(dictionary, counts):
  """The codebook (K, D): discounted means `dictionary / counts`, unit norm."""
  e = dictionary / counts[:, None]
  return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def quantize(x, e):
  """Nearest codeword of each vector, with a straight-through gradient.

  Args:
    x: (..., D) vectors.
    e: (K, D) codebook.

  Returns:
    (x_q, idx): `x_q` (..., D) equals `e[idx]` in the forward pass, but its
    gradient flows to `x` unchanged (the quantisation has none); `idx` (...)
    are the int32 codeword indices.
  """
  # |x|^2 - 2 x.e + |e|^2, the squared distance decomposed as big_vision does,
  # so that near-ties resolve to the same codeword.
  dist = (jnp.sum(x * x, axis=-1, keepdims=True) - 2 * x @ e.T +
          jnp.sum(e * e, axis=-1))
  idx = jnp.argmin(dist, axis=-1)
  return jax.lax.stop_gradient(e[idx] - x) + x, idx


def assignment_stats(idx, x, dict_size, weights=None):
  """How many vectors, and their sum, went to each codeword in the batch.

  Args:
    idx: (...) codeword indices.
    x: (..., D) the vectors that were quantised (no gradient flows back).
    dict_size: K.
    weights: optional weights of the vectors, broadcastable to `idx`'s
      shape: each vector counts `weight` times (0 leaves it out, e.g. a
      padding example).

  Returns:
    (counts, sums): (K,) and (K, D) float32, summed over all leading axes.
  """
  # float32 whatever the model's dtype: bfloat16 would not even count
  # exactly beyond 256.
  onehot = jax.nn.one_hot(idx, dict_size, dtype=jnp.float32)
  if weights is not None:
    onehot = onehot * jnp.broadcast_to(
        jnp.asarray(weights, jnp.float32), idx.shape)[..., None]
  counts = jnp.sum(onehot, axis=tuple(range(idx.ndim)))
  # Full precision: TPUs and GPUs otherwise round the operands of a float32
  # matmul (to bf16 / tf32), which would bias the learned dictionary.
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  sums = jnp.einsum("...k,...d->kd", onehot, x,
                    precision=jax.lax.Precision.HIGHEST)
  return counts, sums


def codebook_stats(counts):
  """Usage statistics of a batch's codes, under big_vision's log names.

  Args:
    counts: (K,) assignments per codeword, as from `assignment_stats`.

  Returns:
    {"codebook_max_ratio": share of the most used codeword,
     "codebook_zeros_ratio": share of codewords not used at all}.
  """
  return {"codebook_max_ratio": jnp.max(counts) / jnp.sum(counts),
          "codebook_zeros_ratio": jnp.mean(counts == 0)}


def ema_update(dictionary, counts, batch_counts, batch_sums, momentum):
  """Discounts the old sums and counts by `momentum` and adds the batch's.

  This is VQ-VAE's EMA dictionary learning written, as big_vision does, as
  discounted totals: the codeword, their ratio, is an EMA of the mean vector
  assigned to it, weighted by how often it is used.

  Returns:
    The new (dictionary, counts).
  """
  return (dictionary * momentum + batch_sums,
          counts * momentum + batch_counts)


def split_unused(dictionary, counts, key, min_count):
  """LBG: while a codeword's count is below `min_count`, re-seed it.

  Each round moves the least used codeword onto the most used one, times
  uniform noise in [1 - PERTURB, 1 + PERTURB], and gives each of the two half
  of the most used one's sums and count: the old codeword keeps its value and
  the new one starts next to it, so the next updates split its vectors.

  At most K rounds per call, one per codeword, which is all splitting can
  need unless the counts cannot all reach `min_count` (their total, which a
  round never raises, is below K * min_count: a `min_count` too big for the
  batch and momentum). big_vision loops until none is below, which then
  never ends: training would hang inside the step.

  Args:
    dictionary: (K, D) discounted sums.
    counts: (K,) discounted counts.
    key: PRNG key for the perturbations (new-style or raw uint32).
    min_count: the discounted count below which a codeword counts as unused;
      with momentum 0.995, 0.1 means about 500 steps without an assignment.

  Returns:
    The new (dictionary, counts).
  """
  def split(state):
    dictionary, counts, key, rounds = state
    key, noise_key = jax.random.split(key)
    i_max, i_min = jnp.argmax(counts), jnp.argmin(counts)
    noise = jax.random.uniform(noise_key, dictionary.shape[1:],
                               dictionary.dtype, 1 - PERTURB, 1 + PERTURB)
    top, half = dictionary[i_max], counts[i_max] / 2
    dictionary = dictionary.at[i_min].set(top * noise / 2)
    dictionary = dictionary.at[i_max].set(top / 2)
    counts = counts.at[i_min].set(half).at[i_max].set(half)
    return dictionary, counts, key, rounds + 1

  def unfinished(state):
    _, counts, _, rounds = state
    return jnp.any(counts < min_count) & (rounds < counts.shape[0])

  dictionary, counts, _, _ = jax.lax.while_loop(
      unfinished, split, (dictionary, counts, key, 0))
  return dictionary, counts


def soft_codewords(probabilities, codebook):
  """sum_k p_k c_k: (..., K) probabilities, (K, D) codebook -> (..., D).

  AiT's soft tokens: the probability-weighted rows of a codebook (or of an
  embedding table). HIGHEST precision: TPUs and GPUs would otherwise round
  the rows (bf16 / tf32), and one-hot probabilities would not pick them
  exactly.
  """
  return jnp.einsum("...k,kd->...d", probabilities, codebook,
                    precision=jax.lax.Precision.HIGHEST)


def commitment_loss(x, x_q):
  """mean((x - x_q)^2) over all elements, with gradient to `x` only.

  VQ-VAE's commitment loss: it pulls the quantised vectors towards their
  codewords; the codebook itself learns by EMA, not by this gradient.
  """
  return jnp.mean(jnp.square(x - jax.lax.stop_gradient(x_q)))


def perplexity(counts):
  """exp(entropy) of the codes' usage `counts` (K,): 1 to K codes in use."""
  # entr(p) = -p log p, 0 at p = 0.
  return jnp.exp(jnp.sum(jax.scipy.special.entr(counts / jnp.sum(counts))))
