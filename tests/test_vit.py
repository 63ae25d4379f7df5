"""ViT blocks against big_vision's parameter names and UViM's outputs."""
import os

import einops
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvimx.models import vit
from uvimx.models import vit_dense

FIXTURES = "/work/shared/fixtures/big_vision_uvim"
# The stage-I fixture model: width 64, 2 blocks, MLP 128, 4 heads, 8x8 grid.
WIDTH, DEPTH, MLP_DIM, HEADS, TOKENS = 64, 2, 128, 4, 64

needs_fixtures = pytest.mark.skipif(
    not os.path.exists(f"{FIXTURES}/stage1.npz"),
    reason="big_vision UViM fixtures not found")


def _subtree(ckpt, prefix):
  """The nested params under `prefix/` of a flat big_vision .npz."""
  flat = {tuple(k[len(prefix) + 1:].split("/")): ckpt[k]
          for k in ckpt.files if k.startswith(prefix + "/")}
  return flax.traverse_util.unflatten_dict(flat)


def _encoder():
  return vit.Encoder(depth=DEPTH, mlp_dim=MLP_DIM, num_heads=HEADS)


@needs_fixtures
def test_encoder_params_match_big_vision_names_and_shapes():
  ckpt = np.load(f"{FIXTURES}/stage1.npz")
  expected = {k[len("params/encoder/"):]: ckpt[k].shape
              for k in ckpt.files if k.startswith("params/encoder/")}
  params = _encoder().init(jax.random.key(0), jnp.zeros((1, TOKENS, WIDTH)))
  got = {k: v.shape for k, v in flax.traverse_util.flatten_dict(
      params["params"], sep="/").items()}
  assert got == expected


def _numpy_encoder(p, x):
  """A float64 numpy pre-LN encoder: the reference for `vit.Encoder`."""
  def layer_norm(p, x):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]

  def gelu(x):  # The tanh approximation, flax's default.
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  for i in range(DEPTH):
    b = p[f"encoderblock_{i}"]
    a = b["MultiHeadDotProductAttention_0"]
    y = layer_norm(b["LayerNorm_0"], x)
    q, k, v = (np.einsum("bld,dhk->blhk", y, a[n]["kernel"]) + a[n]["bias"]
               for n in ("query", "key", "value"))
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = np.einsum("bhqs,bshk->bqhk", w, v)
    x = x + np.einsum("bqhk,hkd->bqd", y, a["out"]["kernel"]) + a["out"]["bias"]
    m = b["MlpBlock_0"]
    y = layer_norm(b["LayerNorm_1"], x)
    y = gelu(y @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"])
    x = x + y @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]
  return layer_norm(p["encoder_norm"], x)


@needs_fixtures
def test_encoder_with_big_vision_weights_matches_numpy_reference():
  params = _subtree(np.load(f"{FIXTURES}/stage1.npz"), "params/encoder")
  x = np.random.RandomState(0).normal(size=(2, TOKENS, WIDTH)).astype("f4")
  got = jax.jit(_encoder().apply)({"params": params}, x)
  np.testing.assert_allclose(got, _numpy_encoder(params, x),
                             atol=1e-5, rtol=1e-5)


