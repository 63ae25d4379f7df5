"""UViM trainers: stage I and II through train.py, and big_vision parity.

The parity test runs the stage-II trainer on the big_vision fixture
(../shared/fixtures/big_vision_uvim, see its README): with both released-
format checkpoints loaded, the trainer's target codes, loss and full
prediction (greedy LM sampling, then the stage-I base model, then the
panoptic decoding) must be big_vision's.
"""
import json
import pathlib

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import uvim_synthetic
from evaluators import codebook
from uvimx import checkpoint
from uvimx import sharding
from uvimx import trainers
from uvimx.trainers import uvim_stage2
import train

FIXTURES = pathlib.Path("/work/shared/fixtures/big_vision_uvim")


def smoke_config(variant, data_dir, workdir_s1=None):
  config = uvim_synthetic.get_config(variant)
  config.input.data.data_dir = data_dir
  for evaluator in config.evals.values():
    evaluator.data.data_dir = data_dir
  if workdir_s1:
    config.oracle.checkpoint = str(pathlib.Path(workdir_s1) / "checkpoints" /
                                   str(config.total_steps))
  return config


@pytest.fixture(scope="module")
def stage1_run(tfds_data_dir, tmp_path_factory):
  """(config, workdir, final train state) of a smoke stage-I run."""
  config = smoke_config("smoke_stage1", tfds_data_dir)
  workdir = tmp_path_factory.mktemp("s1")
  return config, workdir, jax.device_get(
      train.train_and_evaluate(config, str(workdir)))


def test_stage1_then_stage2_train(stage1_run, tfds_data_dir, tmp_path):
  s1_config, s1_workdir, s1 = stage1_run
  # EMA counts: each step discounts them by m and adds the batch's
  # B * code_len assignments; LBG splitting only moves counts. Starting from
  # dict_size ones, after k steps they sum to
  # dict_size m^k + B L (1 - m^k) / (1 - m).
  model = trainers.get_trainer(s1_config).model
  m, k = model.dict_momentum, s1_config.total_steps
  assignments = s1_config.input.batch_size * model.code_len
  np.testing.assert_allclose(
      s1["state"]["counts"].sum(),
      model.dict_size * m**k + assignments * (1 - m**k) / (1 - m), rtol=1e-5)
  assert np.all(s1["state"]["counts"] >= model.min_count)

  s2_config = smoke_config("smoke_stage2", tfds_data_dir, s1_workdir)
  s2 = jax.device_get(train.train_and_evaluate(s2_config, str(tmp_path / "s2")))
  # The stage-I model rides along frozen, exactly as stage I left it.
  jax.tree.map(np.testing.assert_array_equal, s2["state"]["oracle"],
               {"params": s1["params"], "state": s1["state"]})
  # Evaluating the stage-II checkpoint again (total_steps=0, model_init)
  # needs no config.oracle.checkpoint: the checkpoint holds stage I too.
  config = smoke_config("smoke_stage2", tfds_data_dir)
  config.total_steps = 0
  config.model_init = str(tmp_path / "s2" / "checkpoints" /
                          str(s2_config.total_steps))
  evaluated = jax.device_get(
      train.train_and_evaluate(config, str(tmp_path / "eval")))
  for key in ("params", "state"):
    jax.tree.map(np.testing.assert_array_equal, evaluated[key], s2[key])


def test_stage2_refuses_a_stage1_model_config_unlike_the_trained_one(
    stage1_run, tfds_data_dir):
  # With bottleneck_resize no parameter depends on code_len: only the run's
  # config.json tells that this stage-I model made codes of 4 words.
  s1_config, s1_workdir, _ = stage1_run
  step_dir = s1_workdir / "checkpoints" / str(s1_config.total_steps)
  assert checkpoint.run_config(step_dir)["model"]["code_len"] == 4
  config = smoke_config("smoke_stage2", tfds_data_dir, s1_workdir)
  config.oracle.model.code_len = config.model.seq_len = 16
  trainer = trainers.get_trainer(config)
  batch = {"image": np.zeros((1, 64, 64, 3), np.float32),
           "labels": np.zeros((1, 64, 64, 2), np.int32)}
  variables = jax.eval_shape(trainer.init, jax.random.key(0), batch)
  with pytest.raises(ValueError, match=r"^config.oracle.checkpoint: the run "
                     r"that wrote .* model.code_len is 16 here, 4 there\."):
    trainer.load_pretrained(variables)


