"""The cluster_head trainer: configs, deep-supervision loss, masking, training."""
import jax
import numpy as np
import optax
import pytest
import test_train

from configs import polymax_nyu
from configs import polymax_synthetic
from uvimx import losses
from uvimx import trainers
import train

VARIANTS = ("semseg", "depth", "normals", "perpixel_semseg", "perpixel_depth",
            "perpixel_normals", "smoke")


def _batch(config, seed=0):
  """A random batch of the config's task with labels that are all valid."""
  rng = np.random.default_rng(seed)
  h, w = config.model.input_size
  batch = {"image": rng.uniform(-1, 1, (2, h, w, 3)).astype(np.float32)}
  if config.task.name == "semseg":
    batch["semantics"] = rng.integers(0, config.task.num_classes, (2, h, w, 1))
  elif config.task.name == "depth":
    batch["depth"] = rng.uniform(0.5, 8, (2, h, w, 1)).astype(np.float32)
  else:
    n = rng.normal(size=(2, h, w, 3))
    batch["normals"] = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(
        np.float32)
  return batch


@pytest.mark.parametrize("variant", VARIANTS)
def test_configs_init(variant):
  config = polymax_synthetic.get_config(variant)
  trainer = trainers.get_trainer(config)
  variables = jax.eval_shape(trainer.init, jax.random.key(0),
                             trainer.input_spec(2))
  params = variables["params"]
  assert ("transformer_decoder" in params) != config.model.per_pixel
  assert ("per_pixel_head" in params) == config.model.per_pixel


@pytest.mark.parametrize("variant", VARIANTS[:-1])
def test_nyu_configs_build(variant):
  """The paper's NYUD-v2 models, shapes at 480x640."""
  config = polymax_nyu.get_config(variant)
  trainer = trainers.get_trainer(config)
  params = jax.eval_shape(trainer.init, jax.random.key(0),
                          trainer.input_spec(1))["params"]
  assert params["backbone"]["stage4_block2"]["Conv_2"]["kernel"].shape == (
      1, 1, 512, 2048)  # ResNet-50's last bottleneck.
  if not config.model.per_pixel:  # One cluster per NYU-40 class, or 16.
    assert params["transformer_decoder"]["cluster_centers"].shape[0] == (
        40 if variant == "semseg" else 16)


def test_fine_tuning_lr_scales_the_weight_decay():
  # AdamW's decay is lr x 0.05 (the paper's 0.05): the documented
  # fine-tuning override --config.lr=5e-5 must bring the decay along.
  config = polymax_nyu.get_config("depth")
  assert config.wd == pytest.approx(5e-4 * 0.05)
  config.lr = 5e-5
  assert config.wd == pytest.approx(5e-5 * 0.05)


def test_nyu_config_inits_and_predicts_at_reduced_size():
  config = polymax_nyu.get_config("semseg")
  config.model.input_size = (64, 96)
  trainer = trainers.get_trainer(config)
  batch = {"image": np.zeros((1, 64, 96, 3), np.float32)}
  variables = jax.jit(trainer.init)(jax.random.key(0), batch)
  logits = trainer._predict(variables["params"], batch["image"])["final"]
  assert logits["semantics"].shape == (1, 64, 96, 40)
  assert np.all(np.isfinite(logits["semantics"]))


def _small(variant, **overrides):
  config = polymax_synthetic.get_config("smoke")
  full = polymax_synthetic.get_config(variant)
  config.task, config.loss = full.task, full.loss
  config.model.input_size = (32, 32)
  if config.task.name == "semseg":
    del config.model["num_clusters"]
  config.update(overrides)
  return config


@pytest.mark.parametrize("variant", ["semseg", "depth", "normals"])
def test_loss_is_final_plus_weighted_earlier_layers(variant):
  weights = {"semseg": dict(xent=1.0, dice=0.5),
             "depth": dict(silog=1.0, relative_squared_error=0.5,
                           gradient_matching=0.25, charbonnier=2.0),
             "normals": dict(normals_l2=1.0, normals_angular=0.5)}[variant]
  config = _small(variant, aux_weight=0.3)
  config.loss = weights
  trainer = trainers.get_trainer(config)
  batch = _batch(config)
  params = trainer.init(jax.random.key(0), batch)["params"]
  loss, _ = trainer.loss(params, {}, batch, jax.random.key(1))

  out = trainer._predict(params, batch["image"])
  assert len(out["aux"]) == 2  # The smoke model's 1 + 0 + 1 layers.

  def weighted(prediction):
    if variant == "semseg":
      labels = batch["semantics"][..., 0]
      logits = prediction["semantics"]
      terms = {"xent": losses.softmax_xent(logits, labels, labels >= 0),
               "dice": losses.dice(jax.nn.softmax(logits),
                                   jax.nn.one_hot(labels, 9), labels >= 0)}
    else:
      key = variant
      gt = batch[key][..., 0] if variant == "depth" else batch[key]
      valid = np.ones(gt.shape[:3], bool)
      terms = {t: getattr(losses, t)(prediction[key], gt, valid)
               for t in weights}
    return sum(w * np.mean(terms[t]) for t, w in weights.items())

  # "final" is the last layer: the one earlier layer is weighted 0.3.
  expected = weighted(out["final"]) + 0.3 * weighted(out["aux"][0])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("variant,key,invalid,ignore_label", [
    ("semseg", "semantics", 255, 255), ("semseg", "semantics", 0, 0),
    ("depth", "depth", 0, None), ("normals", "normals", 0, None)])
