"""Checkpoints: an orbax CheckpointManager over the train state.

The train state is one pytree, {"params", "state", "opt", "rng"}, and the
checkpoint step is the number of updates it has seen. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a
crash while writing leaves the previous checkpoint as the latest valid one.
"""
import functools
import json
import os
import zipfile

from etils import epath
from flax import traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from uvimx import utils


# The directory of the train state in a step directory: the manager's one
# item, which orbax names "default".
_ITEM = "default"
# The run's config, in its workdir.
_CONFIG = "config.json"


def save_config(workdir, config):
  """Writes the run's config to WORKDIR/config.json (from process 0 only).

  The runs that load its checkpoints (e.g. stage II, which reads stage I's)
  check with `check_run_config` that their copy of its model is the one
  trained.
  """
  if jax.process_index() == 0:
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / _CONFIG).write_text(config.to_json_best_effort(indent=2))


def run_config(path):
  """The config (a dict) of the run that wrote the step directory `path`
  (WORKDIR/checkpoints/N), or None if its workdir holds no config.json."""
  config = epath.Path(path).parent.parent / _CONFIG
  return json.loads(config.read_text()) if config.exists() else None


def check_run_config(path, expected):
  """Raises if the run that wrote `path` had other model configs.

  Parameter shapes do not show every difference: with `bottleneck_resize`,
  say, no UViM stage-I parameter depends on `code_len`, and a code of
  another length would decode as garbage. Fields that only one side sets
  are not compared (e.g. a config written before the field existed), nor is
  anything if the workdir has no config.json (a step directory copied alone).

  Args:
    path: a step directory WORKDIR/checkpoints/N.
    expected: {dotted name in that run's config, e.g. "oracle.model": the
      ConfigDict or dict the caller will build the model from}.
  """
  trained = run_config(path)
  differ = []
  for name, ours in ({} if trained is None else expected).items():
    theirs = functools.reduce(lambda d, k: d.get(k) or {}, name.split("."),
                              trained)
    ours = json.loads(ml_collections.ConfigDict(ours).to_json_best_effort())
    differ += [f"{name}.{k} is {ours[k]!r} here, {theirs[k]!r} there"
               for k in sorted(set(ours) & set(theirs))
               if ours[k] != theirs[k]]
  if differ:
    raise ValueError(
        f"the run that wrote {path!r} trained another model (its "
        f"config.json): {'; '.join(differ)}. Give the config that run's "
        "values.")


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
  keep = config.get("keep_checkpoint_steps")
  if keep is not None and (not isinstance(keep, int) or keep < 1):
    raise ValueError(f"config.keep_checkpoint_steps={keep!r} must be a "
                     "positive number of steps, or None to keep only the "
                     "latest checkpoint.")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, keep_period=keep,
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

  Raises:
    ValueError: the checkpoint holds another train state (a workdir of
      another config), rather than orbax's error deep in the restore.
  """
  path = os.path.join(os.fspath(mngr.directory), str(step))
  if wrong := _shape_mismatches(_saved_metadata(os.path.join(path, _ITEM)),
                                abstract_state):
    raise ValueError(
        f"The workdir's checkpoint {path!r} holds the train state of another "
        "config than this one: resume it with the config it was trained "
        "with, or give a new --workdir. It differs in: " + "; ".join(wrong[:5]))
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def _saved_metadata(item):
  """The saved tree's array metadata (shapes, dtypes), read without data."""
  return ocp.StandardCheckpointer().metadata(item).item_metadata


def _shape_mismatches(saved, abstract):
  """"name: checkpoint shape, config shape" for every leaf that differs."""
  shapes = lambda tree: {k: tuple(x.shape) for k, x in utils.named_leaves(tree)}
  ours, theirs = shapes(abstract), shapes(saved)
  return sorted(f"{k}: checkpoint {theirs.get(k)}, config {ours.get(k)}"
                for k in set(ours) | set(theirs)
                if ours.get(k) != theirs.get(k))


