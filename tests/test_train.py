"""End-to-end tests of train.py on synthetic_scenes/tiny (8 CPU devices)."""
import functools
import glob
import os
import pathlib
import signal
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax
import pytest
import tensorflow as tf

from configs import synthetic_baseline
from uvimx import checkpoint
from uvimx import input_pipeline
from uvimx import sharding
from uvimx import train_state
from uvimx import trainers
import train

REPO = pathlib.Path(__file__).parent.parent


def smoke_config(data_dir, **overrides):
  config = synthetic_baseline.get_config("smoke")
  config.input.data.data_dir = data_dir
  for evaluator in config.evals.values():
    evaluator.data.data_dir = data_dir
  for key, value in overrides.items():
    config[key] = value
  return config


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints")
                .iterdir() if p.name.isdigit())


def scalars(workdir, tag, files="events.out.tfevents.*"):
  """{step: value} of a TensorBoard scalar written by the run."""
  values = {}
  for path in glob.glob(os.path.join(workdir, files)):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a),
               jax.device_get(b))


def test_resume_after_sigterm_equals_uninterrupted_run(tfds_data_dir,
                                                       tmp_path):
  total = 40
  config = smoke_config(tfds_data_dir, total_steps=total, checkpoint_steps=0,
                        log_training_steps=1)
  config.evals.val.log_steps = 0  # Only at the end: keeps the test fast.
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))

  # A real preemption: SIGTERM to a running `python train.py` once it has
  # logged step 3; it must checkpoint the step it is in, evaluate it (it
  # evaluates every step) and exit with 0.
  workdir = str(tmp_path / "b")
  process = subprocess.Popen(
      [sys.executable, "train.py", "--config",
       "configs/synthetic_baseline.py:smoke", "--workdir", workdir,
       f"--config.total_steps={total}", "--config.checkpoint_steps=0",
       "--config.log_training_steps=1", "--config.evals.val.log_steps=1"],
      cwd=REPO, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "TFDS_DATA_DIR": tfds_data_dir})
  for line in process.stderr:
    if f"step 3/{total}" in line:
      process.send_signal(signal.SIGTERM)
      break
  process.stderr.read()
  assert process.wait(timeout=120) == 0
  stopped, = checkpoint_steps(workdir)
  assert 3 <= stopped < total
  # The evaluation of the preempted step ran too (the resumed run starts
  # after it).
  assert max(scalars(workdir, "val/miou")) == stopped

  resumed = train.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == [total]
  for key in ("params", "opt", "state"):
    assert_trees_equal(resumed[key], uninterrupted[key])


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tfds_data_dir,
                                                      tmp_path):
  workdir = str(tmp_path)
  config = smoke_config(tfds_data_dir, total_steps=3, evals={})
  good = train.train_and_evaluate(config, workdir)
  # Continue on images made NaN by a 0/0 value range: step 4 has a NaN loss.
  config.total_steps = 5
  config.input.pp = config.input.pp.replace(
      "value_range(-1, 1)", "value_range(-1, 1, in_min=0, in_max=0)")
  with pytest.raises(train.NonFiniteLossError,
                     match=r"step 4 the training loss is nan.*last "
                     r"checkpoint \(3\) holds finite values"):
    train.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == [3]
  # The checkpoint still holds the good parameters (a resume restores them).
  config.input.pp = synthetic_baseline.get_config("smoke").input.pp
  config.total_steps = 3
  assert_trees_equal(train.train_and_evaluate(config, workdir)["params"],
                     good["params"])


