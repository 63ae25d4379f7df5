"""Tests for uvimx.optim against hand-computed numbers."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from uvimx import optim


def _params(value=2.0):
  """Two "layers"; values are constant so that weight decay is easy to read."""
  full = lambda *shape: jnp.full(shape, value)
  return {"encoder": {"kernel": full(3, 2), "bias": full(2)},
          "head": {"kernel": full(2, 4), "bias": full(4)}}


def _ones_update(config, total_steps=10, steps=1, params=None):
  """Returns the updates of the last of `steps` updates with all-ones grads."""
  params = _params() if params is None else params
  tx, _ = optim.make(config, params, total_steps=total_steps)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return updates


def _sched(total_steps=100, **schedule):
  fn = optim.create_schedule(schedule, total_steps=total_steps)
  return lambda step: float(fn(step))


def test_warmup_then_cosine():
  # 10 warmup steps of 100: decay runs over steps 10..100, midpoint 55.
  s = _sched(warmup_steps=10, decay_type="cosine")
  assert s(0) == 0.0
  assert s(5) == pytest.approx(0.5)
  assert s(10) == pytest.approx(1.0)
  assert s(55) == pytest.approx(0.5)
  assert s(100) == pytest.approx(0.0, abs=1e-7)
  # e + (1 - e) * (1 + cos(pi/2)) / 2 with e = 0.2.
  s = _sched(warmup_steps=10, decay_type="cosine", linear_end=0.2)
  assert s(55) == pytest.approx(0.6)
  assert s(100) == pytest.approx(0.2)


def test_linear_rsqrt_constant_cooldown():
  s = _sched(warmup_steps=10, decay_type="linear", linear_end=0.1)
  assert s(55) == pytest.approx(0.55)  # 0.1 + 0.9 * 0.5
  assert s(100) == pytest.approx(0.1)
  # sqrt(k / (k + t - w)) = sqrt(30 / 60) at 30 steps after warmup.
  s = _sched(warmup_steps=10, decay_type="rsqrt", timescale=30)
  assert s(5) == pytest.approx(0.5)
  assert s(10) == pytest.approx(1.0)
  assert s(40) == pytest.approx(np.sqrt(0.5))
  s = _sched(decay_type="rsqrt", timescale=30, cooldown_steps=20)
  assert s(90) == pytest.approx(np.sqrt(30 / 120) * 0.5)
  assert s(100) == 0.0
  s = _sched()  # No schedule at all: constant, no warmup.
  assert s(0) == s(100) == 1.0


def test_warmup_epochs_and_logged_lr():
  config = dict(optax_name="identity", lr=0.1,
                schedule=dict(warmup_epochs=2, decay_type="linear"))
  # 2 epochs of 1000 examples at batch size 100 = 20 warmup steps.
  _, (fn,) = optim.make(config, _params(), total_steps=120, data_size=1000,
                        batch_size=100)
  assert float(fn(10)) == pytest.approx(0.05)
  assert float(fn(20)) == pytest.approx(0.1)
  assert float(fn(70)) == pytest.approx(0.05)


def test_lr_mults_and_frozen():
  config = ml_collections.ConfigDict(dict(
      optax_name="identity", lr=0.1,
      schedule=[("encoder/bias", None), (".*", dict(decay_type="constant"))],
      lr_mults=[("head/.*", 3.0)]))
  updates = _ones_update(config)
  np.testing.assert_allclose(updates["encoder"]["kernel"], -0.1)
  np.testing.assert_array_equal(updates["encoder"]["bias"], 0.0)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.3)
  np.testing.assert_allclose(updates["head"]["bias"], -0.3)


def test_weight_decay_follows_schedule():
  # p = 2, g = 1; after one update the linear schedule is at 1 - 1/10.
  # kernel: -s * (lr * g + wd * p) = -0.9 * (0.1 + 0.01 * 2); bias: -0.9 * 0.1.
  config = dict(optax_name="identity", lr=0.1, wd=0.01,
                schedule=dict(decay_type="linear"))
  updates = _ones_update(config, total_steps=10, steps=2)
  np.testing.assert_allclose(updates["encoder"]["kernel"], -0.108, rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.108, rtol=1e-6)
  np.testing.assert_allclose(updates["encoder"]["bias"], -0.09, rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["bias"], -0.09, rtol=1e-6)


def test_wd_mults_lr_mults_and_frozen_together():
  # wd is not scaled by lr_mults, and frozen params get no decay either.
  config = dict(optax_name="identity", lr=0.1, wd=0.01,
                wd_mults=[("head/.*", 2.0)], lr_mults=[("head/bias", 3.0)],
                schedule=[("encoder/kernel", None), (".*", {})])
  updates = _ones_update(config)
  np.testing.assert_array_equal(updates["encoder"]["kernel"], 0.0)
  np.testing.assert_allclose(updates["encoder"]["bias"], -0.1)
  np.testing.assert_allclose(updates["head"]["kernel"], -(0.1 + 0.04))
  np.testing.assert_allclose(updates["head"]["bias"], -(0.3 + 0.04))


def test_frozen_params_have_no_optimizer_state():
  params = {"small": jnp.zeros((3,)), "large": jnp.zeros((1000,))}
  config = dict(optax_name="scale_by_adam", lr=0.1,
                schedule=[("large", None), (".*", {})])
  tx, sched_fns = optim.make(config, params, total_steps=10)
  assert len(sched_fns) == 1
  state = tx.init(params)
  adam = [s for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  # count, mu and nu of "small" only.
  assert sum(x.size for x in jax.tree.leaves(adam)) == 1 + 3 + 3


def test_grad_clip_norm():
  # The frozen leaf's huge gradient must not count towards the norm.
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((4,)), "c": jnp.zeros((2,))}
  config = dict(optax_name="identity", lr=1.0, grad_clip_norm=1.0,
                schedule=[("c", None), (".*", {})])
  tx, _ = optim.make(config, params, total_steps=10)
  grads = {"a": jnp.ones((3,)), "b": jnp.ones((4,)), "c": jnp.full((2,), 1e6)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], -1 / np.sqrt(7), rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -1 / np.sqrt(7), rtol=1e-6)
  np.testing.assert_array_equal(updates["c"], 0.0)
  small = jax.tree.map(lambda g: g / 10, grads)  # Norm 0.26: left alone.
  updates, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], -0.1, rtol=1e-6)


def _adafactor_steps(grads_per_step, **kw):
  """Runs `optim.scale_by_adafactor` on one param, returns all updates."""
  tx = optim.scale_by_adafactor(**kw)
  param = jnp.zeros(grads_per_step[0].shape)
  state = tx.init(param)
  updates = []
  for g in grads_per_step:
    u, state = tx.update(jnp.asarray(g), state, param)
    updates.append(np.asarray(u))
  return updates, state


def _beta2(t, decay_rate=0.8, cap=0.999):
  """Second-moment decay at (0-based) step t."""
  return min(cap, 1.0 - (t + 1.0) ** -decay_rate)


def _grads(shape, n=2):
  return list(np.random.default_rng(0).normal(size=(n, *shape)))


def test_adafactor_factored_matches_paper():
  # Adafactor (Shazeer & Stern 2018, Alg. 4) for an n x m matrix:
  #   R = b R + (1 - b) (G^2 + eps) 1_m,  C = b C + (1 - b) 1_n^T (G^2 + eps),
  #   V = R C / (1_n^T R),  U = G / sqrt(V).
  # 32 x 48: both dims >= min_dim_size_to_factor = 32, so it is factored.
  grads = _grads((32, 48))
  updates, state = _adafactor_steps(grads, momentum=None)
  r, c = np.zeros((32, 1)), np.zeros((1, 48))
  for t, (g, u) in enumerate(zip(grads, updates)):
    b = _beta2(t)  # 0 at the first step, 1 - 2^-0.8 at the second.
    r = b * r + (1 - b) * (g**2 + 1e-30).sum(axis=1, keepdims=True)
    c = b * c + (1 - b) * (g**2 + 1e-30).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(u, g / np.sqrt(r * c / r.sum()), rtol=1e-4)
  factored = [s for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, optax.FactoredState))
              if isinstance(s, optax.FactoredState)]
  assert factored[0].v_row.shape == (32,) and factored[0].v_col.shape == (48,)


def test_adafactor_unfactored_vector_and_small_matrix():
  # V = b V + (1 - b) (G^2 + eps), U = G / sqrt(V); 2 x 48 is too thin to
  # factor. The first step has b = 0, hence U = sign(G).
  for shape in [(48,), (2, 48)]:
    grads = _grads(shape)
    updates, _ = _adafactor_steps(grads, momentum=None)
    np.testing.assert_allclose(updates[0], np.sign(grads[0]), rtol=1e-6)
    b = _beta2(1)
    v = b * grads[0]**2 + (1 - b) * grads[1]**2
    np.testing.assert_allclose(updates[1], grads[1] / np.sqrt(v), rtol=1e-5)


def test_adafactor_beta2_cap_and_clipping():
  # With cap 0.3 < 1 - 2^-0.8 = 0.43, the second step uses b = 0.3.
  grads = _grads((48,))
  updates, _ = _adafactor_steps(grads, momentum=None, beta2_cap=0.3,
                                clipping_threshold=0.5)
  # The first update, sign(G), has RMS 1: clipped to RMS 0.5.
  np.testing.assert_allclose(updates[0], 0.5 * np.sign(grads[0]), rtol=1e-6)
  u = grads[1] / np.sqrt(0.3 * grads[0]**2 + 0.7 * grads[1]**2)
  u = u / max(1.0, np.sqrt(np.mean(u**2)) / 0.5)
  np.testing.assert_allclose(updates[1], u, rtol=1e-5)


def test_adafactor_momentum():
  # m = 0.9 m + 0.1 u, without bias correction.
  grads = _grads((48,))
  plain, _ = _adafactor_steps(grads, momentum=None)
  updates, state = _adafactor_steps(grads, momentum=0.9,
                                    dtype_momentum=jnp.float32)
  np.testing.assert_allclose(updates[0], 0.1 * plain[0], rtol=1e-6)
  np.testing.assert_allclose(
      updates[1], 0.9 * 0.1 * plain[0] + 0.1 * plain[1], rtol=1e-5)
  _, state = _adafactor_steps(grads)  # Default momentum buffer is bf16.
  ema = [s for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, optax.EmaState))
         if isinstance(s, optax.EmaState)]
  assert ema[0].ema.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["scale_by_adafactor",
                                  "big_vision.scale_by_adafactor"])
def test_make_finds_adafactor(name):
  params = {"w": jnp.zeros((48,))}
  config = dict(optax_name=name, optax=dict(momentum=None), lr=0.01)
  tx, _ = optim.make(config, params, total_steps=10)
  g = {"w": jnp.asarray(_grads((48,))[0])}
  updates, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.01 * np.sign(g["w"]), rtol=1e-6)


def test_works_on_shapes():
  params = {"enc": {"kernel": jnp.ones((32, 48)), "bias": jnp.ones((48,))},
            "head": {"kernel": jnp.ones((48, 5))}}
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        params)
  config = dict(optax_name="scale_by_adafactor", lr=0.01, wd=1e-4,
                grad_clip_norm=1.0, lr_mults=[("head/.*", 0.1)],
                schedule=[("enc/bias", None),
                          (".*", dict(warmup_steps=2, decay_type="cosine"))])
  tx, _ = optim.make(config, shapes, total_steps=10)
  state_shapes = jax.eval_shape(tx.init, shapes)
  state = tx.init(params)
  assert (jax.tree.structure(state_shapes) == jax.tree.structure(state))
  assert jax.tree.map(lambda s: (s.shape, s.dtype), state_shapes) == (
      jax.tree.map(lambda x: (x.shape, x.dtype), state))
  updates, _ = jax.jit(tx.update)(params, state, params)
  # Warmup: the first update is 0; frozen stays 0 anyway.
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("change, message", [
    (dict(optax_name="scale_by_nothing"), "scale_by_nothing"),
    (dict(optax_name=None), "optax_name"),
    (dict(lr=None), "lr"),
    (dict(lr=-1e-3), "config.lr must be positive"),
    (dict(lr=1e39), "finite in float32"),  # inf in float32.
    (dict(schedule=dict(decay_type="stair")), "stair"),
    (dict(schedule=dict(warmup_step=3)), "warmup_step"),
    (dict(schedule=dict(warmup_steps=10)), "Warmup.*config.total_steps"),
    (dict(schedule=[("encoder/.*", {})]), "head/kernel"),
    (dict(schedule=[(".*", None)]), "freezes every"),
    (dict(lr_mults=[("head/(", 2.0)]), "regex"),
    (dict(lr_mults=[("head/.*",)]), "list of"),
    (dict(lr_mults=("head/.*", 2.0)), "list of"),
    (dict(lr_mults=[("head/.*", 0.0)]), "positive"),
    (dict(lr_mults=[("head/.*", None)]), "positive numbers"),
    # A typo, or a rule that an earlier one shadows, would leave its
    # parameters at the default.
    (dict(lr_mults=[("heads/.*", 10.0)]), r"'heads/\.\*' matches no param"),
    (dict(lr_mults=[(".*", 1.0), ("head/.*", 10.0)]), r"\['\.\*'\] match"),
    (dict(optax_name="GradientTransformation"), "GradientTransformation"),
    (dict(schedule=dict(warmup_steps=-5)), "warmup .* must not be negative"),
    (dict(schedule=dict(cooldown_steps=-5)), "cooldown .* must not be"),
    (dict(schedule=dict(decay_type="rsqrt", timescale=0)), "timescale"),
    (dict(grad_clip_norm=-1.0), "grad_clip_norm must not be negative"),
    (dict(wd=-0.5), "wd must not be negative"),
    (dict(wd=0.1, wd_mults=[]), "decays nothing"),
    (dict(wd=0.1, wd_mults=[(".*", -1.0)]), "wd_mults must be numbers >= 0"),
])
def test_config_errors(change, message):
  config = {**dict(optax_name="identity", lr=0.1), **change}
  with pytest.raises(ValueError, match=message):
    optim.make(config, _params(), total_steps=10)
