"""The vqvae trainer: mask augmentation, the depth loss, configs, train.py."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_train

from configs import ait_synthetic
from uvimx import trainers
from uvimx.models import vq
from uvimx.trainers import vqvae


def _trainer(**overrides):
  """The smoke config's trainer on 32x32 maps."""
  config = ait_synthetic.get_config("smoke")
  config.model.input_size = (32, 32)
  config.update(overrides)
  return trainers.get_trainer(config)


def _depth(seed=0):
  """(2, 32, 32, 1) metres: random 8x8 blocks at 2 m, the rest at 5 m."""
  near = np.random.default_rng(seed).uniform(size=(2, 4, 4)) > 0.5
  near = np.kron(near, np.ones((8, 8)))[..., None]
  return np.where(near, 2.0, 5.0).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
  """A trainer and its initialised variables, shared.

  Initialised with the "rbg" PRNG: XLA:CPU compiles the default threefry
  of every parameter's initializer several times slower.
  """
  trainer = _trainer()
  variables = jax.jit(trainer.init)(jax.random.key(0, impl="rbg"),
                                    {"depth": _depth()})
  return trainer, variables


@pytest.mark.parametrize("ratio, num_masked", [(0.5, 12), (0.3, 7)])
def test_mask_patches(ratio, num_masked):
  # 16x24 maps in 4x4 patches: 24 per example; round(0.3 * 24) = 7.
  x = np.random.default_rng(0).uniform(1, 2, (3, 16, 24, 2)).astype("f4")
  masked = np.asarray(vqvae.mask_patches(jax.random.key(0), x, 4, ratio))
  patches = masked.reshape(3, 4, 4, 6, 4, 2).transpose(0, 1, 3, 2, 4, 5)
  zero = np.all(patches == 0, axis=(3, 4, 5))
  # Whole patches, all channels: each is zero or untouched.
  kept = np.all(patches == x.reshape(3, 4, 4, 6, 4, 2).transpose(
      0, 1, 3, 2, 4, 5), axis=(3, 4, 5))
  assert np.all(zero ^ kept)
  np.testing.assert_array_equal(zero.sum(axis=(1, 2)), num_masked)
  np.testing.assert_allclose(np.mean(masked == 0), num_masked / 24)
  assert not np.array_equal(zero[0], zero[1])  # Drawn per example.


def test_mask_patches_extremes_and_errors():
  x = np.ones((2, 8, 8, 1))
  np.testing.assert_array_equal(
      vqvae.mask_patches(jax.random.key(0), x, 4, 0.0), x)
  np.testing.assert_array_equal(
      vqvae.mask_patches(jax.random.key(0), x, 4, 1.0), 0)
  with pytest.raises(ValueError, match="do not split into.*mask_patch=3"):
    vqvae.mask_patches(jax.random.key(0), x, 3, 0.5)


def _reconstruction_and_aux(trainer, variables, inputs_metres):
  return jax.jit(trainer.model.apply)(variables, inputs_metres / 10.0)


def test_loss_is_on_the_unmasked_valid_ground_truth(setup):
  trainer, variables = setup
  depth = _depth()
  depth[:, :, :12] = 0  # No measurement in the left 12 columns.
  rng = jax.random.key(3)
  loss, (_, measurements) = jax.jit(trainer.loss)(
      variables["params"], variables["state"], {"depth": depth}, rng)

  # The trainer's mask: 0.5 of the 64 4x4 patches of each input.
  mask_rng, _ = jax.random.split(rng)
  inputs = np.asarray(vqvae.mask_patches(mask_rng, depth, 4, 0.5))
  assert np.mean(inputs == 0) > np.mean(depth == 0)
  reconstruction, aux = _reconstruction_and_aux(trainer, variables, inputs)
  errors = (np.asarray(reconstruction) * 10 - depth) ** 2 / 100
  valid = depth > 0
  np.testing.assert_allclose(measurements["loss_rec"], errors[valid].mean(),
                             rtol=1e-5)
  codebook = jax.jit(functools.partial(trainer.model.apply,
                                       method=trainer.model.codebook))(
                                           variables)
  commitment = np.mean((aux["z"] - codebook[aux["codes"]]) ** 2)
  np.testing.assert_allclose(measurements["loss_commitment"], commitment,
                             rtol=1e-5)
  np.testing.assert_allclose(loss, errors[valid].mean() + 0.25 * commitment,
                             rtol=1e-5)
  np.testing.assert_allclose(measurements["rmse"],
                             np.sqrt(errors[valid].mean()) * 10, rtol=1e-5)
  counts = np.bincount(np.asarray(aux["codes"]).ravel(), minlength=16)
  assert measurements["codebook_used_ratio"] == np.mean(counts > 0)
  np.testing.assert_allclose(measurements["codebook_perplexity"],
                             vq.perplexity(jnp.asarray(counts, jnp.float32)),
                             rtol=1e-5)


