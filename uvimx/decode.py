"""Sampling guiding codes from the stage-II LM (`uvimx.models.lm.Model`).

One `lax.fori_loop` over the L code positions draws `num_samples` sequences
per image: each step runs the decoder on the previous token with the KV cache
(`Model.decode_step`), filters the next-token distribution (temperature,
top-k, top-p) and draws a token. `cached=False` runs the whole decoder on the
sequence so far at every step instead: the slow reference the cache is tested
and benchmarked against. The non-autoregressive LM is decoded in one forward
pass, then every position is drawn independently.

Randomness is per example: sample n of image b at position t uses the key
`fold_in(fold_in(seeds[b], n), t)`, so it depends only on the image, the
params and `seeds[b]`, never on which other images share the batch.
"""
import functools

import jax
import jax.numpy as jnp


def _keep_mask(logits, top_k, top_p):
  """Which tokens (R, V) the top-k and top-p (nucleus) filters keep.

  Both keep every token at least as likely as their last kept one (so tied
  logits are kept together), and both always keep the most likely token.

  Args:
    logits: (R, V), already divided by the temperature.
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: keep the smallest set of most likely tokens whose probability
      reaches top_p (the most likely token, whose preceding mass 0 is below
      any top_p > 0, always); 0 keeps all.

  Returns:
    A boolean (R, V) mask.
  """
  sorted_logits = -jnp.sort(-logits, axis=-1)
  threshold = sorted_logits[:, -1:]
  if top_k:
    threshold = jnp.maximum(threshold, sorted_logits[:, top_k - 1:top_k])
  if top_p:
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    last = jnp.sum(mass_before < top_p, axis=-1, keepdims=True) - 1
    threshold = jnp.maximum(
        threshold, jnp.take_along_axis(sorted_logits, last, axis=-1))
  return logits >= threshold


def _fold_in(keys, data):
  """(R,) keys, each folded with the same int `data` -> (R,) keys."""
  return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


def _choose(logits, keys, temperature, top_k, top_p):
  """Draws one token per row of logits (R, V) with keys (R,); int32 (R,)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k or top_p:
    logits = jnp.where(_keep_mask(logits, top_k, top_p), logits, -jnp.inf)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _check_options(model, num_samples, temperature, top_k, top_p):
  """Raises a ValueError naming the first bad sampling option."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0: greedy), got "
                     f"{temperature}.")
  if not 0 <= top_k <= model.vocab_size:
    raise ValueError(f"top_k must be in [0, vocab_size={model.vocab_size}] "
                     f"(0: no top-k filter), got {top_k}.")
  if not 0 <= top_p <= 1:
    raise ValueError(f"top_p must be in [0, 1] (0: no nucleus filter), got "
                     f"{top_p}.")


