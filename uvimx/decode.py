"""Sampling guiding codes from the stage-II LM (`uvimx.models.lm.Model`).

One `lax.fori_loop` over the L code positions draws `num_samples` sequences
per image: each step runs the decoder on the previous token with the KV cache
(`Model.decode_step`), filters the next-token distribution (temperature,
top-k, top-p) and draws a token. `cached=False` runs the whole decoder on the
sequence so far at every step instead: the slow reference the cache is tested
and benchmarked against. The non-autoregressive and the parallel (AiT-P) LMs
are decoded in one forward pass, then every position is drawn independently.

AiT's options: `position_ranges` restricts every position to its token
type's slice of the vocabulary (e.g. the depth codes, or a box coordinate's
bins); `soft_tokens` feeds the next step the probability vector of the
position just decoded (restricted to its slice) instead of the drawn token;
`first_tokens` starts the sequences with a task token instead of BOS.

Randomness is per example: sample n of image b at position t uses the key
`fold_in(fold_in(seeds[b], n), t)`, so it depends only on the image, the
params and `seeds[b]`, never on which other images share the batch.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def _keep_mask(logits, top_k, top_p):
  """Which tokens (R, V) the top-k and top-p (nucleus) filters keep.

  Both keep every token at least as likely as their last kept one (so tied
  logits are kept together), and both always keep the most likely token.

  Args:
    logits: (R, V), already divided by the temperature.
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: keep the smallest set of most likely tokens whose probability
      reaches top_p (the most likely token, whose preceding mass 0 is below
      any top_p > 0, always); 0 or 1 keeps all (at 1 the float32 cumulative
      sum would reach 1 before the last tokens and drop them).

  Returns:
    A boolean (R, V) mask.
  """
  sorted_logits = -jnp.sort(-logits, axis=-1)
  threshold = sorted_logits[:, -1:]
  if top_k:
    threshold = jnp.maximum(threshold, sorted_logits[:, top_k - 1:top_k])
  if 0 < top_p < 1:
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


def _check_options(model, num_samples, temperature, top_k, top_p, cached,
                   soft_tokens):
  """Raises a ValueError naming the first bad sampling option."""
  if soft_tokens and not cached:
    raise ValueError("soft_tokens need the cached decoder (cached=True).")
  if (not isinstance(num_samples, (int, np.integer))
      or isinstance(num_samples, bool) or num_samples < 1):
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
  if not temperature >= 0:  # Also refuses NaN.
    raise ValueError(f"temperature must be >= 0 (0: greedy), got "
                     f"{temperature}.")
  if (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool)
      or not 0 <= top_k <= model.vocab_size):
    raise ValueError(f"top_k must be an int in [0, vocab_size="
                     f"{model.vocab_size}] (0: no top-k filter), got "
                     f"{top_k!r}.")
  if not 0 <= top_p <= 1:
    raise ValueError(f"top_p must be in [0, 1] (0: no nucleus filter), got "
                     f"{top_p}.")


def _check_tokens(model, first_tokens, position_ranges):
  """Raises a ValueError on first tokens or ranges outside the vocabulary.

  The model would embed such a token as NaN, and an empty range would leave
  no token to draw: both would decode garbage silently. Checked only where
  the values are known at trace time (numpy arrays, as the trainers pass).
  """
  def concrete(x):
    try:
      return None if x is None else np.asarray(x)
    except jax.errors.TracerArrayConversionError:
      return None

  vocab, first, ranges = model.vocab_size, concrete(first_tokens), concrete(
      position_ranges)
  if first is not None and np.any((first < 0) | (first >= vocab)):
    raise ValueError(f"first_tokens must be token ids in [0, vocab_size="
                     f"{vocab}), got values from {first.min()} to "
                     f"{first.max()}.")
  if ranges is None:
    return
  if ranges.shape[-2:] != (model.seq_len, 2) or ranges.ndim not in (2, 3):
    raise ValueError(f"position_ranges must be ({model.seq_len}, 2) or "
                     f"(B, {model.seq_len}, 2) [lo, hi) pairs, got shape "
                     f"{ranges.shape}.")
  lo, hi = ranges[..., 0], ranges[..., 1]
  bad = (lo < 0) | (hi > vocab) | (lo >= hi)
  if np.any(bad):
    t = np.argwhere(bad)[0]
    raise ValueError(f"position_ranges{t.tolist()} is [{lo[tuple(t)]}, "
                     f"{hi[tuple(t)]}): every range must be a non-empty "
                     f"slice of [0, vocab_size={vocab}).")


def _check_batch_sharding(images):
  """Raises a ValueError if the images are sharded on an Explicit mesh.

  With Explicit axes (`jax.make_mesh`'s default) every array's sharding is
  part of its type, and the arrays made here (keys, zeros, caches) and in
  the models would each need one; uvimx's meshes are Auto, where XLA
  propagates the batch sharding by itself.
  """
  sharding = jax.typeof(images).sharding
  if (jax.sharding.AxisType.Explicit in sharding.mesh.axis_types
      and any(sharding.spec)):
    raise ValueError(
        f"decode.sample: the images are sharded as {sharding.spec} over a "
        f"mesh with Explicit axes {sharding.mesh.axis_names} (the default of "
        "jax.make_mesh); uvimx decodes on Auto meshes. Make the mesh with "
        "uvimx.sharding.make_mesh, or pass jax.make_mesh axis_types="
        "(jax.sharding.AxisType.Auto,) * num_axes.")


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


def restrict(logits, ranges):
  """Logits (..., V) with the tokens outside [lo, hi) of `ranges` at -inf.

  Args:
    logits: (R, V) or (R, L, V).
    ranges: None (no restriction), or int [lo, hi) pairs broadcastable to
      logits.shape[:-1] + (2,).

  Returns:
    The restricted logits.
  """
  if ranges is None:
    return logits
  ids = jnp.arange(logits.shape[-1])
  inside = (ids >= ranges[..., :1]) & (ids < ranges[..., 1:])
  return jnp.where(inside, logits, -jnp.inf)


def sample(model, params, images, seeds, *, num_samples=1, temperature=0.0,
           top_k=0, top_p=0.0, cached=True, encode_chunk=0, first_tokens=None,
           position_ranges=None, soft_tokens=False, with_logits=False):
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
    first_tokens: (B,) the first input token of each image's sequences
      (default 0, BOS), e.g. a task token.
    position_ranges: None, or int32 (L, 2) or (B, L, 2) [lo, hi): position
      t draws only tokens in [lo, hi), and its logits are restricted so
      before the temperature and the filters.
    soft_tokens: AiT's soft tokens: the input for position t + 1 is the
      (restricted, untempered) probability vector of position t, not the
      drawn token. Needs `cached`. One-pass models (non-autoregressive,
      AiT-P), whose inputs depend on no output, ignore it and
      `first_tokens`.
    with_logits: also return the model's logits of every position, before
      `position_ranges`, so that a caller can score the drawn token against
      tokens the ranges left out (AiT's instance class against noise).

  Returns:
    codes: (B, N, L) int32 tokens in [0, vocab_size) (0 is BOS/padding,
      which a trained LM does not predict; stage-I indices are codes - 1).
    logprobs: (B, N, L) float32 log-probability of each token under the
      model's own (untempered, unfiltered, but restricted) next-token
      distribution.
    logits: with `with_logits`, (B, N, L, V) float32, unrestricted.
  """
  _check_options(model, num_samples, temperature, top_k, top_p, cached,
                 soft_tokens)
  _check_tokens(model, first_tokens, position_ranges)
  _check_batch_sharding(images)
  if seeds.shape != images.shape[:1]:
    raise ValueError(f"seeds has shape {seeds.shape}: give one seed per "
                     f"image, shape ({images.shape[0]},).")
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
  if first_tokens is None:
    first_tokens = jnp.zeros((b,), jnp.int32)
  first_tokens = jnp.repeat(first_tokens.astype(jnp.int32), n)  # (R,)
  if position_ranges is not None:
    position_ranges = jnp.asarray(position_ranges, jnp.int32)
    if position_ranges.ndim == 3:  # Per image -> per sequence.
      position_ranges = jnp.repeat(position_ranges, n, axis=0)
    position_ranges = jnp.broadcast_to(position_ranges, (b * n, length, 2))

  def logprob_of(logits, tokens):
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]

  def outputs(codes, logprobs, logits):
    shape = (b, n, length)
    out = (codes.reshape(shape), logprobs.reshape(shape))
    if with_logits:
      out += (logits.reshape(shape + logits.shape[-1:]),)
    return out

  if not model.autoregressive or model.parallel:
    # No input depends on an earlier output: one pass decodes everything,
    # once per image, as all its samples have the same logits.
    logits = model.apply(variables, encoded, jnp.zeros((b, length), jnp.int32),
                         method=model.decode)
    logits = jnp.repeat(logits, n, axis=0)
    restricted = restrict(logits, position_ranges)  # (R, L, V)
    pos_keys = jax.vmap(_fold_in, (None, 0), 1)(keys, jnp.arange(length))
    codes = jax.vmap(choose, in_axes=1, out_axes=1)(restricted, pos_keys)
    return outputs(codes, logprob_of(restricted, codes), logits)

  if cached:
    def next_logits(t, inputs, seqs, cache):
      del seqs
      return model.apply(variables, cache, inputs, t,
                         method=model.decode_step)
    cache = model.apply(variables, encoded, n, method=model.init_cache)
  else:
    def next_logits(t, inputs, seqs, cache):
      del inputs
      logits = model.apply(variables, encoded, seqs, first_tokens=first_tokens,
                           method=model.decode)
      return jax.lax.dynamic_index_in_dim(logits, t, 1, False), cache
    cache = ()

  def step(t, carry):
    inputs, seqs, logprobs, all_logits, cache = carry
    logits, cache = next_logits(t, inputs, seqs, cache)
    if with_logits:
      all_logits = all_logits.at[:, t].set(logits)
    if position_ranges is not None:
      logits = restrict(logits, position_ranges[:, t])
    tokens = choose(logits, _fold_in(keys, t))
    inputs = jax.nn.softmax(logits) if soft_tokens else tokens
    seqs = seqs.at[:, t].set(tokens)
    logprobs = logprobs.at[:, t].set(logprob_of(logits, tokens))
    return inputs, seqs, logprobs, all_logits, cache

  # `inputs` is what predicts the next position: the first token, then the
  # drawn token (or its soft version) of the position before.
  first = (jax.nn.one_hot(first_tokens, model.vocab_size) if soft_tokens
           else first_tokens)
  seqs = jnp.zeros((b * n, length), jnp.int32)
  logprobs = jnp.zeros((b * n, length), jnp.float32)
  all_logits = jnp.zeros((b * n, length, model.vocab_size) if with_logits
                         else (), jnp.float32)
  _, seqs, logprobs, all_logits, _ = jax.lax.fori_loop(
      0, length, step, (first, seqs, logprobs, all_logits, cache))
  return outputs(seqs, logprobs, all_logits)


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
