"""Semantic segmentation: one class per pixel, softmax cross-entropy.

Labels: `batch["semantics"]`, int (B, H, W, 1) class ids in [0, num_classes),
or `ignore_label` for pixels that neither count in the loss nor are scored;
ids outside [0, num_classes) are ignored too (as panoptic's void), where
they would otherwise make the loss NaN.
Model output: "semantics" logits (B, num_patches, num_classes, patch_pixels).
Model input (UViM oracle): "semantics", the labels one-hot in the same layout;
ignored pixels are all zero.

Task arguments (`config.task`):
  num_classes: number of classes (required).
  ignore_label: a label value excluded from the loss, or None (default).
"""
import jax.numpy as jnp

from uvimx.tasks import common


def _args(config):
  return common.task_args(config, num_classes=common.REQUIRED,
                          ignore_label=None)


def model_outputs(config):
  return {"semantics": _args(config)["num_classes"]}


def label_spec(config):
  return {"semantics": common.label_map_spec(config, jnp.int32)}


def valid_labels(labels, num_classes, ignore_label=None):
  """Where `labels` is a class id in [0, num_classes) and not `ignore_label`."""
  valid = (labels >= 0) & (labels < num_classes)
  if ignore_label is not None:
    valid &= labels != ignore_label
  return valid


def targets(batch, config):
  """Labels -> (class ids, valid mask), both (B, num_patches, patch_pixels)."""
  labels = common.to_patches(batch["semantics"], config)[:, :, 0]
  args = _args(config)
  return labels, valid_labels(labels, args["num_classes"],
                              args["ignore_label"])


def model_inputs(batch, config):
  """{"semantics": float32 (B, num_patches, num_classes, patch_pixels)}."""
  classes, valid = targets(batch, config)
  return {"semantics": common.one_hot(classes, valid,
                                      _args(config)["num_classes"])}


def loss(logits, batch, config):
  """Per-example mean cross-entropy over non-ignored pixels, and measurements.

  Args:
    logits: {"semantics": (B, num_patches, num_classes, patch_pixels)}.
    batch: holds "semantics" labels (B, H, W, 1).
    config: the whole config (`task` and `model.patch_size` are read).

  Returns:
    (B,) losses and {"semantics_xent", "semantics_acc"}: the batch mean loss
    and the accuracy over all valid pixels of the batch.
  """
  classes, valid = targets(batch, config)
  per_example = common.softmax_xent(logits["semantics"], classes, valid)
  correct = (jnp.argmax(logits["semantics"], axis=-2) == classes) & valid
  accuracy = jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1)
  return per_example, {"semantics_xent": jnp.mean(per_example),
                       "semantics_acc": accuracy}


def predict_outputs(logits, config):
  """{"semantics": int32 (B, H, W)}: the most likely class of every pixel."""
  return {"semantics": common.argmax_map(logits["semantics"], config)}