def test_pixels_without_a_label_do_not_count(variant, key, invalid,
                                             ignore_label):
  config = _small(variant)
  if ignore_label is not None:  # Also one inside [0, num_classes).
    config.task.ignore_label = ignore_label
  trainer = trainers.get_trainer(config)
  batch = _batch(config)
  params = trainer.init(jax.random.key(0), batch)["params"]
  # ignore_label / zero depth / zero normal everywhere: no loss, no gradient.
  batch[key] = np.full_like(batch[key], invalid)
  loss, grads = jax.value_and_grad(
      lambda p: trainer.loss(p, {}, batch, jax.random.key(1))[0])(params)
  assert loss == 0
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("variant", ["depth", "normals"])
def test_cluster_maps_explain_the_prediction(variant):
  config = _small(variant)
  trainer = trainers.get_trainer(config)
  batch = _batch(config)
  variables = trainer.init(jax.random.key(0), batch)
  maps = trainer.predict_fns()["cluster_maps"](variables, batch)
  predicted = trainer.predict_fns()["predict"](variables, batch)[variant]
  p = maps["probabilities"]
  assert p.shape == (2, 32, 32, config.model.num_clusters)
  np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-5)
  np.testing.assert_allclose(maps[variant], predicted, rtol=1e-5, atol=1e-5)
  # The prediction is the probability-weighted cluster value at every pixel
  # of the label: exactly for depth (bilinear resizing is linear in the
  # probabilities); for normals up to the renormalisation, which comes after
  # the resize in the prediction.
  if variant == "depth":
    np.testing.assert_allclose(
        predicted, np.einsum("bhwk,bk->bhw", p, maps["bin_centers"]),
        rtol=1e-4, atol=1e-4)
  else:
    vectors = maps["cluster_normals"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1,
                               rtol=1e-5)
    mixed = np.einsum("bhwk,bkc->bhwc", p, vectors)
    cosine = np.sum(mixed * predicted, -1) / np.linalg.norm(mixed, axis=-1)
    assert np.all(cosine > 0.99)


def test_only_cluster_models_have_cluster_maps():
  for variant in ("semseg", "perpixel_depth"):
    assert set(trainers.get_trainer(
        polymax_synthetic.get_config(variant)).predict_fns()) == {"predict"}


def test_unknown_loss_term_or_task_is_an_error():
  config = _small("depth")
  config.loss = dict(silog=1.0, xent=1.0)
  with pytest.raises(ValueError, match="Unknown config.loss terms.*xent"):
    trainers.get_trainer(config)
  config = _small("depth")
  config.loss = dict(silog=0.0)
  with pytest.raises(ValueError, match="weights no term"):
    trainers.get_trainer(config)
  config = _small("depth")
  config.task = dict(name="panoptic", num_classes=3)
  with pytest.raises(ValueError, match="cluster_head trainer"):
    trainers.get_trainer(config)


def test_cluster_head_fits_a_batch():
  """Full-batch Adam on one depth batch: the loss falls to a fraction."""
  config = _small("depth")
  trainer = trainers.get_trainer(config)
  batch = _batch(config)
  # A depth the image shows: random 8x8 blocks (a stride-4 model resolves
  # them) with red -1 are 2 m away, the rest (red +1) 5 m.
  rng = np.random.default_rng(1)
  near = np.kron(rng.uniform(size=(2, 4, 4)) > 0.5, np.ones((8, 8)))[..., None]
  batch["image"][..., :1] = np.where(near, -1.0, 1.0)
  batch["depth"] = np.where(near, 2.0, 5.0).astype(np.float32)
  params = trainer.init(jax.random.key(0), batch)["params"]
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: trainer.loss(p, {}, batch, jax.random.key(0))[0])(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = opt.init(params)
  history = []
  for _ in range(60):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
  assert history[-1] < 0.5 * history[0], history[::10]


def test_smoke_trains_and_evaluates(tfds_data_dir, tmp_path):
  config = polymax_synthetic.get_config("smoke")
  config.input.data.data_dir = tfds_data_dir
  config.evals.val.data.data_dir = tfds_data_dir
  train.train_and_evaluate(config, str(tmp_path))
  last = config.total_steps
  assert (tmp_path / "checkpoints" / str(last)).is_dir()
  # The evaluator ran on the last step; the loss terms were logged.
  assert np.isfinite(test_train.scalars(str(tmp_path), "val/rmse")[last])
  assert last in test_train.scalars(str(tmp_path), "train/final_silog")