def test_workdir_and_step_mistakes_raise(tfds_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = lambda **kw: smoke_config(tfds_data_dir, evals={}, **kw)
  train.train_and_evaluate(config(total_steps=3), workdir)
  # Evaluating (total_steps=0) in the workdir of a run would resume it.
  with pytest.raises(ValueError, match="step 3, past config.total_steps=0"):
    train.train_and_evaluate(config(total_steps=0), workdir)
  # Resuming with another model: named, not orbax's restore error.
  wider = config(total_steps=5)
  wider.model.width = 64
  with pytest.raises(ValueError, match="another config than this one.*"
                     r"embedding/kernel: checkpoint \(8, 8, 3, 32\), "
                     r"config \(8, 8, 3, 64\)"):
    train.train_and_evaluate(wider, workdir)
  assert checkpoint_steps(workdir) == [3]
  # The run's config.json still says what trained the checkpoint.
  assert checkpoint.run_config(
      os.path.join(workdir, "checkpoints", "3"))["model"]["width"] == 32
  with pytest.raises(ValueError, match="total_steps=-1 must be >= 0"):
    train.train_and_evaluate(config(total_steps=-1), str(tmp_path / "new"))
  # An eval pp giving another image size: found at startup, not mid-run.
  small = config(total_steps=3)
  small.evals = synthetic_baseline.get_config("smoke").evals
  small.evals.val.data.data_dir = tfds_data_dir
  small.evals.val.pp = small.evals.val.pp.replace("resize(64)", "resize(32)")
  with pytest.raises(ValueError, match=r"config.evals.val: its pp gives "
                     r"examples \{'image': 'float32\[32, 32, 3\]'"):
    train.train_and_evaluate(small, str(tmp_path / "small"))
  assert not (tmp_path / "small" / "checkpoints").exists() or not (
      checkpoint_steps(tmp_path / "small"))
  with pytest.raises(ValueError, match="keep_checkpoint_steps=0 must be a "
                     "positive number"):
    train.train_and_evaluate(config(keep_checkpoint_steps=0),
                             str(tmp_path / "keep0"))
  with pytest.raises(ValueError, match="keep_checkpoint_steps=4 keeps .* "
                     "every 3 steps: make it a multiple"):
    train.train_and_evaluate(config(keep_checkpoint_steps=4),
                             str(tmp_path / "keep4"))
  # 8 devices in the tests (conftest): a batch of 12 does not split evenly.
  odd = config(total_steps=3)
  odd.input.batch_size = 12
  with pytest.raises(ValueError, match="config.input.batch_size=12 is not "
                     "divisible by the 8 devices"):
    train.train_and_evaluate(odd, str(tmp_path / "odd"))


class _OverflowingTrainer:
  """loss = 1e30 w: finite, but its gradient 1e30 times an lr of 1e10
  overflows w to -inf."""

  @staticmethod
  def loss(params, state, batch, rng):
    del batch, rng
    return 1e30 * params["w"].sum(), (state, {})


def test_an_update_that_overflows_the_params_is_not_applied():
  tx = optax.sgd(1e10)
  params = {"w": jax.numpy.ones(2)}
  before = {"params": params, "opt": tx.init(params), "state": {},
            "rng": jax.random.key_data(jax.random.key(0))}
  after, measurements = train_state.make_train_step(_OverflowingTrainer, tx)(
      before, {}, 1)
  assert float(measurements["loss"]) == pytest.approx(2e30)  # Finite.
  assert bool(measurements["nonfinite"])
  assert_trees_equal(after, before)


class _StateTrainer:
  """Updates state["ema"] by `factor`; passes state["frozen"] through."""

  def __init__(self, factor):
    self.factor = factor

  def loss(self, params, state, batch, rng):
    del batch, rng
    new_state = dict(state, ema=state["ema"] * self.factor)
    return params["w"].sum(), (new_state, {})


@pytest.mark.parametrize("factor, applied", [(2.0, True), (np.nan, False)])
def test_a_step_that_makes_the_model_state_nan_is_not_applied(factor,
                                                              applied):
  tx = optax.sgd(0.1)
  params = {"w": jax.numpy.ones(2)}
  # A frozen model passed through as it came is not checked: a NaN there
  # is the pre-trained model's, not this step's.
  state = {"ema": jax.numpy.ones(3), "frozen": jax.numpy.full(2, np.nan)}
  before = {"params": params, "opt": tx.init(params), "state": state,
            "rng": jax.random.key_data(jax.random.key(0))}
  after, measurements = train_state.make_train_step(
      _StateTrainer(factor), tx)(before, {}, 1)
  assert bool(measurements["nonfinite"]) is not applied
  if applied:
    np.testing.assert_array_equal(after["state"]["ema"], [2.0] * 3)
    np.testing.assert_allclose(after["params"]["w"], [0.9, 0.9])
  else:
    assert_trees_equal(after, before)


def test_total_steps_zero_evaluates_model_init(tfds_data_dir, tmp_path):
  trained = train.train_and_evaluate(
      smoke_config(tfds_data_dir, total_steps=3), str(tmp_path / "train"))
  # The finished run, run again (e.g. preempted during its final evals):
  # its evals at step 3 run again, on the same model.
  train.train_and_evaluate(smoke_config(tfds_data_dir, total_steps=3),
                           str(tmp_path / "train"))
  second = sorted(glob.glob(str(tmp_path / "train" / "events.out.*")),
                  key=os.path.getmtime)[-1]
  assert list(scalars(str(tmp_path / "train"), "val/miou",
                      files=os.path.basename(second))) == [3]
  workdir = str(tmp_path / "eval")
  config = smoke_config(
      tfds_data_dir, total_steps=0,
      model_init=str(tmp_path / "train" / "checkpoints" / "3"))
  evaluated = train.train_and_evaluate(config, workdir)
  assert_trees_equal(evaluated["params"], trained["params"])
  miou = scalars(workdir, "val/miou")
  assert list(miou) == [0] and 0 <= miou[0] <= 100
  assert not (pathlib.Path(workdir) / "checkpoints").exists() or (
      checkpoint_steps(workdir) == [])


@pytest.mark.parametrize("spec", [
    "synthetic_baseline.py:semseg", "polymax_nyu.py:depth",
    "uvim_synthetic.py:panoptic_stage1", "uvim_paper.py:panoptic_stage2",
    "ait_synthetic.py:depth_tokenizer", "ait_synthetic.py:mask_tokenizer",
    "ait_synthetic.py:joint_lm", "bench_uvim.py:s1"])
def test_model_init_can_be_given_on_the_command_line(spec):
  # train.py locks its config, so only a field the config declares can be
  # set by a flag; every config builder declares model_init.
  argv = ["train.py", f"--config={REPO / 'configs' / spec}",
          "--config.model_init=/runs/a/checkpoints/100"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  assert flag_values.config.model_init == "/runs/a/checkpoints/100"


def test_missing_model_init_is_a_clear_error(tfds_data_dir, tmp_path):
  config = smoke_config(tfds_data_dir, total_steps=0,
                        model_init=str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="not a uvimx checkpoint"):
    train.train_and_evaluate(config, str(tmp_path / "wd"))


@pytest.fixture(scope="module")
def smoke_batch(tfds_data_dir):
  """One real training batch of the smoke config."""
  config = smoke_config(tfds_data_dir)
  ds, _ = input_pipeline.training(config.input, seed=0)
  return config, next(ds.as_numpy_iterator())


def _two_steps(config, batch, mesh):
  trainer = trainers.get_trainer(config)
  setup = train_state.setup_train_state(config, trainer, mesh, batch,
                                  total_steps=10)
  step_fn = train_state.jit_train_step(trainer, setup, mesh)
  state, losses = setup.init(), []
  for step in (1, 2):
    state, measurements = step_fn(state, sharding.put_batch(batch, mesh), step)
    losses.append(float(measurements["loss"]))
  return state, losses


@pytest.mark.parametrize("mesh_config, rules", [
    ([("data", 8)], [(".*", "replicate")]),
    ([("data", 2), ("fsdp", 4)], [("params/.*", "fsdp"), ("opt/.*", "fsdp")]),
])
def test_sharded_train_steps_match_one_device(smoke_batch, mesh_config,
                                              rules):
  config, batch = smoke_batch
  one = sharding.make_mesh([("data", 1)], devices=jax.devices()[:1])
  reference, reference_losses = _two_steps(config, batch, one)
  config = config.copy_and_resolve_references()
  config.mesh, config.sharding_rules, config.fsdp_min_size = (
      mesh_config, rules, 256)
  state, losses = _two_steps(config, batch, sharding.make_mesh(mesh_config))
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6),
               jax.device_get(state["params"]),
               jax.device_get(reference["params"]))
  if "fsdp" in dict(mesh_config):
    kernel = state["params"]["encoder"]["encoderblock_0"]["MlpBlock_0"][
        "Dense_0"]["kernel"]
    assert "fsdp" in kernel.sharding.spec
    assert kernel.addressable_shards[0].data.size == kernel.size // 4