def test_all_invalid_depth_has_no_reconstruction_loss(setup):
  trainer, variables = setup
  batch = {"depth": np.zeros((2, 32, 32, 1), np.float32)}
  loss, (_, measurements) = jax.jit(trainer.loss)(
      variables["params"], variables["state"], batch, jax.random.key(0))
  assert measurements["loss_rec"] == 0 and measurements["rmse"] == 0
  np.testing.assert_allclose(loss, 0.25 * measurements["loss_commitment"])


def test_adam_steps_on_one_batch_lower_the_loss(setup):
  trainer, variables = setup
  batch = {"depth": _depth(1)}
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, state, opt_state, rng):
    (loss, (state, _)), grads = jax.value_and_grad(
        trainer.loss, has_aux=True)(params, state, batch, rng)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state, loss

  params, state = variables["params"], variables["state"]
  opt_state, history = opt.init(params), []
  for i in range(25):
    params, state, opt_state, loss = step(params, state, opt_state,
                                          jax.random.key(i))
    history.append(float(loss))
  assert history[-1] < 0.5 * history[0], history[::5]
  # The codebook moved by EMA (and restarts), not by the optimizer.
  assert not np.allclose(state["sums"], variables["state"]["sums"])


def test_reconstruct_predicts_metres_at_the_label_size(setup):
  trainer, variables = setup
  depth = _depth()
  predicted = jax.jit(trainer.predict_fns()["reconstruct"])(
      variables, {"depth": depth})["depth"]
  assert predicted.shape == (2, 32, 32)
  reconstruction, _ = _reconstruction_and_aux(trainer, variables, depth)
  np.testing.assert_allclose(predicted, reconstruction[..., 0] * 10,
                             rtol=1e-6)


def test_bad_configs_are_clear_errors():
  with pytest.raises(ValueError, match="not divisible by.*downsample=8"):
    _trainer(model=dict(ait_synthetic.get_config("smoke").model,
                        input_size=(36, 32)))
  with pytest.raises(ValueError, match="not divisible by.*mask_patch=5"):
    _trainer(mask_patch=5)
  _trainer(mask_patch=5, mask_ratio=0.0)  # No masking, no patches.
  with pytest.raises(ValueError, match="mask_ratio must be in"):
    _trainer(mask_ratio=1.5)
  with pytest.raises(ValueError, match="vqvae trainer does.*'depth'"):
    _trainer(task=dict(name="semseg", num_classes=9))
  with pytest.raises(ValueError, match="Unknown variant"):
    ait_synthetic.get_config("instances")


@pytest.mark.parametrize("variant, mask_ratio", [
    ("depth_tokenizer", 0.5), ("depth_tokenizer_nomask", 0.0),
    ("smoke", 0.5)])
def test_configs(variant, mask_ratio):
  config = ait_synthetic.get_config(variant)
  assert config.mask_ratio == mask_ratio
  trainer = trainers.get_trainer(config)
  spec = trainer.input_spec(2)
  assert spec["depth"].shape == (2, 64, 64, 1)
  variables = jax.eval_shape(trainer.init, jax.random.key(0), spec)
  codes = jax.eval_shape(
      functools.partial(trainer.model.apply, method=trainer.model.encode),
      variables, spec["depth"])
  assert codes.shape == (2, 8, 8)  # 64 codes per 64x64 map.
  if variant != "smoke":
    assert variables["state"]["sums"].shape == (128, 512)


