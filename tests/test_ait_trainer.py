"""The AiT LM trainer: vocabulary, batch mixing, losses, soft tokens, train.py."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import test_train

from configs import ait_synthetic
from configs import uvim_synthetic
from uvimx import checkpoint
from uvimx import losses
from uvimx import tokenizers
from uvimx import trainers


def _batch(trainer, batch_size=4, seed=0):
  """Random labels of the trainer's input spec: depths 1-6 m, 3 objects."""
  rng = np.random.default_rng(seed)
  spec = trainer.input_spec(batch_size)
  batch = {k: rng.uniform(-1, 1, v.shape).astype(np.float32)
           for k, v in spec.items() if v.dtype == jnp.float32}
  if "depth" in batch:
    batch["depth"] = 1 + 5 * np.abs(batch["depth"])
  if "classes" in spec:
    classes = rng.integers(0, 4, spec["classes"].shape).astype(np.int32)
    classes[:, 3:] = -1
    batch["classes"] = classes
    batch["masks"] = (batch["masks"] > 0).astype(np.float32)
    lo = rng.uniform(0, 0.5, spec["boxes"].shape[:2] + (2,))
    batch["boxes"] = np.concatenate([lo, lo + 0.25], -1).astype(np.float32)
  return batch


@pytest.fixture(scope="module")
def smoke():
  """The lm_smoke trainer (depth and instances), its variables and a batch."""
  trainer = trainers.get_trainer(ait_synthetic.get_config("lm_smoke"))
  batch = _batch(trainer)
  variables = jax.jit(trainer.init)(jax.random.key(0, impl="rbg"), batch)
  return trainer, variables, batch


def test_vocabulary_and_sequence_layout(smoke):
  trainer, _, _ = smoke
  depth, instances = trainer.tasks["depth"], trainer.tasks["instances"]
  assert trainer.names == ["depth", "instances"]
  # 0 pads, 1 and 2 are the task tokens, then the slices, disjoint.
  assert depth.offset == 3
  assert instances.offset == 3 + depth.vocab_size == 3 + 16
  assert trainer.model.vocab_size == 3 + 16 + instances.vocab_size
  # Instances: 65 box coordinates, 4 classes + noise, 16 mask codes.
  assert instances.vocab_size == 65 + 5 + 16
  assert trainer.model.seq_len == max(64, 8 * 21)
  # Sampling never draws the noise class (id 3 + 16 + 65 + 4).
  class_ranges = instances.position_ranges()[4::21]
  assert (class_ranges == [3 + 16 + 65, 3 + 16 + 65 + 4]).all()
  config = ait_synthetic.get_config("lm_smoke")
  config.model.vocab_size = 100
  with pytest.raises(ValueError, match="vocab_size is 100.*derived"):
    trainers.get_trainer(config)


def test_batch_mixing():
  config = ait_synthetic.get_config("lm_smoke")
  config.tasks.depth.mix, config.tasks.instances.mix = 0.25, 0.75
  trainer = trainers.get_trainer(config)
  np.testing.assert_array_equal(trainer.task_ids(8), [0, 0, 1, 1, 1, 1, 1, 1])
  config.tasks.depth.mix = 0.5
  with pytest.raises(ValueError, match="sum to 1"):
    trainers.get_trainer(config)


def test_initial_loss_is_uniform_over_the_vocabulary(smoke):
  """Zero-initialised logits: every weighted token costs log(V)."""
  trainer, variables, batch = smoke
  loss, (_, measurements) = jax.jit(trainer.loss)(
      variables["params"], variables["state"], batch, jax.random.key(1))
  np.testing.assert_allclose(loss, np.log(trainer.model.vocab_size),
                             rtol=1e-5)
  for name in trainer.names:
    np.testing.assert_allclose(measurements[f"{name}_xent"],
                               np.log(trainer.model.vocab_size), rtol=1e-5)


def _one_hot_logits(tokens, vocab_size):
  """Logits whose softmax is exactly one-hot at `tokens`."""
  return 1e4 * jax.nn.one_hot(tokens, vocab_size)


