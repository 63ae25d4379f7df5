"""What the quality drivers share: their flags, training a run, its logs.

Each run (a variant of one config) lives in WORKDIR/<variant> and is trained
by `train.py` in a subprocess, unless its last checkpoint exists: a driver
can be repeated (or run in several processes on disjoint --runs) and then
reads every finished run's validation metrics from the TensorBoard logs.
"""
import glob
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags
import jax
import tensorflow as tf

from uvimx import checkpoint as checkpoint_lib
from uvimx import input_pipeline
from uvimx import trainers

WORKDIR = flags.DEFINE_string("workdir", None, "One subdirectory per run.",
                              required=True)
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
RUNS = flags.DEFINE_list(
    "runs", None, "Variants to train (default all); the table shows all "
    "that have finished.")


def selected(variants):
  """The --runs to train, in order; all `variants` by default."""
  for variant in RUNS.value or ():
    if variant not in variants:
      raise SystemExit(f"Unknown run {variant!r}: use {list(variants)}.")
  return RUNS.value or list(variants)


def workdir(variant):
  return os.path.join(WORKDIR.value, variant)


def last_checkpoint(variant, total_steps):
  return os.path.join(workdir(variant), "checkpoints", str(total_steps))


def finished(variant, total_steps):
  return os.path.isdir(last_checkpoint(variant, total_steps))


def train(config_file, variant, total_steps, extra_flags=(), needs=None):
  """Trains `config_file:variant` unless it has finished.

  Args:
    config_file: the config's path.
    variant: its variant, also the run's subdirectory.
    total_steps: the variant's, which tell that a run has finished.
    extra_flags: more train.py flags.
    needs: {config field: (run, its total_steps)}: each field is set to
      that run's last checkpoint (e.g. a stage-I model), which must exist.
  """
  for field, (run, steps) in (needs or {}).items():
    if not finished(run, steps):
      raise SystemExit(f"{variant} needs the finished {run} run "
                       f"({last_checkpoint(run, steps)}): train it first.")
    extra_flags = [*extra_flags,
                   f"--config.{field}={last_checkpoint(run, steps)}"]
  if finished(variant, total_steps) and any(
      not tag.startswith("train/") for tag in scalars(variant, total_steps)[0]):
    return  # Trained and evaluated; else train.py runs its final evals.
  command = [sys.executable, "train.py", f"--config={config_file}:{variant}",
             f"--workdir={workdir(variant)}"]
  if DATA_DIR.value:
    # The configs' data_dir is one placeholder shared by train and evals.
    command.append(f"--config.input.data.data_dir={DATA_DIR.value}")
  command += list(extra_flags)
  print(" ".join(command), flush=True)
  subprocess.run(command, check=True)


def scalars(variant, step):
  """{tag: value} logged at `step` (the latest, if logged again), and the
  run's wall seconds (of each resumed part, without the pauses)."""
  values, seconds = {}, 0.0
  for path in sorted(glob.glob(os.path.join(workdir(variant),
                                            "events.out.tfevents.*"))):
    times = []
    for event in tf.compat.v1.train.summary_iterator(path):
      times.append(event.wall_time)
      for value in event.summary.value:
        if event.step == step:
          values[value.tag] = float(tf.make_ndarray(value.tensor))
    seconds += max(times) - min(times) if times else 0.0
  return values, seconds or float("nan")


def trained_model(config, variant):
  """`config`'s trainer and the variables of `variant`'s last checkpoint."""
  trainer = trainers.get_trainer(config)
  abstract = jax.eval_shape(trainer.init, jax.random.key(0),
                            trainer.input_spec(1))
  variables = checkpoint_lib.load_variables(
      last_checkpoint(variant, config.total_steps), abstract)
  return trainer, variables


def validation(config, batch_size):
  """`config`'s val split with its eval pp, read from --data_dir."""
  val = config.evals.val
  dataset, _ = input_pipeline.evaluation(
      dict(val.data, data_dir=DATA_DIR.value), val.pp, batch_size)
  return dataset