def encode(model, params, images, chunk=0):
  """`model.encode(images)`, `chunk` images at a time if chunk > 0.

  On CPUs, whose caches then hold a chunk's activations, the encoder of
  benchmarks/decode.py runs 1.6x faster at batch 32 in chunks of 4; on
  accelerators, encode the whole batch at once (chunk 0).

  Args:
    model: a `uvimx.models.lm.Model`.
    params: its params.
    images: (B, H, W, C).
    chunk: 0, or a divisor of B.

  Returns:
    (B, P, E) encoded images.
  """
  fn = lambda x: model.apply({"params": params}, x, method=model.encode)
  b = images.shape[0]
  if not chunk or chunk >= b:
    return fn(images)
  if b % chunk:
    raise ValueError(f"encode_chunk={chunk} does not divide the batch size "
                     f"{b}.")
  encoded = jax.lax.map(fn, images.reshape((b // chunk, chunk) +
                                           images.shape[1:]))
  return encoded.reshape((b,) + encoded.shape[2:])


def sample(model, params, images, seeds, *, num_samples=1, temperature=0.0,
           top_k=0, top_p=0.0, cached=True, encode_chunk=0):
  """Draws `num_samples` codes per image from the LM (traceable; see jit).

  Args:
    model: a `uvimx.models.lm.Model`.
    params: its params.
    images: (B, H, W, C) the LM's input images.
    seeds: (B,) per-example randomness: int seeds, or typed PRNG keys (e.g.
      `jax.random.split(key, B)`).
    num_samples: N sequences per image.
    temperature: 0 is greedy (argmax, the filters then change nothing);
      otherwise tokens are drawn from softmax(logits / temperature).
    top_k: draw only among the k most likely tokens (0: all).
    top_p: draw only from the nucleus of probability top_p (0: all); top-k
      and top-p apply to the tempered distribution, and together keep the
      tokens both keep.
    cached: use the KV cache; False runs the full decoder at every step.
    encode_chunk: encode the images this many at a time (0: all at once);
      see `encode`.

  Returns:
    codes: (B, N, L) int32 tokens in [0, vocab_size) (0 is BOS/padding,
      which a trained LM does not predict; stage-I indices are codes - 1).
    logprobs: (B, N, L) float32 log-probability of each token under the
      model's own (untempered, unfiltered) next-token distribution.
  """
  _check_options(model, num_samples, temperature, top_k, top_p)
  if not jax.dtypes.issubdtype(seeds.dtype, jax.dtypes.prng_key):
    seeds = jax.vmap(jax.random.key)(seeds)
  b, n, length = images.shape[0], num_samples, model.seq_len
  # Row r = b * N + n of the (R, ...) arrays is sample n of image b.
  keys = jax.vmap(jax.random.fold_in)(jnp.repeat(seeds, n),
                                      jnp.tile(jnp.arange(n), b))
  choose = functools.partial(_choose, temperature=temperature, top_k=top_k,
                             top_p=top_p)
  variables = {"params": params}
  encoded = encode(model, params, images, encode_chunk)

  def logprob_of(logits, tokens):
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]

  if not model.autoregressive:
    logits = model.apply(variables, encoded, method=model.decode)
    logits = jnp.repeat(logits, n, axis=0)  # (R, L, V)
    pos_keys = jax.vmap(_fold_in, (None, 0), 1)(keys, jnp.arange(length))
    codes = jax.vmap(choose, in_axes=1, out_axes=1)(logits, pos_keys)
    return (codes.reshape(b, n, length),
            logprob_of(logits, codes).reshape(b, n, length))

  if cached:
    def next_logits(t, seqs, cache):
      return model.apply(variables, cache, seqs[:, t], t,
                         method=model.decode_step)
    cache = model.apply(variables, encoded, n, method=model.init_cache)
  else:
    def next_logits(t, seqs, cache):
      logits = model.apply(variables, encoded, seqs[:, 1:],
                           method=model.decode)
      return jax.lax.dynamic_index_in_dim(logits, t, 1, False), cache
    cache = ()

  def step(t, carry):
    seqs, logprobs, cache = carry
    logits, cache = next_logits(t, seqs, cache)
    tokens = choose(logits, _fold_in(keys, t))
    seqs = seqs.at[:, t + 1].set(tokens)
    logprobs = logprobs.at[:, t].set(logprob_of(logits, tokens))
    return seqs, logprobs, cache

  # seqs[:, 0] is BOS; seqs[:, t] is the token that predicts position t.
  seqs = jnp.zeros((b * n, length + 1), jnp.int32)
  logprobs = jnp.zeros((b * n, length), jnp.float32)
  seqs, logprobs, _ = jax.lax.fori_loop(0, length, step,
                                        (seqs, logprobs, cache))
  return (seqs[:, 1:].reshape(b, n, length), logprobs.reshape(b, n, length))


def make_sample_fn(model, **options):
  """A jitted fn(params, images, seeds) -> (codes, logprobs) of `sample`.

  Args:
    model: a `uvimx.models.lm.Model`.
    **options: `sample`'s keyword arguments (num_samples, temperature,
      top_k, top_p, cached), fixed at trace time.

  Returns:
    The jitted function; it retraces only for new input shapes.
  """
  return jax.jit(functools.partial(sample, model, **options))
