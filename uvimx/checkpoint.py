"""Checkpoints: an orbax CheckpointManager over the train state.

The train state is one pytree, {"params", "state", "opt", "rng"}, and the
checkpoint step is the number of updates it has seen. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a
crash while writing leaves the previous checkpoint as the latest valid one.
"""
import os

import jax
import orbax.checkpoint as ocp


def manager(workdir, config):
  """The run's CheckpointManager in `workdir/checkpoints`.

  Keeps the latest checkpoint, plus for good every one whose step is a
  multiple of `config.keep_checkpoint_steps` (if set).

  Args:
    workdir: the run's directory.
    config: reads `keep_checkpoint_steps`.

  Returns:
    The manager; call `close()` when done (it waits for pending writes).
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, keep_period=config.get("keep_checkpoint_steps"),
      create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               options=options)


def save(mngr, step, train_state):
  """Starts writing `train_state` as checkpoint `step` (asynchronously)."""
  mngr.save(step, args=ocp.args.StandardSave(train_state), force=True)


def restore(mngr, step, abstract_state):
  """Restores checkpoint `step` with the shardings of `abstract_state`.

  Args:
    mngr: the manager.
    step: the checkpoint step.
    abstract_state: the train state as `jax.ShapeDtypeStruct`s with
      shardings, so every array lands directly on its devices.

  Returns:
    The train state.
  """
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def load_params(path, abstract_params):
  """Params of another run's checkpoint (`config.model_init`).

  Args:
    path: a checkpoint directory, e.g. "WORKDIR/checkpoints/1000".
    abstract_params: this model's params as sharded ShapeDtypeStructs.

  Returns:
    The params, placed like `abstract_params`.
  """
  item = os.path.join(path, "default")
  if not os.path.isdir(item):
    raise FileNotFoundError(
        f"config.model_init {path!r} is not a uvimx checkpoint (no {item!r}); "
        "give a step directory such as WORKDIR/checkpoints/1000.")
  saved = ocp.StandardCheckpointer().restore(item)["params"]
  if (jax.tree.structure(saved) != jax.tree.structure(abstract_params)):
    raise ValueError(
        f"config.model_init {path!r} holds params of another model: its tree "
        "does not match this config's model.")
  return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), saved,
                      abstract_params)
