"""UViM stage I: big_vision parity, options, code dropout, sharded training."""
from functools import partial
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvimx import checkpoint
from uvimx import sharding
from uvimx.models import uvim

FIXTURES = "/work/shared/fixtures/big_vision_uvim"
OUTPUTS = ("semantics", "instances")

needs_fixtures = pytest.mark.skipif(
    not os.path.exists(f"{FIXTURES}/stage1.npz"),
    reason="big_vision UViM fixtures not found")


def _fixture_model():
  """The fixture's stage-I model (its config.json constructor arguments)."""
  with open(f"{FIXTURES}/config.json") as f:
    kw = json.load(f)["stage1"]["config_kwargs"]
  assert kw.pop("statistics_axis_name") is None  # pmap only; jit needs none.
  for k in ("inputs", "outputs"):
    kw[k] = {name: tuple(shape) for name, shape in kw[k].items()}
  return uvim.Model(**kw)


@pytest.fixture(scope="module")
def fixture():
  """(model, big_vision variables loaded by name, stage1_io arrays)."""
  model = _fixture_model()
  io = dict(np.load(f"{FIXTURES}/stage1_io.npz"))
  x = {k: io[f"x/{k}"] for k in OUTPUTS}
  template = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, ctx=io["image"]))
  variables = checkpoint.load_big_vision_npz(f"{FIXTURES}/stage1.npz",
                                             template)
  return model, variables, io


@needs_fixtures
def test_reproduces_big_vision_outputs(fixture):
  model, variables, io = fixture
  x = {k: io[f"x/{k}"] for k in OUTPUTS}

  @jax.jit
  def run(variables, x, code, image):
    apply = partial(model.apply, variables)
    return {"encode": apply(x, ctx=image, method=model.encode)[1],
            "codewords": apply(method=model.get_codewords),
            "decode": apply(code, ctx=image, discrete_input=True,
                            method=model.decode)[0],
            "call": apply(x, ctx=image)}

  got = run(variables, x, io["code"], io["image"])
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(got["encode"]["code"], io["code"])
  close(got["encode"]["bottleneck"], io["bottleneck"])
  close(got["encode"]["bottleneck_q"], io["bottleneck_q"])
  close(got["codewords"], io["codewords"])
  logits, out = got["call"]
  np.testing.assert_array_equal(out["code"], io["code"])
  for k in OUTPUTS:
    close(got["decode"][k], io[f"decode_logits/{k}"])
    close(logits[k], io[f"call_logits/{k}"])


# Pre-linen module numbers (per block, across types) and stage I's old
# `Encoder`/`Decoder`, which big_vision's `vit.load` renames.
_OLD_NAMES = (("params/encoder/", "params/Encoder/"),
              ("params/decoder/", "params/Decoder/"),
              ("/LayerNorm_1/", "/LayerNorm_2/"),
              ("/MultiHeadDotProductAttention_0/",
               "/MultiHeadDotProductAttention_1/"),
              ("/MlpBlock_0/", "/MlpBlock_3/"))


@needs_fixtures
def test_reads_older_big_vision_names(fixture, tmp_path):
  _, variables, _ = fixture
  with np.load(f"{FIXTURES}/stage1.npz") as npz:
    arrays = dict(npz)
  old = {}
  for name, array in arrays.items():
    for new_name, old_name in _OLD_NAMES:
      name = name.replace(new_name, old_name)
    old[name] = array
  assert "params/Encoder/encoderblock_0/MlpBlock_3/Dense_0/kernel" in old
  np.savez(tmp_path / "old.npz", **old)
  template = jax.tree.map(np.asarray, variables)
  jax.tree.map(np.testing.assert_array_equal,
               checkpoint.load_big_vision_npz(str(tmp_path / "old.npz"),
                                              template), template)


def test_unreadable_npz_raises(tmp_path):
  html, short = tmp_path / "page.npz", tmp_path / "short.npz"
  html.write_text("<html>404 Not Found</html>")
  np.savez(short, a=np.zeros(1000))
  short.write_bytes(short.read_bytes()[:500])  # A download cut short.
  for path in (html, short):
    with pytest.raises(ValueError, match="not a readable .npz"):
      checkpoint.load_big_vision_npz(str(path))