def test_smoke_trains_and_evaluates(tfds_data_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, "train.py", "--config", "configs/ait_synthetic.py:smoke",
       "--workdir", str(tmp_path)],
      cwd=test_train.REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TFDS_DATA_DIR": tfds_data_dir})
  assert result.returncode == 0, result.stderr[-3000:]
  last = ait_synthetic.get_config("smoke").total_steps
  assert test_train.checkpoint_steps(tmp_path)[-1] == last
  assert np.isfinite(test_train.scalars(str(tmp_path), "val/rmse")[last])
  assert last in test_train.scalars(str(tmp_path),
                                    "train/codebook_perplexity")


# The instance-mask tokenizer.


def _mask_trainer(**overrides):
  """The mask smoke config's trainer on 3 slots of 32x32 masks (2x2 codes)."""
  config = ait_synthetic.get_config("mask_tokenizer_smoke")
  config.model.input_size = (32, 32)
  config.task.max_instances = 3
  config.objects_per_batch = None
  config.update(overrides)
  return trainers.get_trainer(config)


def _mask_batch(seed=0):
  """2 images: objects (class 1, 0) and (2), the other slots padding."""
  rng = np.random.default_rng(seed)
  masks = rng.uniform(size=(2, 3, 32, 32)).astype(np.float32)
  masks[0, 2] = masks[1, 1:] = 0  # Padding slots, as the pp op writes them.
  return {"masks": masks,
          "classes": np.array([[1, 0, -1], [2, -1, -1]], np.int32)}


@pytest.fixture(scope="module")
def mask_setup():
  trainer = _mask_trainer()
  variables = jax.jit(trainer.init)(jax.random.key(0, impl="rbg"),
                                    _mask_batch())
  return trainer, variables


def test_mask_loss_is_ait_mse_on_valid_objects_only(mask_setup):
  trainer, variables = mask_setup
  batch = _mask_batch()
  loss_fn = jax.jit(trainer.loss)
  rng = jax.random.key(1)
  loss, (state, measurements) = loss_fn(variables["params"],
                                        variables["state"], batch, rng)
  # AiT's MSE in [-1, 1] units, over the 3 valid objects' pixels.
  valid = batch["masks"][[0, 0, 1], [0, 1, 0]]
  reconstruction, aux = jax.jit(trainer.model.apply)(
      variables, valid[..., None] * 2 - 1)
  loss_rec = np.mean((np.asarray(reconstruction)[..., 0] - (valid * 2 - 1))
                     ** 2)
  np.testing.assert_allclose(measurements["loss_rec"], loss_rec, rtol=1e-5)
  codebook = jax.jit(functools.partial(
      trainer.model.apply, method=trainer.model.codebook))(variables)
  commitment = np.mean((aux["z"] - codebook[aux["codes"]]) ** 2)
  np.testing.assert_allclose(loss, loss_rec + 0.25 * commitment, rtol=1e-5)
  counts = np.bincount(np.asarray(aux["codes"]).ravel(), minlength=16)
  assert counts.sum() == 3 * 2 * 2  # 3 objects of 2x2 codes, no padding.
  np.testing.assert_allclose(measurements["codebook_perplexity"],
                             vq.perplexity(jnp.asarray(counts, jnp.float32)),
                             rtol=1e-5)

  # Whatever a padding slot holds changes nothing, codebook state included.
  changed = dict(batch, masks=batch["masks"].copy())
  changed["masks"][1, 2] = 1.0
  changed["masks"][0, 2] = np.random.default_rng(5).uniform(size=(32, 32))
  loss2, (state2, measurements2) = loss_fn(variables["params"],
                                           variables["state"], changed, rng)
  assert loss2 == loss
  jax.tree.map(np.testing.assert_array_equal, measurements2, measurements)
  jax.tree.map(np.testing.assert_array_equal, state2, state)

  # objects_per_batch=3 keeps exactly the 3 valid objects: the same loss.
  compact = _mask_trainer(objects_per_batch=3)
  loss3, (_, measurements3) = jax.jit(compact.loss)(
      variables["params"], variables["state"], changed, rng)
  np.testing.assert_allclose(loss3, loss, rtol=1e-6)
  np.testing.assert_allclose(measurements3["mask_iou"],
                             measurements["mask_iou"], rtol=1e-6)