def test_conv_tokenizer_soft_decoding_of_one_hot_equals_hard(smoke):
  trainer, variables, batch = smoke
  for name, labels in (("depth", batch["depth"]),
                       ("instances", batch["masks"][:, 0])):
    tokenizer, state = trainer.tasks[name].tokenizer, variables["state"][name]
    codes = tokenizer.encode_labels(state, labels)
    soft = tokenizer.decode_labels(
        state, jax.nn.one_hot(codes, tokenizer.num_codes))
    grid = codes.reshape(-1, *tokenizer.grid)
    hard = tokenizer.model.apply(state, grid, method=tokenizer.model.decode)
    np.testing.assert_allclose(
        soft, tokenizer.vqvae.from_model_units(hard), rtol=1e-6, atol=1e-6)
    # A mix of two codes is not either one's decoding.
    mixed = tokenizer.decode_labels(state, 0.5 * jax.nn.one_hot(
        codes, tokenizer.num_codes) + 0.5 * jax.nn.one_hot(
            (codes + 1) % tokenizer.num_codes, tokenizer.num_codes))
    assert np.abs(np.asarray(mixed - soft)).max() > 1e-4


def test_uvim_tokenizer_soft_decoding_of_one_hot_equals_hard():
  stage1 = uvim_synthetic.get_config("smoke_stage1")
  tokenizer = tokenizers.get(ml_collections.ConfigDict(dict(
      kind="uvim", model=stage1.model, task=stage1.task)))
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32),
           "labels": rng.integers(0, 5, (2, 64, 64, 2)).astype(np.int32)}
  variables = jax.jit(tokenizer.init)(jax.random.key(0), batch)
  codes = tokenizer.encode(variables, batch)
  assert codes.shape == (2, stage1.model.code_len)
  probs = jax.nn.one_hot(codes, tokenizer.num_codes)
  soft = tokenizer._logits(variables, probs, batch["image"])
  hard, _ = tokenizer.model.apply(variables, codes, ctx=batch["image"],
                                  discrete_input=True,
                                  method=tokenizer.model.decode)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               soft, hard)
  # Its auxiliary loss is the stage-I task's own loss of that output.
  np.testing.assert_allclose(
      tokenizer.aux_loss(variables, probs, batch),
      tokenizer.task.loss(hard, batch, tokenizer.task_config)[0], rtol=1e-5)


def test_depth_aux_loss_is_silog_of_the_detokenized_code(smoke):
  """Teacher-forced logits at the true codes decode the tokenizer's own
  reconstruction; the loss is its SILog, and its gradient reaches the LM."""
  trainer, variables, batch = smoke
  task, state = trainer.tasks["depth"], variables["state"]["depth"]
  targets = task.sequences(state, batch, None)["targets"]
  logits = _one_hot_logits(targets, trainer.model.vocab_size)
  recon = task.tokenizer.decode_labels(
      state, jax.nn.one_hot(targets - task.offset, task.vocab_size))
  gt = batch["depth"][..., 0]
  np.testing.assert_allclose(
      task.aux_loss(state, logits, batch, None),
      losses.silog(jnp.maximum(recon, 1e-3), gt, gt > 0), rtol=1e-5)

  config = ait_synthetic.get_config("lm_smoke")
  config.tasks.depth.aux_weight = 1.0
  with_aux = trainers.get_trainer(config)
  grad = lambda t: jax.jit(jax.grad(lambda p: t.loss(
      p, variables["state"], batch, jax.random.key(1))[0]))(
          variables["params"])
  difference = jax.tree.map(lambda a, b: np.abs(a - b).max(),
                            grad(with_aux), grad(trainer))
  assert difference["decoder"]["LogitsDense"]["kernel"] > 0


def test_instance_aux_loss_is_dice_plus_mse_of_real_objects(smoke):
  trainer, variables, batch = smoke
  task, state = trainer.tasks["instances"], variables["state"]["instances"]
  task = type(task).__new__(type(task))
  task.__dict__.update(trainer.tasks["instances"].__dict__, aux_tau=1.0)
  # The decoder's output bias raised, so that masks go beyond 1.
  state = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 2 if "to_label']['bias" in jax.tree_util.keystr(
          path) else x, state)
  seqs = task.sequences(state, batch, jax.random.key(3))
  logits = _one_hot_logits(seqs["targets"], trainer.model.vocab_size)
  aux = np.asarray(task.aux_loss(state, logits, batch, seqs))
  # By hand: decode each real object's target mask codes, compare with the
  # ground-truth crop of the input slot it came from.
  codec = task.codec
  targets = np.asarray(seqs["targets"]).reshape(
      -1, codec.max_instances, codec.object_len)
  expected, unclipped = [], []
  for i, objects in enumerate(np.asarray(seqs["objects"])):
    values = []
    for j, slot in enumerate(objects):
      if slot < 0:
        continue
      codes = targets[i, j, 5:] - codec.mask_start
      pred = np.asarray(task.tokenizer.decode_labels(
          state, jax.nn.one_hot(codes[None], codec.num_codes)))[0]
      gt = batch["masks"][i, slot]
      dice = lambda p, gt=gt: 1 - (2 * np.sum(p * gt) + 1) / (
          p.sum() + gt.sum() + 1)
      # Dice of the mask clipped to [0, 1] (as AiT), MSE of the raw one.
      mse = np.mean((pred - gt) ** 2)
      values.append((dice(np.clip(pred, 0, 1)) + mse, dice(pred) + mse))
    expected.append(np.mean(values, axis=0))
  expected, unclipped = np.array(expected).T
  assert (np.asarray(seqs["objects"]) >= 0).sum(1).tolist() == [3] * 4
  np.testing.assert_allclose(aux, expected, rtol=1e-4)
  assert np.abs(expected - unclipped).max() > 1e-2  # Clipping matters here.