def test_model_init_restores_the_dictionary(stage1_run, tfds_data_dir,
                                            tmp_path):
  # total_steps=0 evaluates a checkpoint: stage I's codewords are model
  # state, so they must come from the checkpoint with the params (a fresh
  # dictionary would pair the trained encoder with random codewords).
  s1_config, s1_workdir, s1 = stage1_run
  config = smoke_config("smoke_stage1", tfds_data_dir)
  config.total_steps = 0
  config.model_init = str(s1_workdir / "checkpoints" /
                          str(s1_config.total_steps))
  evaluated = jax.device_get(train.train_and_evaluate(config, str(tmp_path)))
  for key in ("params", "state"):
    jax.tree.map(np.testing.assert_array_equal, evaluated[key], s1[key])


def test_stage2_requires_its_oracle_checkpoint(stage1_run, tfds_data_dir,
                                               tmp_path):
  config = smoke_config("smoke_stage2", tfds_data_dir)
  with pytest.raises(ValueError, match="config.oracle.checkpoint"):
    train.train_and_evaluate(config, str(tmp_path / "none"))
  # The stage-I run's checkpoint, with another stage-I model config: the
  # error names the field, and, from the run's config.json, the difference.
  config = smoke_config("smoke_stage2", tfds_data_dir, stage1_run[1])
  config.oracle.model.width = 64
  with pytest.raises(ValueError, match=r"^config.oracle.checkpoint: the run "
                     "that wrote .* model.width is 64 here, 32 there"):
    train.train_and_evaluate(config, str(tmp_path / "wider"))
  # Without config.json (a step directory copied alone), the shapes tell.
  (stage1_run[1] / "config.json").rename(tmp_path / "config.json")
  try:
    with pytest.raises(ValueError, match=r"^config.oracle.checkpoint: "
                       "Checkpoint .* holds params of another model"):
      train.train_and_evaluate(config, str(tmp_path / "wider2"))
  finally:
    (tmp_path / "config.json").rename(stage1_run[1] / "config.json")


def test_stage2_vocab_must_fit_the_oracle():
  config = uvim_synthetic.get_config("smoke_stage2")
  config.model.vocab_size += 1
  with pytest.raises(ValueError, match="vocab_size"):
    uvim_stage2.Trainer(config)


def test_diversity_sampling_is_at_temperature_one_unless_it_says():
  config = uvim_synthetic.get_config("smoke_stage2")
  config.diversity_sampling = dict(top_k=5)  # config.sampling is greedy.
  assert uvim_stage2.Trainer(config).diversity_sampling == {
      "temperature": 1.0, "top_k": 5}


def big_vision_config():
  """A stage-II config of the fixture's two models (also test_predict's)."""
  spec = json.loads((FIXTURES / "config.json").read_text())
  oracle = {k: v for k, v in spec["stage1"]["config_kwargs"].items()
            if k not in ("inputs", "outputs", "statistics_axis_name")}
  config = ml_collections.ConfigDict()
  config.trainer = "uvim_stage2"
  config.task = dict(name="panoptic", num_classes=9, max_instances=5)
  config.oracle = dict(model=oracle,
                       checkpoint=str(FIXTURES / "stage1.npz"))
  config.model = dict(patches=dict(size=(4, 4)), num_heads=4, num_layers=2,
                      mlp_dim=128, emb_dim=64, vocab_size=33, seq_len=16,
                      input_size=(32, 32), posemb_type="learn")
  config.sampling = dict(temperature=0.0)
  return config