def test_pipeline_not_matching_the_model_is_a_clear_error(tfds_data_dir,
                                                          tmp_path):
  config = smoke_config(tfds_data_dir, total_steps=1)
  config.input.pp = config.input.pp.replace("resize(64)|", "resize(48)|")
  with pytest.raises(ValueError, match=r"gives 'image' of shape \(48, 48, 3\)"
                     r".*needs shape \(64, 64, 3\)"):
    train.train_and_evaluate(config, str(tmp_path))
  config = smoke_config(tfds_data_dir, total_steps=1)
  config.input.pp = config.input.pp.replace("cast('int32', key='semantics')|",
                                            "")
  with pytest.raises(ValueError, match="'semantics'.*dtype uint8.*int32"):
    train.train_and_evaluate(config, str(tmp_path))


def test_zero_log_steps_logs_only_the_last_step(tfds_data_dir, tmp_path):
  config = smoke_config(tfds_data_dir, total_steps=3, log_training_steps=0,
                        checkpoint_steps=2, evals={})
  train.train_and_evaluate(config, str(tmp_path / "last"))
  last = scalars(str(tmp_path / "last"), "train/loss")
  assert list(last) == [3]
  # The mean of all three steps, the checkpoint at step 2 notwithstanding.
  config = smoke_config(tfds_data_dir, total_steps=3, log_training_steps=1,
                        evals={})
  train.train_and_evaluate(config, str(tmp_path / "every"))
  every = scalars(str(tmp_path / "every"), "train/loss")
  assert last[3] == pytest.approx(np.mean(list(every.values())), rel=1e-6)


