"""Tasks: one module per task, the only code that knows a label's encoding.

A task module, selected by `config.task.name`, reads its arguments from
`config.task` and the patch grid from `config.model`, and defines:

  model_outputs(config) -> {name: channels}
      The per-patch outputs a dense model must predict for this task.
  label_spec(config) -> {batch key: jax.ShapeDtypeStruct}
      One example's labels as the pp must deliver them.
  model_inputs(batch, config) -> {name: float32 array}
      The labels as input to a model that reads them, the UViM stage-I
      oracle (big_vision's `input_pp` "x"), in the logits' layout (B,
      num_patches, C, patch_pixels) with `model_outputs`' names and
      channels: one-hot ids for classes, the values for regression; pixels
      without a label are all zero. The oracle's context image is
      `batch["image"]`, whatever the pp made of it (grayscale for
      colorization).
  loss(logits, batch, config) -> (per-example loss (B,), measurements)
      `logits` are {name: (B, num_patches, channels, patch_pixels)};
      `measurements` is a dict of scalars.
  predict_outputs(logits, config) -> {name: (B, H, W) or (B, H, W, C) array}
      The decoded prediction, in the label's own units.

Tasks: semseg, depth, normals, panoptic, colorization. Everything here is
pure JAX: tasks never import TensorFlow.
"""
import importlib

import jax
import jax.numpy as jnp


def get_task(name):
  """Returns the module `uvimx.tasks.<name>`."""
  try:
    return importlib.import_module(f"uvimx.tasks.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"uvimx.tasks.{name}":
      raise
    raise ValueError(f"Unknown config.task.name {name!r}: there is no module "
                     f"uvimx/tasks/{name}.py.") from None


def batch_spec(config, batch_size):
  """A training batch of `config`'s task: float32 RGB images and the labels.

  Args:
    config: holds `task` and `model.input_size` (the image and label size).
    batch_size: the leading axis.

  Returns:
    {"image": (B, H, W, 3) float32, **labels}, as jax.ShapeDtypeStructs.
  """
  task = get_task(config.task.name)
  image = jax.ShapeDtypeStruct((batch_size, *config.model.input_size, 3),
                               jnp.float32)
  labels = {k: jax.ShapeDtypeStruct((batch_size, *v.shape), v.dtype)
            for k, v in task.label_spec(config).items()}
  return {"image": image, **labels}
