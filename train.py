r"""Trains and evaluates a uvimx model: the one entry point.

  python train.py --config configs/synthetic_baseline.py:semseg \
      --workdir /tmp/semseg [--config.lr=1e-3 ...]

`config.trainer` names a module of uvimx/trainers/ that says what is model
specific (see uvimx/trainers/__init__.py); everything else is here, top to
bottom: mesh, data, train state, checkpoints, the jitted train step, the loop
with logging and evaluation. A workdir that holds a checkpoint is resumed;
SIGTERM (preemption) checkpoints and exits with status 0.
"""
import functools
import signal
import time

from absl import app
from absl import flags
from absl import logging
from clu import metric_writers
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags
import numpy as np

from evaluators import common as evaluators_common
from uvimx import checkpoint
from uvimx import input_pipeline
from uvimx import sharding
from uvimx import train_state as train_state_lib
from uvimx import trainers
from uvimx import utils

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic_baseline.py:semseg.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and TensorBoard logs.")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def _batch_spec(dataset, trainer):
  """Zeros shaped like one training batch of 1, checked against the model.

  A pp string that yields another shape or dtype than the model takes would
  otherwise fail deep inside the model's tracing, or train on wrong data.

  Args:
    dataset: the training pipeline (its element_spec is read, nothing else).
    trainer: says what the model expects (`input_spec`).

  Returns:
    A dict of numpy zeros with a batch axis of 1.
  """
  pipeline = {k: (tuple(s.shape[1:]), s.dtype.as_numpy_dtype)
              for k, s in dataset.element_spec.items()}
  for key, want in trainer.input_spec(1).items():
    want = (tuple(want.shape[1:]), np.dtype(want.dtype))
    if key not in pipeline:
      raise ValueError(
          f"config.input.pp gives no {key!r} (it gives {sorted(pipeline)}); "
          f"the model needs {key!r} of shape {want[0]} and dtype "
          f"{want[1].name}. Add it to the pipe (and to its final keep()).")
    if pipeline[key] != want:
      got = pipeline[key]
      raise ValueError(
          f"config.input.pp gives {key!r} of shape {got[0]} and dtype "
          f"{np.dtype(got[1]).name}, but the model needs shape {want[0]} and "
          f"dtype {want[1].name}: check the resize/value_range/cast ops of "
          "the pipe and config.model.input_size.")
  return {k: np.zeros((1, *shape), dtype) for k, (shape, dtype) in
          pipeline.items()}


def _raise_if_nonfinite(history, last_checkpoint, config):
  """Raises naming the first step that was not finite, if any."""
  for step, measurements in history:
    if bool(measurements["nonfinite"]):
      loss = float(measurements["loss"])
      what = (f"the training loss is {loss}" if not np.isfinite(loss) else
              f"its update (loss {loss:.4g}) is not finite")
      clip = ("" if config.get("grad_clip_norm") else
              ", set config.grad_clip_norm")
      raise NonFiniteLossError(
          f"At step {step} {what}. Training stopped; the step was not "
          f"applied, and the last checkpoint ({last_checkpoint}) holds finite "
          "values, though maybe of a run already diverging. Lower "
          f"config.lr{clip} or check the input data, and start again in a "
          "new --workdir (this one would resume that checkpoint).")


