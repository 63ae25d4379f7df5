"""Sampling: big_vision greedy parity, cache vs no cache, filters, seeds."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_lm  # The sibling test module (pytest puts tests/ on the path).
from uvimx import decode

B, L, V = test_lm.B, test_lm.L, test_lm.V


@functools.cache
def sampler(autoregressive=True, **options):
  """(params, jitted sample fn) on `test_lm.random_lm`, compiled once."""
  model, params, _ = test_lm.random_lm(autoregressive=autoregressive)
  return params, decode.make_sample_fn(model, **options)


@test_lm.needs_fixtures
def test_greedy_matches_big_vision():
  model, params = test_lm.fixture_model_and_params()
  io = np.load(f"{test_lm.FIXTURES}/stage2_io.npz")
  codes, logprobs = decode.make_sample_fn(model)(params, io["image"],
                                                 jnp.arange(B))
  assert codes.shape == logprobs.shape == (B, 1, L)
  np.testing.assert_array_equal(codes[:, 0], io["greedy_codes"])
  np.testing.assert_allclose(logprobs[:, 0], io["greedy_logprobs"], atol=1e-4,
                             rtol=0)


def test_cached_greedy_equals_uncached_argmax():
  images, seeds = test_lm._images(), jnp.arange(B)
  params, cached = sampler(num_samples=2)
  codes, logprobs = cached(params, images, seeds)
  _, naive = sampler(num_samples=2, cached=False)
  naive_codes, naive_logprobs = naive(params, images, seeds)
  np.testing.assert_array_equal(codes, naive_codes)
  np.testing.assert_allclose(logprobs, naive_logprobs, atol=1e-5, rtol=0)
  # Each code is the argmax of the teacher-forced logits of its own sequence,
  # by a margin that float rounding cannot flip, and the codes vary.
  _, _, apply = test_lm.random_lm()
  logits = apply({"params": params}, images, codes[:, 0])
  np.testing.assert_array_equal(logits.argmax(-1), codes[:, 0])
  second, first = np.moveaxis(np.sort(logits, axis=-1)[..., -2:], -1, 0)
  assert (first - second).min() > 1e-4
  assert len(np.unique(codes)) > 2


@pytest.mark.parametrize("batch", [1, B])
def test_cached_loop_updates_the_cache_in_place(batch):
  """The compiled decoding loop copies no array at its steps. (A KV cache
  laid out (R, H, L, D) made XLA:CPU copy each buffer 4 times a step at
  R = 1.)"""
  model, params, _ = test_lm.random_lm()
  hlo = jax.jit(decode.make_sample_fn(model)).lower(
      params, test_lm._images()[:batch], jnp.arange(batch)).compile().as_text()
  (body,) = re.findall(r"\swhile\(.*?body=%?([\w.\-]+)", hlo)
  loop = re.search(rf"\n%?{re.escape(body)} .*?\n}}\n", hlo, re.S).group(0)
  assert "dynamic-update-slice" in loop  # The cache update, in this body.
  assert not re.findall(r"= f32\[[\d,]*\]\S* copy\(", loop)


def test_tightest_filters_equal_greedy():
  """top_k=1, and top_p below the top probability, draw the argmax."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(1000, V)), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 1000)
  greedy = decode._choose(logits, keys, 0.0, 0, 0.0)
  for top_k, top_p in ((1, 0.0), (0, 1e-6)):
    np.testing.assert_array_equal(
        decode._choose(logits, keys, 1.0, top_k, top_p), greedy)
  # Unfiltered draws at temperature 1 do differ from the argmax.
  assert (decode._choose(logits, keys, 1.0, 0, 0.0) != greedy).mean() > 0.5


