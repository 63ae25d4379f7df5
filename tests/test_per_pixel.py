"""The per-pixel trainer and its configs: shapes, overfitting, real batches."""
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from configs import synthetic_baseline
from uvimx import trainers


def _smoke(task="semseg"):
  config = synthetic_baseline.get_config("smoke")
  if task == "depth":
    config.task = synthetic_baseline.get_config("depth").task
  return config


def _batch(task, size=4, seed=0):
  """Images of 8x8 blocks whose colour gives the label: learnable labels."""
  rng = np.random.RandomState(seed)
  blocks = rng.randint(0, 9, size=(size, 8, 8))
  labels = np.kron(blocks, np.ones((8, 8), int))[..., None]
  palette = rng.uniform(-1, 1, size=(9, 3))
  image = palette[labels[..., 0]] + 0.05 * rng.normal(size=(size, 64, 64, 3))
  if task == "semseg":
    labels[:, :2, :2] = 255  # Some ignored pixels.
    return {"image": image.astype("f4"), "semantics": labels.astype("i4")}
  return {"image": image.astype("f4"), "depth": (1.0 + labels).astype("f4")}


@pytest.mark.parametrize("task,key,dtype,channels", [
    ("semseg", "semantics", np.int32, 9), ("depth", "depth", np.float32, 256)])
def test_init_loss_predict_shapes(task, key, dtype, channels):
  config = _smoke(task)
  trainer = trainers.get_trainer(config)
  batch = _batch(task)
  variables = trainer.init(jax.random.key(0),
                           jax.tree.map(lambda x: x[:1], batch))
  assert variables["state"] == {}
  assert variables["params"][f"head_{key}"]["kernel"].shape == (32, channels,
                                                                64)
  loss, (state, measurements) = jax.jit(trainer.loss)(
      variables["params"], variables["state"], batch, jax.random.key(1))
  # Zero-initialised heads: every pixel starts uniform over the classes.
  assert loss.shape == () and loss == pytest.approx(np.log(channels), rel=1e-5)
  assert state == {}
  assert all(v.shape == () for v in measurements.values())
  out = jax.jit(trainer.predict_fns()["predict"])(variables, batch)
  assert out[key].shape == (4, 64, 64) and out[key].dtype == dtype


@pytest.mark.parametrize("opt", [optax.sgd(1.0, momentum=0.9),
                                 optax.adam(3e-3)], ids=["sgd", "adam"])
def test_few_steps_overfit_one_batch(opt):
  config = _smoke()
  config.model.dropout = 0.1  # Exercises the dropout rng.
  trainer = trainers.get_trainer(config)
  batch = _batch("semseg")
  params = trainer.init(jax.random.key(0), batch)["params"]
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, _), grads = jax.value_and_grad(trainer.loss, has_aux=True)(
        params, {}, batch, rng)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(40):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert losses[-1] < 0.3 * losses[0], losses


def test_config_variants_and_errors():
  for arg in ("semseg", "depth", "smoke"):
    config = synthetic_baseline.get_config(arg)
    assert config.trainer == "per_pixel"
    label = "depth" if arg == "depth" else "semantics"
    assert config.input.pp.endswith(f"keep('image', '{label}')")
    assert config.evals.val.pp.endswith(f"keep('image', '{label}')")
    assert "inception_box" not in config.evals.val.pp
  with pytest.raises(ValueError, match="Unknown variant"):
    synthetic_baseline.get_config("segm")
  config = _smoke()
  config.model.outputs = {"semantics": 9}
  with pytest.raises(ValueError, match="derived from config.task"):
    trainers.get_trainer(config)


@pytest.mark.parametrize("task", ["semseg", "depth"])
def test_config_pipelines_feed_the_trainer(tfds_data_dir, task):
  """The configs' train and eval pp strings give batches the task reads."""
  from uvimx import input_pipeline  # pylint: disable=g-import-not-at-top
  config = _smoke(task)
  full = synthetic_baseline.get_config(task)
  config.input.pp, config.evals.val.pp = full.input.pp, full.evals.val.pp
  config.input.data.data_dir = tfds_data_dir
  config.evals.val.data.data_dir = tfds_data_dir
  train, _ = input_pipeline.training(config.input)
  val, _ = input_pipeline.evaluation(config.evals.val.data,
                                     config.evals.val.pp, 8)
  trainer = trainers.get_trainer(config)
  for batch in (next(train.as_numpy_iterator()),
                next(val.as_numpy_iterator())):
    batch.pop("_mask", None)
    assert batch["image"].shape == (8, 64, 64, 3)
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    label = batch["semantics" if task == "semseg" else "depth"]
    assert label.shape == (8, 64, 64, 1)
    assert label.dtype == (np.int32 if task == "semseg" else np.float32)
    variables = trainer.init(jax.random.key(0), batch)
    loss, _ = trainer.loss(variables["params"], {}, batch, jax.random.key(0))
    assert np.isfinite(loss)


def test_trainer_imports_no_tensorflow():
  code = ("import sys; import uvimx.trainers.per_pixel; "
          "assert 'tensorflow' not in sys.modules, 'TF imported'")
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