def _fixture_variables(trainer, batch):
  """Both fixture checkpoints loaded, as a stage-II run would hold them."""
  variables = trainer.load_pretrained(
      jax.device_get(trainer.init(jax.random.key(0), batch)))
  params = checkpoint.load_big_vision_npz(
      str(FIXTURES / "stage2.npz"), {"params": variables["params"]})["params"]
  return {"params": params, "state": variables["state"]}


def test_stage2_matches_big_vision_pipeline():
  io1 = np.load(FIXTURES / "stage1_io.npz")
  io2 = np.load(FIXTURES / "stage2_io.npz")
  trainer = uvim_stage2.Trainer(big_vision_config())
  batch = {"image": io1["image"], "labels": io1["labels"]}
  variables = _fixture_variables(trainer, batch)
  params, state = variables["params"], variables["state"]

  # Targets: the stage-I code + 1, big_vision's `encode_labels`.
  np.testing.assert_array_equal(trainer._codes(state, batch), io2["tokens"])
  # Loss: teacher-forced cross-entropy, mean over tokens.
  logp = jax.nn.log_softmax(io2["logits"].astype(np.float64))
  expected = -np.take_along_axis(logp, io2["tokens"][..., None], -1).mean()
  loss, (_, measurements) = jax.jit(trainer.loss)(
      params, state, batch, jax.random.key(0))
  np.testing.assert_allclose(loss, expected, atol=1e-4)
  np.testing.assert_allclose(
      measurements["token_accuracy"],
      np.mean(io2["logits"].argmax(-1) == io2["tokens"]))
  # Prediction: greedy codes -> base model -> panoptic map, exactly.
  predict = jax.jit(trainer.predict_fns()["predict"])
  out = predict({"params": params, "state": state}, batch)
  np.testing.assert_array_equal(out["panoptic"], io2["pipeline_pred/panoptic"])