def test_keep_mask():
  # Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (in another order).
  logits = jnp.log(jnp.array([[0.0625, 0.5, 0.125, 0.25, 0.0625]]))
  keep = lambda **kw: np.asarray(decode._keep_mask(logits, **kw))[0]
  np.testing.assert_array_equal(keep(top_k=2, top_p=0), [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(keep(top_k=0, top_p=0.5), [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(keep(top_k=0, top_p=0.6), [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(keep(top_k=0, top_p=1e-9), [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(keep(top_k=0, top_p=0.8), [0, 1, 1, 1, 0])
  # The two least likely tokens tie: both are kept, or neither.
  np.testing.assert_array_equal(keep(top_k=0, top_p=0.9), [1, 1, 1, 1, 1])
  np.testing.assert_array_equal(keep(top_k=2, top_p=0.9), [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(keep(top_k=0, top_p=1.0), [1, 1, 1, 1, 1])
  # top_p=1 keeps every token, also where the float32 cumulative sum of the
  # sorted probabilities reaches 1 before the last ones (here at ~4030 of
  # 4097 tokens).
  many = jnp.asarray(3 * np.random.default_rng(0).normal(size=(1, 4097)),
                     jnp.float32)
  assert decode._keep_mask(many, top_k=0, top_p=1.0).all()


def _check_frequencies(codes, p, temperature, top_k, top_p):
  """Token frequencies in `codes` against p (sorted) tempered and filtered.

  Every draw has its own key, so the draws are independent and the
  frequency of a token of probability q has standard deviation
  sqrt(q (1 - q) / n), at most 0.0056 for n = 8000: a correct sampler
  leaves 5 sigma with probability < 1e-6 per token.
  """
  expected = p ** (1 / temperature)
  expected /= expected.sum()
  keep = np.arange(len(p)) < (top_k or len(p))
  if top_p:  # The smallest prefix of mass >= top_p.
    keep &= np.cumsum(expected) - expected < top_p
  expected = np.where(keep, expected, 0) / expected[keep].sum()
  n = codes.size
  freq = np.bincount(np.asarray(codes).ravel(), minlength=V)[:len(p)] / n
  assert freq.sum() == 1  # Nothing outside the support.
  sigma = np.sqrt(expected * (1 - expected) / n)
  np.testing.assert_array_less(np.abs(freq - expected), 5 * sigma + 1e-12)


P = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05])


def test_sampling_frequencies_of_a_known_lm():
  """An LM whose every next-token distribution is P (zero logits kernel,
  bias log P): 16 positions x 500 samples at temperature 2, top-k 3."""
  bias = np.full(V, -1e9, np.float32)
  bias[:len(P)] = np.log(P)
  params, sample = sampler(num_samples=500, temperature=2.0, top_k=3)
  decoder = dict(params["decoder"], LogitsDense={
      "kernel": jnp.zeros((64, V)), "bias": jnp.asarray(bias)})
  codes, logprobs = sample(dict(params, decoder=decoder), test_lm._images(1),
                           jnp.arange(1))
  # Log-probabilities are the model's own, untempered and unfiltered.
  np.testing.assert_allclose(logprobs, np.log(P)[codes], atol=1e-5)
  _check_frequencies(codes, P, 2.0, 3, 0.0)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 0.0), (0.5, 0, 0.8), (1.0, 5, 0.5)])
def test_sampling_frequencies(temperature, top_k, top_p):
  """8000 draws of `_choose` from logits log P."""
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(P, jnp.float32)), (8000, 8))
  keys = jax.random.split(jax.random.key(0), 8000)
  codes = decode._choose(logits, keys, temperature, top_k, top_p)
  _check_frequencies(codes, P, temperature, top_k, top_p)


@pytest.mark.parametrize("autoregressive", [True, False])
def test_samples_do_not_depend_on_the_rest_of_the_batch(autoregressive):
  params, sample = sampler(autoregressive, num_samples=2, temperature=1.0)
  images, seeds = test_lm._images(4), jnp.array([6, 7, 8, 9])
  codes, logprobs = sample(params, images, seeds)
  alone, alone_logprobs = sample(params, images[1:2], seeds[1:2])
  np.testing.assert_array_equal(alone[0], codes[1])
  np.testing.assert_allclose(alone_logprobs[0], logprobs[1], atol=1e-5,
                             rtol=0)
  # The two samples of an image differ, and so do other seeds' samples.
  assert (codes[:, 0] != codes[:, 1]).any()
  assert (sample(params, images, seeds + 4)[0] != codes).any()


def test_key_seeds_and_encode_chunks_change_nothing():
  params, sample = sampler(True, num_samples=2, temperature=1.0)
  images, seeds = test_lm._images(4), jnp.array([6, 7, 8, 9])
  _, chunked = sampler(True, num_samples=2, temperature=1.0, encode_chunk=2)
  np.testing.assert_array_equal(
      chunked(params, images, jax.vmap(jax.random.key)(seeds))[0],
      sample(params, images, seeds)[0])


def test_sharded_batch():
  """On uvimx's (Auto) mesh a sharded batch samples what one device does; on
  an Explicit mesh sample says how to make an Auto one."""
  params, sample = sampler(True, num_samples=2, temperature=1.0)
  images, seeds = test_lm._images(8), jnp.arange(8)

  def sharded(axis_type):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    return jax.device_put((images, seeds), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("data")))

  np.testing.assert_array_equal(
      sample(params, *sharded(jax.sharding.AxisType.Auto))[0],
      sample(params, images, seeds)[0])
  with pytest.raises(ValueError, match="uvimx.sharding.make_mesh"):
    sample(params, *sharded(jax.sharding.AxisType.Explicit))


def test_non_autoregressive_samples_in_one_pass():
  images, seeds = test_lm._images(), jnp.arange(B)
  params, sample = sampler(autoregressive=False, num_samples=3)
  codes, logprobs = sample(params, images, seeds)
  assert codes.shape == logprobs.shape == (B, 3, L)
  model, _, apply = test_lm.random_lm(autoregressive=False)
  logits = apply({"params": params}, images)
  np.testing.assert_array_equal(codes[:, 0], jnp.argmax(logits, -1))
  # One pass: the non-autoregressive sampler has no loop, the other has one.
  loops = lambda m, p: re.findall(r"\b(?:scan|while)\[", str(jax.make_jaxpr(
      lambda p: decode.sample(m, p, images, seeds, temperature=1.0))(p)))
  assert not loops(model, params)
  assert loops(*test_lm.random_lm()[:2])


@pytest.mark.parametrize("options,match", [
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=2.0), "num_samples"),
    (dict(num_samples=True), "num_samples"),
    (dict(temperature=-1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=V + 1), "top_k"), (dict(top_k=2.5), "top_k must be an int"),
    (dict(top_p=1.5), "top_p"),
    (dict(encode_chunk=3), "encode_chunk"),
    (dict(soft_tokens=True, cached=False), "soft_tokens"),
    (dict(seeds=jnp.arange(3)), r"one seed per image, shape \(4,\)"),
    (dict(first_tokens=np.array([0, 1, 2, V])), "first_tokens"),
    (dict(position_ranges=np.tile([5, 5], (L, 1))), r"\[5, 5\).*non-empty"),
    (dict(position_ranges=np.tile([1, V + 1], (L, 1))), "non-empty slice"),
    (dict(position_ranges=np.ones((L + 1, 2), int)), "position_ranges must")])