def test_mask_iou_by_hand():
  target = np.zeros((3, 4, 4), np.float32)
  target[:, :2, :2] = 1  # 4 pixels.
  predicted = np.zeros((3, 4, 4), np.float32)
  predicted[0, :2, :3] = 0.7  # 6 pixels, 4 shared: IoU 4 / 6.
  predicted[1, :2, :2] = 0.5  # Not above 0.5: empty, IoU 0.
  predicted[2] = 1.0  # Padding: 0 whatever it holds.
  iou = vqvae.mask_iou(predicted, target, np.array([True, True, False]))
  np.testing.assert_allclose(iou, [4 / 6, 0, 0], rtol=1e-6)
  both_empty = vqvae.mask_iou(np.zeros((4, 4)), np.zeros((4, 4)), True)
  assert both_empty == 1


def test_mask_iou_predict_fn(mask_setup):
  trainer, variables = mask_setup
  batch = _mask_batch()
  fns = trainer.predict_fns()
  masks = jax.jit(fns["reconstruct"])(variables, batch)["masks"]
  assert masks.shape == (2, 3, 32, 32)
  assert 0 <= masks.min() and masks.max() <= 1
  out = jax.jit(fns["mask_iou"])(variables, batch)
  iou = np.asarray(vqvae.mask_iou(masks, batch["masks"],
                                  batch["classes"] >= 0))
  np.testing.assert_allclose(out["mask_iou"],
                             [iou[0, :2].mean(), iou[1, 0]], rtol=1e-6)
  np.testing.assert_allclose(out["mask_iou_sum"],
                             [iou[0, :2].sum(), iou[1, 0]], rtol=1e-6)
  np.testing.assert_array_equal(out["num_objects"], [2, 1])


def test_mask_configs_and_errors():
  config = ait_synthetic.get_config("mask_tokenizer")
  assert config.mask_ratio == 0 and "instance_objects" in config.input.pp
  trainer = trainers.get_trainer(config)
  spec = trainer.input_spec(2)
  assert spec["masks"].shape == (2, 8, 64, 64)
  assert spec["classes"].shape == (2, 8) and spec["classes"].dtype == jnp.int32
  variables = jax.eval_shape(trainer.init, jax.random.key(0), spec)
  assert variables["state"]["sums"].shape == (128, 512)
  codes = jax.eval_shape(
      functools.partial(trainer.model.apply, method=trainer.model.encode),
      variables, jax.ShapeDtypeStruct((16, 64, 64, 1), jnp.float32))
  assert codes.shape == (16, 4, 4)  # 16 tokens per object mask.
  with pytest.raises(ValueError, match="mask augmentation.*is for depth"):
    _mask_trainer(mask_ratio=0.5)
  with pytest.raises(ValueError, match="objects_per_batch is for instance"):
    _trainer(objects_per_batch=4)


def test_mask_smoke_trains_and_evaluates(tfds_data_dir, tmp_path):
  variant = "mask_tokenizer_smoke"
  result = subprocess.run(
      [sys.executable, "train.py", "--config",
       f"configs/ait_synthetic.py:{variant}", "--workdir", str(tmp_path)],
      cwd=test_train.REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TFDS_DATA_DIR": tfds_data_dir})
  assert result.returncode == 0, result.stderr[-3000:]
  last = ait_synthetic.get_config(variant).total_steps
  assert test_train.checkpoint_steps(tmp_path)[-1] == last
  iou = test_train.scalars(str(tmp_path), "val/mask_iou")[last]
  assert 0 <= iou <= 1
  # synthetic_scenes/tiny's validation split: 2-8 things per image.
  assert 2 <= test_train.scalars(str(tmp_path),
                                 "val/num_objects")[last] <= 8
  assert last in test_train.scalars(str(tmp_path), "train/mask_iou")