def test_codebook_evaluator_counts_codewords(tfds_data_dir):
  # Codes from the image: (red value of pixel (0, 0)) // 8 and a constant 31.
  # The expectation is computed from the split read directly; the padding
  # examples of the last batch (all-zero images, code 0) must not count.
  data = dict(name="synthetic_scenes/tiny", split="validation",
              data_dir=tfds_data_dir)

  def predict(variables, batch):
    del variables
    first = batch["image"][:, 0, 0, 0].astype(jnp.int32) // 8
    return {"code": jnp.stack([first, jnp.full_like(first, 31)], axis=1)}

  evaluator = codebook.Evaluator(
      predict, mesh=sharding.make_mesh([("data", -1)]), data=data,
      pp="decode|keep('image')", batch_size=16, dict_size=32)
  metrics = dict(evaluator.run({}))

  red = np.array([ex["image"][0, 0, 0] for ex in tfds.as_numpy(tfds.load(
      data["name"], split="validation", data_dir=tfds_data_dir))])
  codes = np.concatenate([red // 8, np.full(len(red), 31)])
  assert len(red) == 24 and 24 % 16  # So the last batch is padded.
  assert metrics["used"] == len(np.unique(codes)) / 32
  assert metrics["max_ratio"] == np.bincount(codes).max() / len(codes)


def test_codebook_evaluator_errors(tfds_data_dir):
  evaluator = codebook.Evaluator(
      lambda v, b: {}, mesh=sharding.make_mesh([("data", -1)]),
      data=dict(name="synthetic_scenes/tiny", split="validation",
                data_dir=tfds_data_dir),
      pp="decode|keep('image')", batch_size=16, dict_size=8)

  def run(outputs, mask=(True, True)):
    evaluator.predictions = lambda variables: iter(
        [({"_mask": np.array(mask)}, outputs)])
    return dict(evaluator.run({}))

  # A model with 16 codewords, or codes that are not indices: named, not a
  # broadcasting or bincount error.
  with pytest.raises(ValueError, match=r"codes span \[0, 15\], outside "
                     r"\[0, dict_size=8\)"):
    run({"code": np.arange(16).reshape(2, 8)})
  with pytest.raises(ValueError, match=r"span \[-1, 3\].*dict_size=8"):
    run({"code": np.array([[-1, 3], [2, 2]])})
  with pytest.raises(KeyError, match=r"No 'code' in the predict fn outputs.*"
                     r"it has \['codes'\]"):
    run({"codes": np.zeros((2, 4), int)})
  # Codes of masked (padding) examples are neither checked nor counted:
  # codes 2, 3, 2 use 2 of the 8 codewords, 2 for 2 of the 3 positions.
  assert run({"code": np.array([[2, 3, 2], [9, 9, 9]])},
             mask=(True, False)) == {"used": 2 / 8, "max_ratio": 2 / 3}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sample_diversity_is_mean_pairwise_rms(temperature):
  config = big_vision_config()
  config.sampling.num_samples = 3
  config.diversity_sampling = dict(temperature=temperature)
  trainer = uvim_stage2.Trainer(config)
  io1 = np.load(FIXTURES / "stage1_io.npz")
  batch = {"image": io1["image"], "labels": io1["labels"]}
  variables = _fixture_variables(trainer, batch)
  diversity = jax.jit(trainer.predict_fns()["sample_diversity"])(
      variables, batch)["diversity"]

  # The same draws (seeds come from the images), decoded one sample at a time.
  codes = trainer.sample_codes(variables["params"], batch["image"], 3,
                               temperature=temperature)
  maps = np.stack([
      np.asarray(next(iter(trainer._decode_labels(
          variables["state"], codes[:, i], batch["image"]).values())))
      for i in range(3)], axis=1).reshape(len(codes), 3, -1).astype(np.float64)
  rms = np.sqrt(np.mean((maps[:, :, None] - maps[:, None]) ** 2, axis=-1))
  expected = rms.sum(axis=(1, 2)) / 6  # 6 ordered pairs of 3 samples.
  np.testing.assert_allclose(diversity, expected, rtol=1e-5)
  if temperature == 0:  # Greedy: every sample is the same code.
    np.testing.assert_array_equal(diversity, 0)
  else:
    assert np.all(np.asarray(codes[:, 0] != codes[:, 1]).any(axis=1))
    assert np.all(diversity > 0)


def test_encoder_init_fixes_old_vit_checkpoints_and_resamples(tmp_path):
  """An old-layout ViT .npz (4x4 + cls position embeddings, pre-linen
  MlpBlock_3) initialises the fixture LM's encoder (an 8x8 grid)."""
  config = big_vision_config()
  trainer = trainers.get_trainer(config)
  batch = {"image": np.zeros((1, 32, 32, 3), np.float32),
           "labels": np.zeros((1, 32, 32, 2), np.int32)}
  shapes = jax.eval_shape(trainer.init, jax.random.key(0), batch)["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  vit_file = {}
  for name, value in traverse_util.flatten_dict(params, sep="/").items():
    for ours, theirs in (("encoder/", "Transformer/"),
                         ("EmbedPatches/", "embedding/")):
      if name.startswith(ours):
        name = theirs + name[len(ours):].replace("MlpBlock_0", "MlpBlock_3")
        vit_file[name] = rng.normal(size=value.shape).astype(np.float32)
  grid = rng.normal(size=(4, 4, 64)).astype(np.float32)
  cls_posemb = rng.normal(size=(1, 1, 64)).astype(np.float32)
  vit_file["Transformer/posembed_input/pos_embedding"] = np.concatenate(
      [cls_posemb, grid.reshape(1, 16, 64)], axis=1)
  vit_file["cls"] = np.zeros((1, 1, 64), np.float32)
  vit_file["head/kernel"] = np.zeros((64, 10), np.float32)
  np.savez(tmp_path / "vit.npz", **vit_file)

  config.encoder_init = str(tmp_path / "vit.npz")
  loaded = uvim_stage2.load_vit_encoder(config.encoder_init, params)
  flat = traverse_util.flatten_dict(loaded, sep="/")
  kernel = "encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel"
  np.testing.assert_array_equal(
      flat[kernel], vit_file[kernel.replace("encoder/", "Transformer/")
                             .replace("MlpBlock_0", "MlpBlock_3")])
  np.testing.assert_array_equal(flat["EmbedPatches/kernel"],
                                vit_file["embedding/kernel"])
  # The 4x4 grid linearly interpolated to 8x8, corners on corners.
  posemb = flat["pos_embedding_encoder"].reshape(8, 8, 64)
  for (i, j), (k, l) in {(0, 0): (0, 0), (0, 7): (0, 3), (7, 0): (3, 0),
                         (7, 7): (3, 3)}.items():
    np.testing.assert_allclose(posemb[i, j], grid[k, l], atol=1e-6)
  # Output column 1 lies at input column 1 * 3 / 7.
  np.testing.assert_allclose(posemb[0, 1], grid[0, 0] + (grid[0, 1] -
                                                          grid[0, 0]) * 3 / 7,
                             atol=1e-5)
  # The decoder is not touched.
  for name, value in traverse_util.flatten_dict(params, sep="/").items():
    if name.startswith("decoder/"):
      np.testing.assert_array_equal(flat[name], value)
  # A deeper ViT does not load into the LM's encoder by its first blocks.
  vit_file["Transformer/encoderblock_2/LayerNorm_0/scale"] = np.ones(64)
  np.savez(tmp_path / "deeper.npz", **vit_file)
  with pytest.raises(ValueError,
                     match=r"not in the LM \['encoder/encoderblock_2/"):
    uvim_stage2.load_vit_encoder(str(tmp_path / "deeper.npz"), params)


@pytest.mark.parametrize("codeword_dim", [8, None])  # None: the width, 32.
def test_encoder_from_base_model_computes_its_zero_code_features(codeword_dim):
  """The LM's encoder, initialised from a random stage-I base model (random
  biases, so the zero code's tokens are not zero), computes the base model's
  decoder features for an all-zero code on any image."""
  config = uvim_synthetic.get_config("smoke_stage2")
  config.oracle.model.codeword_dim = codeword_dim
  config.encoder_from_base_model = True
  trainer = trainers.get_trainer(config)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32),
           "labels": np.zeros((2, 64, 64, 2), np.int32)}
  variables = trainer.init(jax.random.key(0), batch)
  # jax arrays, as a loaded checkpoint's.
  randomize = lambda tree: jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.1, jnp.float32), tree)
  stage1 = {"params": randomize(variables["state"]["oracle"]["params"]),
            "state": variables["state"]["oracle"]["state"]}
  params = uvim_stage2.base_model_as_encoder(
      trainer.oracle.model, stage1, randomize(variables["params"]))

  model = trainer.oracle.model
  zero_code = jnp.zeros((2, model.code_len, model.codeword_size))
  _, inter = model.apply(
      stage1, zero_code, ctx=batch["image"], method=model.decode,
      capture_intermediates=lambda module, _: module.name == "decoder",
      mutable=["intermediates"])
  expected = inter["intermediates"]["decoder"]["__call__"][0]
  encoded = trainer.model.apply({"params": params}, batch["image"],
                                method=trainer.model.encode)
  np.testing.assert_allclose(encoded, expected, atol=1e-5)
  assert float(jnp.std(encoded)) > 0.1  # Not trivially equal.
  # The train step donates params and state: they must not share buffers.
  jax.jit(lambda *trees: trees, donate_argnums=(0, 1))(params, stage1)

  config.encoder_init = "vit.npz"
  with pytest.raises(ValueError, match="not both"):
    trainers.get_trainer(config)