@needs_fixtures
def test_encoder_reproduces_big_vision_uvim_decoder_logits():
  """Runs UViM stage I's decode path (big_vision's outputs are in the fixture)
  with our Encoder as its decoder and a DenseGeneral head per output."""
  ckpt = np.load(f"{FIXTURES}/stage1.npz")
  io = np.load(f"{FIXTURES}/stage1_io.npz")
  p = _subtree(ckpt, "params")
  p = jax.tree.map(jnp.asarray, p)
  # Codewords -> decoder stem -> 4x4 code grid resized to the 8x8 tokens.
  x = io["codewords"][io["code"]] @ p["decoder_stem"]["kernel"]
  x = einops.rearrange(x + p["decoder_stem"]["bias"], "b (h w) c -> b h w c",
                       h=4)
  x = jax.image.resize(x, (2, 8, 8, WIDTH), method="linear")
  ctx = jax.lax.conv_general_dilated(
      io["image"], p["ctx_dec_embedding"]["kernel"], (4, 4), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = x + ctx + p["ctx_dec_embedding"]["bias"]
  x = einops.rearrange(x, "b h w c -> b (h w) c") + p["pos_embedding_decoder"]
  x = _encoder().apply({"params": p["decoder"]}, x)
  for k in ("semantics", "instances"):
    head = p[f"head_{k}"]
    logits = jnp.einsum("btd,dcp->btcp", x, head["kernel"]) + head["bias"]
    np.testing.assert_allclose(logits, io[f"decode_logits/{k}"],
                               atol=1e-4, rtol=1e-4)


def test_attend_matches_flax_attention_values_and_gradients():
  """`attend` normalises after the weighted sum; flax's normalises the
  weights. Same outputs and gradients, a causal mask included."""
  rng = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 3, 5, 8)), jnp.float32)
             for _ in range(3))
  cotangent = jnp.asarray(rng.normal(size=(2, 3, 5, 8)), jnp.float32)
  causal = jnp.tril(jnp.ones((5, 5), bool))
  heads_last = lambda t: jnp.swapaxes(t, 1, 2)

  def ours(q, k, v):
    return jnp.sum(vit.attend(q, k, v, causal) * cotangent)

  def flax_reference(q, k, v):
    out = flax.linen.dot_product_attention(
        *map(heads_last, (q, k, v)), mask=causal)
    return jnp.sum(heads_last(out) * cotangent)

  np.testing.assert_allclose(ours(q, k, v), flax_reference(q, k, v),
                             rtol=1e-5)
  for got, want in zip(jax.grad(ours, (0, 1, 2))(q, k, v),
                       jax.grad(flax_reference, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # The first query sees only the first key: its output is that value.
  np.testing.assert_allclose(vit.attend(q, k, v, causal)[:, :, 0],
                             v[:, :, 0], atol=1e-6)


def test_learned_posemb_init_and_sincos_values():
  class Posemb(flax.linen.Module):
    typ: str

    @flax.linen.compact
    def __call__(self):
      return vit.get_posemb(self, self.typ, (16, 16), 256, "pos_embedding")

  learned, params = Posemb("learn").init_with_output(jax.random.key(0))
  assert learned.shape == params["params"]["pos_embedding"].shape == (
      1, 256, 256)
  assert np.std(learned) == pytest.approx(1 / 16, rel=0.05)

  fixed, params = Posemb("sincos2d").init_with_output(jax.random.key(0))
  assert not params and fixed.shape == (1, 256, 256)
  # Token (y=0, x=0) is sin(0), cos(0), sin(0), cos(0) on all frequencies;
  # token (y=0, x=1) has x-frequencies 1 ... 1e-4, its y-quarters unchanged.
  np.testing.assert_allclose(fixed[0, 0], np.repeat([0., 1., 0., 1.], 64),
                             atol=1e-7)
  omega = 1e-4 ** (np.arange(64) / 63)
  np.testing.assert_allclose(fixed[0, 1, :128],
                             np.concatenate([np.sin(omega), np.cos(omega)]),
                             atol=1e-6)
  np.testing.assert_allclose(fixed[0, 1, 128:], fixed[0, 0, 128:])
  with pytest.raises(ValueError, match="Unknown posemb"):
    Posemb("sincos").init(jax.random.key(0))
  # Width 4: one frequency per quarter, whose spacing 1 / (n - 1) is undefined.
  with pytest.raises(ValueError, match="at least 8, got 4"):
    vit.posemb_sincos_2d(2, 2, 4)


def test_vit_dense_param_names_and_output_layout():
  model = vit_dense.Model(patch_size=(8, 4), input_size=(16, 32), width=32,
                          depth=1, mlp_dim=64, num_heads=2,
                          outputs={"semantics": 9, "depth": 5})
  image = jnp.zeros((2, 16, 32, 3))
  logits, variables = model.init_with_output(jax.random.key(0), image)
  shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(
      variables["params"], sep="/").items()}
  assert shapes["embedding/kernel"] == (8, 4, 3, 32)
  assert shapes["pos_embedding"] == (1, 16, 32)
  assert shapes["head_semantics/kernel"] == (32, 9, 32)
  assert shapes["head_depth/bias"] == (5, 32)
  assert "encoder/encoder_norm/scale" in shapes
  assert {k: v.shape for k, v in logits.items()} == {
      "semantics": (2, 16, 9, 32), "depth": (2, 16, 5, 32)}
  with pytest.raises(ValueError, match="input_size"):
    model.apply(variables, jnp.zeros((2, 32, 32, 3)))