def test_bad_options_raise(options, match):
  model, params, _ = test_lm.random_lm()
  options = dict(options)
  seeds = options.pop("seeds", jnp.arange(4))
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda p: decode.sample(
        model, p, jnp.zeros((4, 32, 32, 3)), seeds, **options), params)


def test_first_tokens_cached_equals_uncached():
  """Task tokens instead of BOS: the cache and the full decoder still agree."""
  images, seeds, first = test_lm._images(), jnp.arange(B), jnp.array([3, 5])
  params, cached = sampler(num_samples=2)
  codes, logprobs = cached(params, images, seeds, first_tokens=first)
  _, naive = sampler(num_samples=2, cached=False)
  naive_codes, naive_logprobs = naive(params, images, seeds,
                                      first_tokens=first)
  np.testing.assert_array_equal(codes, naive_codes)
  np.testing.assert_allclose(logprobs, naive_logprobs, atol=1e-5, rtol=0)
  assert (codes != cached(params, images, seeds)[0]).any()


def test_position_ranges_restrict_every_position():
  images, seeds = test_lm._images(), jnp.arange(B)
  # Alternating slices [1, 9) and [9, 33), as AiT's token types.
  ranges = np.where(np.arange(L)[:, None] % 2 == 0, [1, 9], [9, V])
  params, sample = sampler(num_samples=3, temperature=1.0, with_logits=True)
  codes, _, logits = sample(params, images, seeds, position_ranges=ranges)
  assert np.all((codes >= ranges[:, 0]) & (codes < ranges[:, 1]))
  ids = np.arange(V)
  outside = (ids < ranges[:, :1]) | (ids >= ranges[:, 1:])  # (L, V)
  # The returned logits are the model's own, outside the slices too: the
  # teacher-forced logits of each sample's codes.
  _, _, apply = test_lm.random_lm()
  for n in range(3):
    np.testing.assert_allclose(
        logits[:, n], apply({"params": params}, images, codes[:, n]),
        atol=1e-4, rtol=0)
  # Greedy: the argmax within the slice, of the teacher-forced logits.
  params, greedy = sampler()
  codes = greedy(params, images, seeds, position_ranges=ranges)[0][:, 0]
  forced = np.asarray(apply({"params": params}, images, codes))
  np.testing.assert_array_equal(
      np.where(outside, -np.inf, forced).argmax(-1), codes)