def test_grad_accumulation_matches_the_whole_batch(smoke_batch):
  """Micro-batches (config.grad_accum_steps) give the whole batch's step."""
  config, batch = smoke_batch
  one = sharding.make_mesh([("data", 1)], devices=jax.devices()[:1])
  reference, reference_losses = _two_steps(config, batch, one)
  config = config.copy_and_resolve_references()
  config.grad_accum_steps = 4  # Micro-batches of 2, one per device.
  config.mesh = [("data", 2)]
  state, losses = _two_steps(config, batch, sharding.make_mesh(
      config.mesh, devices=jax.devices()[:2]))
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6),
               jax.device_get(state["params"]),
               jax.device_get(reference["params"]))


def test_grad_accumulation_errors(smoke_batch):
  config, batch = smoke_batch
  one = sharding.make_mesh([("data", 1)], devices=jax.devices()[:1])
  config = config.copy_and_resolve_references()
  config.grad_accum_steps = 3
  with pytest.raises(ValueError, match="divide config.input.batch_size=8"):
    train_state.setup_train_state(config, trainers.get_trainer(config), one,
                                  batch, total_steps=10)
  config.grad_accum_steps = 2  # Micro-batches of 4 over 8 devices.
  with pytest.raises(ValueError, match="micro-batches of 4 examples, which "
                     "do not split over the 8 devices"):
    train_state.setup_train_state(config, trainers.get_trainer(config),
                                  sharding.make_mesh([("data", 8)]), batch,
                                  total_steps=10)
  # UViM stage I updates its VQ dictionary at every batch: refused when the
  # step is traced, before any update.
  from configs import uvim_synthetic  # pylint: disable=g-import-not-at-top
  config = uvim_synthetic.get_config("smoke_stage1")
  config.grad_accum_steps = 2
  trainer = trainers.get_trainer(config)
  batch = {k: jnp.zeros(s.shape, s.dtype)
           for k, s in trainer.input_spec(2).items()}
  setup = train_state.setup_train_state(config, trainer, one, batch,
                                        total_steps=10)
  with pytest.raises(ValueError, match="loss updates the model state"):
    jax.eval_shape(train_state.make_train_step(trainer, setup.tx, 2),
                   setup.abstract_state, batch, 1)


def test_grad_accumulation_with_a_frozen_model_in_the_state():
  """UViM stage II keeps its frozen oracle in the model state: micro-batches
  give the whole batch's step there too."""
  from configs import uvim_synthetic  # pylint: disable=g-import-not-at-top
  config = uvim_synthetic.get_config("smoke_stage2")
  trainer = trainers.get_trainer(config)
  spec = trainer.input_spec(4)
  keys = jax.random.split(jax.random.key(0), len(spec))
  batch = {k: jax.random.randint(key, s.shape, 0, 3).astype(s.dtype)
           for key, (k, s) in zip(keys, sorted(spec.items()))}
  one = sharding.make_mesh([("data", 1)], devices=jax.devices()[:1])
  states = []
  for accum in (1, 2):
    config.grad_accum_steps = accum
    setup = train_state.setup_train_state(config, trainer, one, batch,
                                          total_steps=10)
    state, measurements = jax.jit(train_state.make_train_step(
        trainer, setup.tx, accum))(setup.init(pretrained=False), batch, 1)
    states.append(jax.device_get((state, measurements["loss"])))
  np.testing.assert_allclose(states[1][1], states[0][1], rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6), states[1][0], states[0][0])