@pytest.mark.parametrize("variant", ["lm_smoke", "instances_lm"])
def test_parallel_needs_a_single_codes_task(variant):
  # AiT-P's inputs carry no task token and no earlier object.
  config = ait_synthetic.get_config(variant)
  config.model.parallel = True
  with pytest.raises(ValueError, match="needs a single 'codes' task"):
    trainers.get_trainer(config)


def test_predict_fns(smoke):
  trainer, variables, batch = smoke
  fns = trainer.predict_fns()
  assert sorted(fns) == ["depth", "depth_hard", "instances"]
  depth = jax.jit(fns["depth"])(variables, batch)["depth"]
  assert depth.shape == (4, 64, 64)
  out = jax.jit(fns["instances"])(variables, batch)
  assert out["masks"].shape == (4, 8, 64, 64) and out["masks"].dtype == bool
  # Boxes in pixels of the 64x64 image, ordered; masks inside their boxes.
  boxes = np.asarray(out["boxes"])
  assert (boxes >= 0).all() and (boxes <= 64).all()
  assert (boxes[..., 2] >= boxes[..., 0]).all()
  rows = np.arange(64)[None, None, :, None] + 0.5
  outside = ((rows < boxes[..., 0, None, None])
             | (rows >= boxes[..., 2, None, None]))
  assert not np.asarray(out["masks"])[np.broadcast_to(
      outside, out["masks"].shape)].any()
  classes, scores = np.asarray(out["classes"]), np.asarray(out["scores"])
  assert ((classes == -1) == (scores == 0)).all()


def _train(variant, workdir, data_dir, *flags):
  result = subprocess.run(
      [sys.executable, "train.py", "--config",
       f"configs/ait_synthetic.py:{variant}", "--workdir", str(workdir),
       *flags],
      cwd=test_train.REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TFDS_DATA_DIR": data_dir})
  assert result.returncode == 0, result.stderr[-3000:]
  return ait_synthetic.get_config(variant).total_steps


def test_lm_smoke_trains_and_evaluates(smoke, tfds_data_dir, tmp_path):
  """The joint smoke LM through train.py, on tokenizer checkpoints.

  The tokenizers are the fixture's initialised ones, written as step 1 of
  a run (their training is tested in test_vqvae_trainer.py).
  """
  _, variables, _ = smoke
  flags = []
  for name in ("depth", "instances"):
    mngr = checkpoint.manager(str(tmp_path / name), ml_collections.ConfigDict())
    checkpoint.save(mngr, 1, variables["state"][name])
    mngr.close()
    flags.append(f"--config.tasks.{name}.tokenizer.checkpoint="
                 f"{tmp_path / name}/checkpoints/1")
  result = subprocess.run(
      [sys.executable, "train.py", "--config",
       "configs/ait_synthetic.py:lm_smoke", "--workdir", str(tmp_path / "lm"),
       *flags],
      cwd=test_train.REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TFDS_DATA_DIR": tfds_data_dir})
  assert result.returncode == 0, result.stderr[-3000:]
  last = ait_synthetic.get_config("lm_smoke").total_steps
  workdir = str(tmp_path / "lm")
  assert test_train.checkpoint_steps(workdir)[-1] == last
  for tag in ("depth/rmse", "depth_hard/rmse"):
    assert np.isfinite(test_train.scalars(workdir, tag)[last])
  for tag in ("instances/box_AP", "instances/mask_AP"):
    assert 0 <= test_train.scalars(workdir, tag)[last] <= 100
  for tag in ("train/depth_xent", "train/instances_xent"):
    assert np.isfinite(test_train.scalars(workdir, tag)[last])
