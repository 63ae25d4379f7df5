"""Panoptic segmentation as two per-pixel classifications, as in UViM.

Labels: `batch["labels"]`, int (B, H, W, 2): (semantics, instances), as the
pp writes them (`coco_panoptic`, which also reads synthetic_scenes, then
`make_canonical` and `concat`): semantic class + 1 with 0 for void, and
instance ids 1..N in raster order of the instances' centres, stuff segments
included, 0 for void. So the oracle sees instance ids only up to this order.
Model outputs: "semantics" (B, num_patches, num_classes, patch_pixels) and
"instances" (B, num_patches, max_instances, patch_pixels) logits.
Model inputs (UViM oracle): the two label channels one-hot in the same layout
(big_vision's `panoptic_task.input_pp`).

Loss (big_vision): the sum over the two channels of the mean softmax
cross-entropy over pixels. An id outside [0, channels) is neither an input
nor a target (big_vision's all-zero one-hot counts it in the mean as 0).
Prediction (big_vision's `panoptic_predictions_from_logits`): every pixel
takes its argmax instance; every instance takes the class whose logits,
summed over the instance's pixels, are largest, so an instance is never
split between classes; instances whose area is not above `min_fraction` of
the image become void (0, 0).

Task arguments (`config.task`):
  num_classes: semantic channels, void (0) included (required).
  max_instances: instance channels, void (0) included (required).
  min_fraction: 0.0, big_vision's default (its COCO config has 0.03**2
    commented out).
"""
import jax
import jax.numpy as jnp

from uvimx.tasks import common

CHANNELS = ("semantics", "instances")


def _args(config):
  return common.task_args(config, num_classes=common.REQUIRED,
                          max_instances=common.REQUIRED, min_fraction=0.0)


def model_outputs(config):
  args = _args(config)
  return {"semantics": args["num_classes"],
          "instances": args["max_instances"]}


def label_spec(config):
  return {"labels": common.label_map_spec(config, jnp.int32, channels=2)}


def targets(batch, config):
  """Labels -> {channel: (ids, valid)}, both (B, num_patches, patch_pixels)."""
  ids = common.to_patches(batch["labels"], config)
  sizes = model_outputs(config)
  return {k: (ids[:, :, i], (ids[:, :, i] >= 0) & (ids[:, :, i] < sizes[k]))
          for i, k in enumerate(CHANNELS)}


def model_inputs(batch, config):
  """{"semantics", "instances"}: float32 one-hot (B, num_patches, C, P)."""
  sizes = model_outputs(config)
  return {k: common.one_hot(ids, valid, sizes[k])
          for k, (ids, valid) in targets(batch, config).items()}


def loss(logits, batch, config):
  """Per-example sum of the channels' mean cross-entropies, and measurements.

  Args:
    logits: {"semantics", "instances"}: (B, num_patches, C, patch_pixels).
    batch: holds "labels" (B, H, W, 2).
    config: the whole config (`task` and `model.patch_size` are read).

  Returns:
    (B,) losses and {"semantics_xent", "instances_xent"}: the batch means of
    the two channels' losses.
  """
  losses = {k: common.softmax_xent(logits[k], ids, valid)
            for k, (ids, valid) in targets(batch, config).items()}
  return sum(losses.values()), {f"{k}_xent": jnp.mean(v)
                                for k, v in losses.items()}


def predict_outputs(logits, config):
  """{"panoptic": int32 (B, H, W, 2)}: (semantics, instances) per pixel."""
  semantics = common.to_pixels(logits["semantics"], config)
  instances = common.to_pixels(logits["instances"], config)
  ins = jnp.argmax(instances, axis=-1)
  masks = jax.nn.one_hot(ins, instances.shape[-1], dtype=jnp.int32)
  # Summed logits rather than a count of per-pixel argmaxes: big_vision's
  # vote, which also weighs how sure every pixel is.
  votes = jnp.einsum("bhwk,bhwn->bnk", semantics, masks)
  sem = jnp.einsum("bhwn,bn->bhw", masks, jnp.argmax(votes, axis=-1))
  fraction = jnp.sum(masks, axis=(1, 2)) / (ins.shape[1] * ins.shape[2])
  big = (fraction > _args(config)["min_fraction"]).astype(jnp.int32)
  keep = jnp.einsum("bhwn,bn->bhw", masks, big)
  panoptic = jnp.stack([sem, ins], axis=-1) * keep[..., None]
  return {"panoptic": panoptic.astype(jnp.int32)}