@needs_fixtures
def test_sharded_training_step_like_one_device(fixture):
  model, variables, _ = fixture
  rng = np.random.RandomState(0)
  batch = 8  # One example per device.
  x = {k: np.eye(c, dtype="f4")[rng.randint(0, c, (batch, 64, p))].swapaxes(
      -1, -2) for k, (c, p) in model.inputs.items()}
  image = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype("f4")
  rngs = {"dropout": jax.random.key(1), "vqvae": jax.random.key(2)}

  @jax.jit
  def step(variables, x, image):
    """Gradients of a loss on the logits, the new state and the outputs."""
    def loss(params):
      (logits, out), new = model.apply(
          {**variables, "params": params}, x, ctx=image, train=True,
          rngs=rngs, mutable=["state"])
      return sum(jnp.mean(v ** 2) for v in logits.values()), (out, new)
    return jax.grad(loss, has_aux=True)(variables["params"])

  grads, (out, new) = step(variables, x, image)
  mesh = sharding.make_mesh([("data", -1)])
  s_grads, (s_out, s_new) = step(
      jax.device_put(variables, sharding.replicated(mesh)),
      *jax.device_put((x, image), sharding.batch_sharding(mesh)))

  # One EMA step over the whole batch (no count fell below min_count): the
  # discounted old totals plus the batch's codes and standardised vectors.
  m, state = model.dict_momentum, variables["state"]
  code, vectors = np.asarray(out["code"]), np.asarray(out["bottleneck"])
  onehot = np.eye(model.dict_size)[code].reshape(-1, model.dict_size)
  total = m * state["counts"] + onehot.sum(0)
  np.testing.assert_allclose(new["state"]["counts"], total, rtol=1e-6)
  np.testing.assert_allclose(
      new["state"]["dictionary"],
      m * state["dictionary"] + onehot.T @ vectors.reshape(-1, 32),
      atol=1e-5)
  assert float(out["codebook_max_ratio"]) == pytest.approx(
      onehot.sum(0).max() / code.size)
  assert float(out["codebook_zeros_ratio"]) == pytest.approx(
      np.mean(onehot.sum(0) == 0))
  # The straight-through estimator carries the loss back into the oracle.
  for name in ("encoder_head", "embedding_semantics", "ctx_enc_embedding"):
    assert np.abs(grads[name]["kernel"]).max() > 0, name

  # 8 devices: the same codes, state (global sums), gradients and outputs,
  # code dropout included.
  assert s_new["state"]["dictionary"].sharding.is_fully_replicated
  np.testing.assert_array_equal(s_out["code"], code)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               (grads, out, new), (s_grads, s_out, s_new))

  # A codeword whose count falls below min_count takes half of the most
  # used one's (the other counts stay above 0.5 * 0.995).
  counts = state["counts"].copy()
  unused = np.setdiff1d(np.arange(model.dict_size), code)[0]
  counts[unused] = 0.05
  _, (_, new) = step({**variables, "state": {**state, "counts": counts}},
                     x, image)
  expected = m * counts + onehot.sum(0)
  expected[[unused, expected.argmax()]] = expected.max() / 2
  np.testing.assert_allclose(new["state"]["counts"], expected, rtol=1e-6)


def _small_model(**kw):
  """A tiny model with an image-aware oracle; `kw` overrides its arguments."""
  kw = {"inputs": {"a": (3, 4)}, "outputs": {"a": (3, 4), "b": (2, 4)},
        "input_size": (8, 8), "patch_size": (2, 2), "code_len": 4,
        "width": 16, "enc_depth": 1, "dec_depth": 1, "mlp_dim": 32,
        "num_heads": 2, "dict_size": 8, "codeword_dim": 8,
        "with_encoder_ctx": True, **kw}
  return uvim.Model(**kw)


def _small_inputs(batch=2):
  rng = np.random.RandomState(0)
  return ({"a": rng.normal(size=(batch, 16, 3, 4)).astype("f4")},
          rng.normal(size=(batch, 8, 8, 3)).astype("f4"))


def _template(model, x, ctx):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, ctx=ctx))


@pytest.fixture(scope="module")
def small_variables():
  """Random variables for `_small_model()`, made without compiling `init`:
  as in the big_vision fixture, every leaf random (heads included)."""
  rng = np.random.RandomState(0)
  return jax.tree.map(
      lambda a: rng.uniform(0.5, 2, a.shape).astype(a.dtype),
      _template(_small_model(), *_small_inputs()))


def test_param_names_of_the_options():
  x, image = _small_inputs()
  shapes = lambda model: {
      k: v.shape for k, v in flax.traverse_util.flatten_dict(
          _template(model, x, image), sep="/").items()}
  got = shapes(_small_model())
  # Learned token mixing: 16 tokens <-> 4 codewords.
  assert got["params/bottleneck_downsample"] == (16, 4)
  assert got["params/bottleneck_upsample"] == (4, 16)
  assert got["params/embedding_a/kernel"] == (3, 4, 16)
  assert got["params/head_b/kernel"] == (16, 2, 4)
  assert got["params/ctx_enc_embedding/kernel"] == (2, 2, 3, 16)
  assert got["state/dictionary"] == (8, 8)
  assert got["state/counts"] == (8,)
  assert not any("ctx_dec" in k for k in got)

  got = shapes(_small_model(posemb="sincos2d", bottleneck_resize=True,
                            with_encoder_ctx=False, with_decoder_ctx=True))
  assert not any("bottleneck" in k or "pos_embedding" in k or "ctx_enc" in k
                 for k in got)
  assert got["params/ctx_dec_embedding/kernel"] == (2, 2, 3, 16)