def _log_training(writer, step, history, *, total_steps, batch_size, lr,
                  seconds):
  """One console line and TensorBoard scalars for the steps in `history`."""
  means = {k: float(np.mean([m[k] for _, m in history]))
           for k in history[-1][1] if k != "nonfinite"}
  steps_per_s = len(history) / seconds
  eta = round((total_steps - step) / steps_per_s)  # Seconds; may pass a day.
  logging.info(
      "step %d/%d  loss %.4f  %.2f steps/s  %.1f images/s  lr %.3g  "
      "ETA %d:%02d:%02d", step, total_steps, means["loss"], steps_per_s,
      steps_per_s * batch_size, lr, eta // 3600, eta // 60 % 60, eta % 60)
  writer.write_scalars(step, {
      **{f"train/{k}": v for k, v in means.items()},
      "train/lr": lr, "train/steps_per_s": steps_per_s,
      "train/images_per_s": steps_per_s * batch_size})


def _variables(train_state):
  """What predict fns take: the model's params and state."""
  return {"params": train_state["params"], "state": train_state["state"]}


def _evaluate(writer, step, evals, variables):
  for scheduled in evals:
    start = time.perf_counter()
    metrics = {f"{scheduled.prefix}{name}": value
               for name, value in scheduled.evaluator.run(variables)}
    logging.info("step %d  %s (%.1fs): %s", step, scheduled.name,
                 time.perf_counter() - start,
                 ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    writer.write_scalars(step, metrics)


def _watch_preemption():
  """(preempted(step), stop_watching()): preempted is True once SIGTERM asked
  the run to stop.

  Several processes must stop at the same step: jax's preemption sync point
  says when. It has its own SIGTERM listener, which a Python handler would
  replace (the signal would then never reach it).
  """
  if jax.process_count() > 1:
    return multihost_utils.reached_preemption_sync_point, lambda: None
  requested = []
  previous = signal.signal(signal.SIGTERM, lambda *_: requested.append(True))
  return (lambda step: bool(requested),
          lambda: signal.signal(signal.SIGTERM, previous))


def train_and_evaluate(config, workdir):
  """Runs (or resumes) training and evaluation as `config` says."""
  mesh = sharding.make_mesh(config.get("mesh", [("data", -1)]))
  trainer = trainers.get_trainer(config)
  # TensorBoard event files; the console gets one concise line per log step.
  writer = (metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
            if jax.process_index() == 0 else metric_writers.MultiWriter([]))
  mngr = checkpoint.manager(workdir, config)
  start_step = mngr.latest_step() or 0

  # The data stream is a function of the seed, so a resumed run skips the
  # batches it has already trained on and sees what an uninterrupted one would.
  train_ds, num_train = input_pipeline.training(
      config.input, seed=config.seed, start_step=start_step)
  batch_size = config.input.batch_size
  # Steps are counted in updates; `*_epochs` are converted with the split size.
  total_steps = utils.steps("total", config, num_train, batch_size)
  steps = functools.partial(utils.steps, config=config, data_size=num_train,
                            batch_size=batch_size, total_steps=total_steps)
  log_steps = steps("log_training", default=50)
  checkpoint_steps = steps("checkpoint", default=0)
  if total_steps < 0:
    raise ValueError(f"config.total_steps={total_steps} must be >= 0 (0: only "
                     "evaluate, e.g. the checkpoint config.model_init).")
  if start_step > total_steps:
    raise ValueError(
        f"The workdir {workdir!r} holds a checkpoint of step {start_step}, "
        f"past config.total_steps={total_steps}: raise total_steps to train "
        "on, or give a new --workdir (e.g. to evaluate config.model_init).")
  keep = config.get("keep_checkpoint_steps")
  if keep and (not checkpoint_steps or keep % checkpoint_steps):
    raise ValueError(
        f"config.keep_checkpoint_steps={keep} keeps the checkpoints whose "
        f"step it divides, but checkpoints are written every "
        f"{checkpoint_steps or 'no'} steps: make it a multiple of "
        "config.checkpoint_steps.")
  sharding.check_batch_size(batch_size, mesh, "config.input.batch_size")

  batch_spec = _batch_spec(train_ds, trainer)
  setup = train_state_lib.setup_train_state(
      config, trainer, mesh, batch_spec, total_steps=total_steps,
      data_size=num_train)

  if start_step:
    logging.info("Resuming from the checkpoint of step %d%s.", start_step,
                 " (config.model_init only starts a new run: not loaded)"
                 if config.get("model_init") else "")
    train_state = checkpoint.restore(mngr, start_step, setup.abstract_state)
  elif config.get("model_init"):
    # The model's variables, as big_vision's model_init: params and state.
    # UViM stage I's codewords are its state, so params alone would pair a
    # trained encoder with a fresh dictionary. They hold any pre-trained
    # part too (e.g. stage II's frozen stage-I model): none is loaded.
    train_state = setup.init(pretrained=False)
    train_state.update(checkpoint.load_variables(
        config.model_init, _variables(setup.abstract_state)))
  else:
    train_state = setup.init()
  # Only now: a config that cannot restore the workdir's checkpoint must not
  # replace the config.json of the run that wrote it.
  checkpoint.save_config(workdir, config)
  last_checkpoint = start_step or "none"

  train_step = train_state_lib.jit_train_step(trainer, setup, mesh)
  evals = evaluators_common.from_config(
      config, trainer.predict_fns(), mesh, workdir=workdir,
      data_size=num_train)
  evaluators_common.check_inputs(evals, _variables(setup.abstract_state))

  # Preemption: finish the current step, checkpoint, exit cleanly.
  preempted, stop_watching = _watch_preemption()
  try:
    if start_step == total_steps:
      # Nothing to train (total_steps 0, or a finished run run again, e.g.
      # one preempted during its final evals): its evals at the last step.
      logging.info("Step %d of %d: evaluating only.", start_step, total_steps)
      _evaluate(writer, total_steps, evals, _variables(train_state))
    batches = train_ds.as_numpy_iterator()
    # Measurements stay on device until a log or checkpoint step needs them,
    # so the host never waits for the device in between.
    history, since = [], time.perf_counter()
    for step in range(start_step + 1, total_steps + 1):
      batch = sharding.put_batch(next(batches), mesh)
      train_state, measurements = train_step(train_state, batch, step)
      history.append((step, measurements))

      stop = preempted(step)
      is_last = stop or step == total_steps
      is_checkpoint = is_last or (
          checkpoint_steps and step % checkpoint_steps == 0)
      is_log = is_last or (log_steps and step % log_steps == 0)
      if is_checkpoint or is_log:
        history = jax.device_get(history)
        _raise_if_nonfinite(history, last_checkpoint, config)
      if is_log:  # The means of all steps since the last log.
        lr = float(setup.sched_fns[0](step - 1))  # Of update `step`.
        _log_training(writer, step, history, total_steps=total_steps,
                      batch_size=batch_size, lr=lr,
                      seconds=time.perf_counter() - since)
        history, since = [], time.perf_counter()
      paused = time.perf_counter()  # Saves and evals do not count as steps.
      if is_checkpoint:
        checkpoint.save(mngr, step, train_state)
        last_checkpoint = step
      if stop:  # The checkpoint completes before this step's evals run.
        mngr.wait_until_finished()
      # Also when preempted: the resumed run starts after this step.
      due = [e for e in evals if e.due(step, total_steps)]
      _evaluate(writer, step, due, _variables(train_state))
      since += time.perf_counter() - paused
      if stop:
        logging.info("Preempted: checkpointed step %d, exiting.", step)
        break
  finally:
    # Also on errors: pending checkpoint writes complete, so the last good
    # checkpoint is valid.
    stop_watching()
    try:
      mngr.wait_until_finished()
      mngr.close()
    finally:
      writer.close()
  return train_state


def main(argv):
  del argv
  sharding.maybe_initialize_distributed()
  if _WORKDIR.value is None:
    raise app.UsageError("Give --workdir, where checkpoints and logs go.")
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