def load_variables(path, abstract_variables):
  """Parts of another run's train state, e.g. its params and state.

  Args:
    path: a checkpoint directory, e.g. "WORKDIR/checkpoints/1000".
    abstract_variables: {item: tree of ShapeDtypeStructs or arrays} for the
      items to load, e.g. {"params": ...} or {"params": ..., "state": ...}.

  Returns:
    {item: tree}, placed like `abstract_variables` (leaves without a
    sharding: on the first local device).
  """
  item = os.path.join(path, _ITEM)
  if not epath.Path(item).is_dir():  # Also gs:// paths.
    raise FileNotFoundError(
        f"{path!r} is not a uvimx checkpoint (no {item!r}); give a step "
        "directory such as WORKDIR/checkpoints/1000.")
  metadata = _saved_metadata(item)
  for name, abstract in abstract_variables.items():  # Before any data is read.
    if wrong := _shape_mismatches(metadata.get(name, {}), abstract):
      raise ValueError(
          f"Checkpoint {path!r} holds {name} of another model than the "
          "config's (give the config it was trained with): "
          + "; ".join(wrong[:5]))
  # Straight onto the given shardings: each process reads only its shards,
  # whatever device count or host (e.g. a GPU run) wrote the checkpoint, and
  # the other items (the optimizer state) are not read at all.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  targets = {name: jax.tree.map(
      lambda m, a: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                        sharding=a.sharding or device),
      metadata[name], abstract)
             for name, abstract in abstract_variables.items()}
  return ocp.PyTreeCheckpointer().restore(item, args=ocp.args.PyTreeRestore(
      targets, restore_args=ocp.checkpoint_utils.construct_restore_args(
          targets), partial_restore=True))


def load_big_vision_npz(path, template=None):
  """Reads a big_vision checkpoint (`np.savez` of "/"-joined tree paths).

  big_vision's UViM trainers write stage I as {"params", "state"} and stage II
  as {"params"}, plus "opt/..." and "chrono/..." keys that a loader ignores.
  Older names are renamed as big_vision's loaders do (`_modern_names`).

  Args:
    path: the .npz file.
    template: optional pytree (e.g. {"params": ..., "state": ...} of a fresh
      `model.init`, arrays or ShapeDtypeStructs) to check the file against:
      every template leaf must be in the file with the same shape, and every
      file key under the template's top-level keys must be in the template.

  Returns:
    A nested dict of numpy arrays; with a template, only its top-level keys
    (so "opt" and "chrono" are dropped).

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable .npz, or does not fit `template`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No big_vision checkpoint at {path!r}.")
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {k: npz[k] for k in npz.files}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(
        f"{path!r} is not a readable .npz checkpoint ({e}). A download that "
        "stopped short or saved an error page? Fetch the file again.") from None
  tree = _modern_names(traverse_util.unflatten_dict(flat, sep="/"))
  if template is not None:
    flat = traverse_util.flatten_dict(tree, sep="/")
    expected = dict(utils.named_leaves(template))
    top = {name.split("/")[0] for name in expected}
    flat = {k: v for k, v in flat.items() if k.split("/")[0] in top}
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong_shape = sorted(f"{k}: file {flat[k].shape}, model {expected[k].shape}"
                         for k in set(flat) & set(expected)
                         if flat[k].shape != tuple(expected[k].shape))
    if missing or unexpected or wrong_shape:
      raise ValueError(
          f"big_vision checkpoint {path!r} does not fit this model (check "
          "that the model config matches the checkpoint's):\n"
          f"  missing keys: {missing}\n  unexpected keys: {unexpected}\n"
          f"  wrong shapes: {wrong_shape}")
    tree = {k: v for k, v in tree.items() if k in top}
  return tree


def _modern_names(tree):
  """Older big_vision names, as its UViM loaders (`vit.load`, `vtt.load`)
  rename them: pre-linen module numbers, and stage I's `Encoder` and
  `Decoder` (now `encoder`, `decoder`)."""
  tree = _renumber_pre_linen(tree)
  params = tree.get("params")
  if isinstance(params, dict) and "Encoder" in params:
    params["encoder"] = params.pop("Encoder")
    params["decoder"] = params.pop("Decoder")
  return tree


def _renumber_pre_linen(tree):
  """Pre-linen names count submodules of all types (`MlpBlock_3` after
  `LayerNorm_0`, `..._1`, `LayerNorm_2`); linen counts per type (`MlpBlock_0`).
  As flax's `convert_pre_linen`, which would import TensorFlow here."""
  if not isinstance(tree, dict):
    return tree
  renamed, numbered = {}, {}
  for key, value in tree.items():
    prefix, _, index = key.rpartition("_")
    if prefix and index.isdigit():
      numbered.setdefault(prefix, []).append((int(index), value))
    else:
      renamed[key] = _renumber_pre_linen(value)
  for prefix, values in numbered.items():
    for i, (_, value) in enumerate(sorted(values, key=lambda v: v[0])):
      renamed[f"{prefix}_{i}"] = _renumber_pre_linen(value)
  return renamed
