"""Stage-II LM: big_vision parity, teacher forcing, KV cache, non-AR mode."""
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvimx import checkpoint
from uvimx import utils
from uvimx.models import lm

FIXTURES = "/work/shared/fixtures/big_vision_uvim"
# big_vision's vtt.Model arguments of the fixture (its config.json "stage2").
FIXTURE_LM = dict(patches={"size": (4, 4)}, num_heads=4, num_layers=2,
                  mlp_dim=128, emb_dim=64, vocab_size=33, seq_len=16,
                  input_size=(32, 32), posemb_type="learn")
B, L, V = 2, 16, 33

needs_fixtures = pytest.mark.skipif(
    not os.path.exists(f"{FIXTURES}/stage2.npz"),
    reason="big_vision UViM fixtures not found")


def fixture_model_and_params():
  """The fixture LM and its big_vision params, loaded by name."""
  model = lm.Model(**FIXTURE_LM)
  template = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
      jnp.zeros((1, L), jnp.int32)))
  ckpt = checkpoint.load_big_vision_npz(f"{FIXTURES}/stage2.npz",
                                        {"params": template["params"]})
  return model, ckpt["params"]


@functools.cache
def random_lm(**kwargs):
  """(model, params, jitted apply) of the fixture-sized LM with `kwargs`.

  Random params as the fixture's (LayerNorm scales 1 + 0.1 N, query and key
  kernels 0.3 N, biases 0.01 N, position embeddings 0.5 N, others 0.1 N):
  the logits layer is not zero and greedy decoding gives varied codes.
  Cached (compiled once per session): do not modify the params in place.
  """
  model = lm.Model(**{**FIXTURE_LM, **kwargs})
  # Shapes only: compiling model.init takes seconds.
  shapes = jax.eval_shape(model.init, jax.random.key(0), _images(1),
                          _tokens(1))["params"]
  rng = np.random.default_rng(1)

  def draw(path, x):
    name = utils.path_name(path)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    if name.endswith("scale"):
      return 1 + 0.1 * noise
    std = (0.3 if re.search("(query|key)/kernel$", name) else
           0.01 if name.endswith("bias") else
           0.5 if "pos_embedding" in name else 0.1)
    return std * noise
  params = jax.tree_util.tree_map_with_path(draw, shapes)
  # Eager flax is slow: jit, with the method given by name.
  return model, params, jax.jit(model.apply, static_argnames=("method",
                                                               "train"))


def _images(n=B, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _tokens(n=B, seed=0):
  return np.random.default_rng(seed).integers(1, V, (n, L), np.int32)


@needs_fixtures
def test_logits_match_big_vision():
  model, params = fixture_model_and_params()
  io = np.load(f"{FIXTURES}/stage2_io.npz")
  logits = jax.jit(model.apply)({"params": params}, io["image"], io["tokens"])
  assert logits.shape == io["logits"].shape
  # big_vision across jax versions alone differs by up to 1.05e-5 here.
  np.testing.assert_allclose(logits, io["logits"], atol=1e-4, rtol=0)


def test_init_logits_are_zero():
  model, _, apply = random_lm()
  # The "unsafe_rbg" generator: this init compiles twice as fast.
  variables = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"),
                                  _images(), _tokens())
  assert not variables["params"]["decoder"]["LogitsDense"]["kernel"].any()
  np.testing.assert_array_equal(apply(variables, _images(), _tokens()), 0)


def test_teacher_forcing_is_causal_and_shifted():
  _, params, apply = random_lm()
  v = {"params": params}
  images, tokens = _images(), _tokens()
  logits = apply(v, images, tokens)
  changed = tokens.copy()
  changed[:, 5] = tokens[:, 5] % (V - 1) + 1
  logits2 = apply(v, images, changed)
  # logits[:, t] predicts tokens[:, t] from tokens[:, :t] only.
  np.testing.assert_array_equal(logits[:, :6], logits2[:, :6])
  assert np.abs(logits[:, 6:] - logits2[:, 6:]).min(axis=-1).max() > 1e-3