def test_quantize_false_and_zero_decoder_seq(small_variables):
  x, image = _small_inputs()
  model = _small_model(quantize=False, zero_decoder_seq=True)

  @jax.jit
  def run(variables):
    decode = lambda code: model.apply(variables, code, discrete_input=True,
                                      method=model.decode)[0]
    return (model.apply(variables, x, ctx=image, method=model.encode),
            decode(jnp.zeros((2, 4), int)), decode(jnp.ones((2, 4), int)))

  (bottleneck, out), logits_0, logits_1 = run(small_variables)
  np.testing.assert_array_equal(bottleneck, out["bottleneck"])
  np.testing.assert_array_equal(out["bottleneck_q"], out["bottleneck"])
  assert out["code"].shape == (2, 4)
  # The base model alone: the logits do not depend on the code.
  jax.tree.map(np.testing.assert_array_equal, logits_0, logits_1)


@pytest.mark.parametrize("mode", ["prefix", "random"])
def test_code_dropout_mask(mode):
  batch, code_len = 4000, 16
  key = jax.random.key(0)
  mask = np.asarray(uvim.code_dropout_mask(key, (batch, code_len), mode))
  prefix = np.asarray(uvim.code_dropout_mask(key, (batch, code_len), "prefix"))
  # Both keep, per example, the positions of importance (16 - i) / 17 above
  # one uniform threshold: the same number, on average half of the code.
  np.testing.assert_array_equal(mask.sum(1), prefix.sum(1))
  assert mask.mean() == pytest.approx(0.5, abs=0.01)
  is_prefix = np.all(np.diff(mask.astype(int), axis=1) <= 0, axis=1)
  if mode == "prefix":
    assert is_prefix.all()
    rate = (code_len - np.arange(code_len)) / (code_len + 1)
  else:  # Shuffled per example: every position kept half of the time.
    assert is_prefix.mean() < 0.5
    rate = np.full(code_len, 0.5)
  # 4000 examples: the binomial standard deviation is at most 0.008.
  np.testing.assert_allclose(mask.mean(0), rate, atol=0.03)


def test_code_dropout_rate_spares_the_other_examples():
  batch, code_len = 4000, 16
  key = jax.random.key(0)
  every = np.asarray(uvim.code_dropout_mask(key, (batch, code_len), "random"))
  quarter = np.asarray(
      uvim.code_dropout_mask(key, (batch, code_len), "random", rate=0.25))
  whole = quarter.all(1)
  # An example is dropped out as at rate 1, or keeps its whole code.
  np.testing.assert_array_equal(quarter[~whole], every[~whole])
  # Spared with probability 0.75; a dropped-out one keeps everything when
  # its threshold falls under the last importance, 1/17: 0.75 + 0.25 / 17.
  assert whole.mean() == pytest.approx(0.75 + 0.25 / 17, abs=0.03)


def test_code_dropout_zeroes_code_positions_in_training_only(small_variables):
  model = _small_model(code_dropout="prefix")
  code = jnp.ones((64, 4), int)

  @jax.jit
  def decoder_stem_outputs(variables):
    def run(train):
      _, state = model.apply(
          variables, code, discrete_input=True, train=train,
          rngs={"dropout": jax.random.key(3)}, method=model.decode,
          capture_intermediates=True)
      return state["intermediates"]["decoder_stem"]["__call__"][0]
    return run(True), run(False)

  train, test = decoder_stem_outputs(small_variables)
  # A dropped (zeroed) codeword leaves only the stem's bias.
  bias = small_variables["params"]["decoder_stem"]["bias"]
  kept = np.any(train != bias, axis=-1)
  assert np.all(np.diff(kept.astype(int), axis=1) <= 0)  # A prefix.
  assert 0 < kept.mean() < 1
  assert np.all(np.any(test != bias, axis=-1))


@pytest.mark.parametrize("kw, match", [
    (dict(code_dropout="drop"), "code_dropout"),
    (dict(code_dropout_rate=1.5), "code_dropout_rate"),
    (dict(min_count=0.0), "min_count must be > 0"),
    (dict(bottleneck_resize=True, code_len=8), "square"),
    (dict(input_size=(9, 8)), "multiple"),
    (dict(with_decoder_ctx=True), "ctx="),
])
def test_config_errors(kw, match):
  x, _ = _small_inputs()
  with pytest.raises(ValueError, match=match):
    _template(_small_model(**kw), x, None)