def test_soft_tokens_with_one_hot_probabilities_equal_hard_decoding():
  """Logits scaled so far apart that the softmax is exactly one-hot."""
  images, seeds = test_lm._images(), jnp.arange(B)
  model, params, _ = test_lm.random_lm()
  sharp = jax.tree.map(lambda x: x, params)
  sharp["decoder"]["LogitsDense"] = jax.tree.map(
      lambda x: x * 1e7, params["decoder"]["LogitsDense"])
  hard = decode.sample(model, sharp, images, seeds, with_logits=True)
  soft = decode.sample(model, sharp, images, seeds, soft_tokens=True,
                       with_logits=True)
  # The top two logits are >= 1e-4 * 1e7 apart: exp underflows to exact 0.
  top2 = np.sort(np.asarray(hard[2]), axis=-1)[..., -2:]
  assert (top2[..., 1] - top2[..., 0]).min() > 200
  np.testing.assert_array_equal(soft[0], hard[0])
  np.testing.assert_allclose(soft[2], hard[2], rtol=1e-6)
  # With the model's own, soft, probabilities the inputs and logits change.
  hard = decode.sample(model, params, images, seeds, with_logits=True)
  soft = decode.sample(model, params, images, seeds, soft_tokens=True,
                       with_logits=True)
  assert np.abs(np.asarray(soft[2]) - np.asarray(hard[2])).max() > 1e-2


def test_parallel_decodes_in_one_pass_equal_to_the_loop():
  """AiT-P: one forward pass = the cached step-by-step loop = training."""
  images, seeds = test_lm._images(), jnp.arange(B)
  model, params, apply = test_lm.random_lm(parallel=True)
  codes, _, logits = decode.sample(model, params, images, seeds,
                                   num_samples=2, with_logits=True)
  encoded = apply({"params": params}, images, method="encode")
  cache = model.apply({"params": params}, encoded, 2,
                      method=model.init_cache)
  step = jax.jit(functools.partial(model.apply, method=model.decode_step))
  looped = []
  for t in range(L):
    # The inputs do not matter: every position sees the parallel token.
    step_logits, cache = step({"params": params}, cache,
                              jnp.full((2 * B,), 7 * t, jnp.int32), t)
    looped.append(step_logits)
  looped = np.stack(looped, 1).reshape(B, 2, L, V)
  np.testing.assert_allclose(logits, looped, atol=1e-5, rtol=0)
  forced = apply({"params": params}, images, test_lm._tokens())
  np.testing.assert_allclose(logits[:, 0], forced, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(codes[:, 0], np.argmax(looped[:, 0], -1))
  assert len(np.unique(codes)) > 2
  loops = re.findall(r"\b(?:scan|while)\[", str(jax.make_jaxpr(
      lambda p: decode.sample(model, p, images, seeds))(params)))
  assert not loops
  assert "EmbedTargets" not in params["decoder"]