def test_cached_steps_equal_teacher_forcing():
  model, params, _ = random_lm()

  @jax.jit
  def full_and_stepped(images, tokens):
    v = {"params": params}
    encoded = model.apply(v, images, method=model.encode)
    cache = model.apply(v, encoded, method=model.init_cache)
    previous = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1].T

    def step(cache, t):
      logits, cache = model.apply(v, cache, previous[t], t,
                                  method=model.decode_step)
      return cache, logits
    _, stepped = jax.lax.scan(step, cache, jnp.arange(L))
    full = model.apply(v, encoded, tokens, method=model.decode)
    return full, jnp.swapaxes(stepped, 0, 1)

  full, stepped = full_and_stepped(_images(), _tokens())
  np.testing.assert_allclose(stepped, full, atol=1e-5, rtol=0)


def test_samples_share_their_image():
  """Several sequences per image (image-major) decode as if each had its own
  copy of the image."""
  model, params, _ = random_lm()

  @jax.jit
  def folded_and_copied(images, tokens):
    v = {"params": params}
    encoded = model.apply(v, images, method=model.encode)
    copied = jnp.repeat(encoded, 3, axis=0)
    return (model.apply(v, encoded, tokens, method=model.decode),
            model.apply(v, copied, tokens, method=model.decode))

  folded, copied = folded_and_copied(_images(), _tokens(3 * B))
  np.testing.assert_allclose(folded, copied, atol=1e-5, rtol=0)


def test_non_autoregressive_predicts_from_positions_only():
  _, params, apply = random_lm(autoregressive=False)
  assert "EmbedTargets" not in params["decoder"]
  v = {"params": params}
  logits = apply(v, _images())
  assert logits.shape == (B, L, V)
  np.testing.assert_array_equal(apply(v, _images(), _tokens()), logits)
  # No causal mask: the first position depends on later positions' embeddings.
  later = dict(params, pos_embedding_decoder=params[
      "pos_embedding_decoder"].copy())
  later["pos_embedding_decoder"][:, -1] = np.linspace(-1, 1, 64)
  assert np.abs(apply({"params": later}, _images())[:, 0]
                - logits[:, 0]).max() > 1e-3


def test_dropout_only_when_training():
  _, params, apply = random_lm()
  model = lm.Model(**FIXTURE_LM, dropout_rate=0.5)
  v, images, tokens = {"params": params}, _images(), _tokens()
  evaluated, trained = jax.jit(lambda rng: (
      model.apply(v, images, tokens),
      model.apply(v, images, tokens, train=True, rngs={"dropout": rng})))(
          jax.random.key(0, impl="unsafe_rbg"))  # Compiles faster.
  np.testing.assert_allclose(evaluated, apply(v, images, tokens), atol=1e-4)
  assert np.abs(trained - evaluated).max() > 1e-3


def test_decoder_block_drops_out_as_big_vision():
  """Dropout after the attentions but not after the MLP (vtt's block)."""
  block = lm.EncoderDecoderBlock(width=8, mlp_dim=16, num_heads=2,
                                 dropout_rate=0.5)
  run = lambda m, x, encoded: m(x, m.cross_kv(encoded), None, 0, None,
                                deterministic=False)[0]
  x, encoded = jnp.ones((2, 3, 8)), jnp.ones((2, 5, 8))
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  params = block.init(rngs, x, encoded, method=run)["params"]
  # No attention output; an MLP whose output is its last bias, which the
  # MLP's own dropout (before its last Dense) cannot touch.
  for attention in ("SelfAttn", "CrossAttn"):
    params[attention]["out"]["kernel"] *= 0
  params["MLP"]["Dense_1"]["kernel"] *= 0
  params["MLP"]["Dense_1"]["bias"] = jnp.arange(1.0, 9.0)
  out = block.apply({"params": params}, x, encoded, method=run,
                    rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(out, x + jnp.arange(1.0, 9.0))


def test_bad_inputs_raise():
  _, params, apply = random_lm()
  v = {"params": params}
  with pytest.raises(ValueError, match="input_size"):
    apply(v, jnp.zeros((1, 64, 64, 3)), _tokens(1))
  with pytest.raises(ValueError, match="targets"):
    apply(v, _images())
  with pytest.raises(ValueError, match="targets"):
    apply(v, _images(), _tokens()[:, :4])
