"""AiT's label-only conv VQ-VAE (`uvimx/models/conv_vqvae.py`): depth, masks.

The tokenizer sees the label only, never the image. The config:

  config.model = dict(input_size=(H, W), downsample=..., width=16,
                      code_dim=..., num_codes=128, ...)  # conv_vqvae.Model's
      # kwargs; `channels` (1) comes from the task.
  config.task = dict(name="depth", max_depth=10.0)
      # or dict(name="instance_masks", max_instances=8)
  config.w_commitment = 0.25   # weight of the commitment loss (AiT's)
  config.mask_ratio = 0.5      # AiT's mask augmentation (depth); 0 turns it
                               # off, the default for instance masks
  config.mask_patch = 16       # its square patch size, in pixels
  config.objects_per_batch = None  # instance masks: train on at most this
      # many of a batch's B * M object slots, valid ones first (None: all)

Depth ("depth": batch {"depth": (B, H, W, 1) metres}). Depth in metres is
divided by `max_depth`, so that the model's inputs and outputs are about
[0, 1] whatever the depth range; 0 (no measurement) stays 0, as in the
masked patches. AiT feeds its VQ-VAE raw metres (use_norm=False) and its
loss is in m^2. A ReLU network whose biases start at zero scales its
encoder outputs with its input, so both loss terms shrink by about the same
factor, max_depth^2, which Adam does not see.

Mask augmentation (AiT Sec. 3.4): a random `mask_ratio` of the
`mask_patch` x `mask_patch` patches of each input map is zeroed, so that the
tokenizer learns to fill in regions without a measurement; the loss still
compares with the whole unmasked map where it is valid (> 0).

Instance masks ("instance_masks": batch {"masks": (B, M, S, S) in [0, 1],
"classes": (B, M) int, -1 for padding}, as the pp op `instance_objects`
writes them, M = max_instances, (S, S) = model.input_size). Each of the
B * M objects is one (S, S, 1) map; padding objects (class < 0) count
nowhere: not in the reconstruction or commitment loss, not in the EMA
codebook statistics or its restarts (conv_vqvae's `weights`), not in the
metrics. Padding still costs compute; `objects_per_batch` K < B * M moves
the valid objects to the front (in batch order) and keeps the first K slots,
so a batch of B images with about n objects each costs K ~ B * n model
calls, not B * M; valid objects past K (a batch with more than K) are left
out of that step. The loss is AiT's mask VQ-VAE's (vae/configs/insseg: use_norm,
max_value 1, loss_type "mse"): masks mapped to [-1, 1] by 2 m - 1, the
model's output in the same units, the mean squared error over the valid
objects' pixels. Reconstructions are mapped back by (r + 1) / 2; a pixel is
in the reconstructed mask where that is > 0.5, and in the ground truth
where its (resized) mask is > 0.5.
"""
import jax
import jax.numpy as jnp

from uvimx.models import conv_vqvae
from uvimx.models import vq
from uvimx.tasks import common

TASKS = ("depth", "instance_masks")


def mask_patches(rng, x, patch_size, ratio):
  """Zeroes round(ratio * num_patches) random patches of each example.

  Args:
    rng: PRNG key.
    x: (B, H, W, C) maps, H and W multiples of `patch_size`.
    patch_size: side of the square patches, in pixels.
    ratio: the fraction of each example's patches to zero, in [0, 1].

  Returns:
    `x` with the chosen patches, all channels, set to 0.
  """
  batch, height, width = x.shape[:3]
  if height % patch_size or width % patch_size:
    raise ValueError(f"Mask augmentation: the {height}x{width} maps do not "
                     f"split into config.mask_patch={patch_size} patches.")
  grid = (height // patch_size, width // patch_size)
  num_patches = grid[0] * grid[1]
  # Each example's patches ranked in a random order (the inverse of a random
  # permutation): exactly the first round(ratio * n) are masked.
  ranks = jnp.argsort(jnp.argsort(
      jax.random.uniform(rng, (batch, num_patches)), axis=-1), axis=-1)
  keep = (ranks >= round(ratio * num_patches)).reshape(batch, *grid)
  keep = jnp.repeat(jnp.repeat(keep, patch_size, 1), patch_size, 2)
  return jnp.where(keep[..., None], x, 0)


def mask_iou(predicted, target, valid):
  """IoU of binary masks per object.

  Args:
    predicted: (..., S, S) reconstructed masks in [0, 1]; in where > 0.5.
    target: (..., S, S) ground-truth masks in [0, 1]; in where > 0.5.
    valid: (...) bool, the real objects.

  Returns:
    (...) IoUs: |P & T| / |P | T|, 1 where both are empty, 0 for padding.
  """
  p, t = predicted > 0.5, target > 0.5
  intersection = jnp.sum(p & t, axis=(-2, -1))
  union = jnp.sum(p | t, axis=(-2, -1))
  iou = jnp.where(union > 0, intersection / jnp.maximum(union, 1), 1.0)
  return jnp.where(valid, iou, 0.0)


class Trainer:
  """init / loss / predict_fns of the conv VQ-VAE depth or mask tokenizer."""

  def __init__(self, config):
    self.task = config.task.name
    if self.task not in TASKS:
      raise ValueError(f"The vqvae trainer does config.task.name 'depth' or "
                       f"'instance_masks', not {self.task!r}.")
    if self.task == "depth":
      self.max_depth = common.task_args(config, max_depth=10.0)["max_depth"]
    else:
      self.max_instances = common.task_args(
          config, max_instances=8)["max_instances"]
    model = dict(config.model)
    self.label_size = tuple(model.pop("input_size"))
    self.model = conv_vqvae.Model(channels=1, **model)
    self.w_commitment = config.get("w_commitment", 0.25)
    self.mask_ratio = config.get("mask_ratio",
                                 0.5 if self.task == "depth" else 0.0)
    self.mask_patch = config.get("mask_patch", 16)
    self.objects_per_batch = config.get("objects_per_batch", None)
    if self.objects_per_batch is not None and self.task != "instance_masks":
      raise ValueError("config.objects_per_batch is for instance masks.")
    if not 0 <= self.mask_ratio <= 1:
      raise ValueError(f"config.mask_ratio must be in [0, 1], not "
                       f"{self.mask_ratio}.")
    if self.mask_ratio and self.task != "depth":
      raise ValueError(f"config.mask_ratio={self.mask_ratio}: mask "
                       "augmentation (zeroed patches = missing labels) is "
                       "for depth; instance masks are complete. Set it to 0.")
    divisors = {"model.downsample": self.model.downsample}
    if self.mask_ratio:
      divisors["mask_patch"] = self.mask_patch
    for name, size in divisors.items():
      if any(s % size for s in self.label_size):
        raise ValueError(f"The label size {self.label_size} "
                         f"(config.model.input_size) is not divisible by "
                         f"config.{name}={size}.")

  def input_spec(self, batch_size):
    if self.task == "depth":
      return {"depth": jax.ShapeDtypeStruct((batch_size, *self.label_size, 1),
                                            jnp.float32)}
    return {
        "masks": jax.ShapeDtypeStruct(
            (batch_size, self.max_instances, *self.label_size), jnp.float32),
        "classes": jax.ShapeDtypeStruct((batch_size, self.max_instances),
                                        jnp.int32)}

  @staticmethod
  def _objects(batch):
    """(B, M, S, S) masks, (B, M) classes -> (B M, S, S) masks, valid."""
    masks = batch["masks"]
    return (masks.reshape(-1, *masks.shape[2:]),
            batch["classes"].reshape(-1) >= 0)

  def to_model_units(self, labels):
    """Task labels -> the VQ-VAE's inputs (N, H, W, 1).

    Depth (N, H, W, 1) in metres is divided by max_depth, unmeasured pixels
    (<= 0) at exactly 0; masks (N, S, S) in [0, 1] go to [-1, 1] (AiT's
    norm).
    """
    if self.task == "depth":
      return jnp.maximum(labels, 0.0) / self.max_depth
    return labels[..., None] * 2.0 - 1.0

  def from_model_units(self, outputs):
    """The VQ-VAE's outputs (N, H, W, 1) -> depth in metres or masks (N, H, W).

    Masks are not clipped to [0, 1] (losses see the raw output).
    """
    if self.task == "depth":
      return outputs[..., 0] * self.max_depth
    return (outputs[..., 0] + 1.0) / 2.0

  def _inputs(self, batch):
    """The batch's labels in model units: its depth maps or its objects."""
    return self.to_model_units(batch["depth"] if self.task == "depth"
                               else self._objects(batch)[0])

  def init(self, rng, batch):
    return dict(self.model.init(rng, self._inputs(batch)))

  def loss(self, params, state, batch, rng):
    mask_rng, restart_rng = jax.random.split(rng)
    variables = {"params": params, "state": state}
    if self.task == "instance_masks":
      return self._mask_loss(variables, batch, restart_rng)
    target = self.to_model_units(batch["depth"])
    inputs = (mask_patches(mask_rng, target, self.mask_patch, self.mask_ratio)
              if self.mask_ratio else target)
    (reconstruction, aux), new_variables = self.model.apply(
        variables, inputs, train=True, rngs={"restart": restart_rng},
        mutable=["state"])
    # AiT's depth loss (MseIgnoreZeroLoss): the mean squared error over the
    # valid pixels of the whole batch.
    loss_rec = common.masked_mean(jnp.square(reconstruction - target),
                                  target > 0)
    loss_commitment = vq.commitment_loss(aux["z"], aux["z_q"])
    loss = loss_rec + self.w_commitment * loss_commitment
    measurements = dict(
        loss_rec=loss_rec, loss_commitment=loss_commitment,
        rmse=jnp.sqrt(loss_rec) * self.max_depth,  # Metres, batch-wide.
        **self._codebook_measurements(aux["code_counts"]))
    return loss, (new_variables["state"], measurements)

  def _mask_loss(self, variables, batch, restart_rng):
    masks, valid = self._objects(batch)
    if self.objects_per_batch is not None:
      # Valid objects first (a stable sort keeps their order), then padding.
      keep = jnp.argsort(~valid, stable=True)[:self.objects_per_batch]
      masks, valid = masks[keep], valid[keep]
    target = self.to_model_units(masks)
    (reconstruction, aux), new_variables = self.model.apply(
        variables, target, train=True, weights=valid,
        rngs={"restart": restart_rng}, mutable=["state"])
    # Per object, then over the valid objects of the batch (all have S x S
    # pixels and h x w codes, so this is the mean over their pixels/codes).
    loss_rec = common.masked_mean(
        jnp.mean(jnp.square(reconstruction - target), axis=(1, 2, 3)), valid)
    loss_commitment = common.masked_mean(jnp.mean(jnp.square(
        aux["z"] - jax.lax.stop_gradient(aux["z_q"])), axis=(1, 2, 3)), valid)
    loss = loss_rec + self.w_commitment * loss_commitment
    iou = mask_iou(self.from_model_units(reconstruction), masks, valid)
    measurements = dict(
        loss_rec=loss_rec, loss_commitment=loss_commitment,
        mask_iou=common.masked_mean(iou, valid),  # Per object, batch-wide.
        **self._codebook_measurements(aux["code_counts"]))
    return loss, (new_variables["state"], measurements)

  @staticmethod
  def _codebook_measurements(code_counts):
    return dict(codebook_used_ratio=jnp.mean(code_counts > 0),
                codebook_perplexity=vq.perplexity(code_counts))

  def predict_fns(self):
    if self.task == "depth":
      def reconstruct(variables, batch):
        """{"depth": (B, H, W) metres}, the label decoded from its own code."""
        reconstruction, _ = self.model.apply(variables, self._inputs(batch))
        return {"depth": self.from_model_units(reconstruction)}

      return {"reconstruct": reconstruct}

    def reconstruct_masks(variables, batch):
      """{"masks": (B, M, S, S)} in [0, 1] (clipped), decoded from its code."""
      reconstruction, _ = self.model.apply(variables, self._inputs(batch))
      masks = jnp.clip(self.from_model_units(reconstruction), 0.0, 1.0)
      return {"masks": masks.reshape(batch["masks"].shape)}

    def iou(variables, batch):
      """Per-image IoUs of the reconstructed masks, for the "mean" evaluator.

      Returns:
        {"mask_iou": (B,) mean IoU over each image's objects (0 for an image
        without any), "mask_iou_sum": (B,) their sum, "num_objects": (B,)
        how many there are}. Over a split, the mean of "mask_iou" weighs
        images equally; mean("mask_iou_sum") / mean("num_objects") is the
        mean IoU per object.
      """
      masks = reconstruct_masks(variables, batch)["masks"]
      valid = batch["classes"] >= 0
      ious = mask_iou(masks, batch["masks"], valid)
      return {"mask_iou": common.masked_mean(ious, valid, axis=1),
              "mask_iou_sum": jnp.sum(ious, axis=1),
              "num_objects": jnp.sum(valid, axis=1).astype(jnp.float32)}

    return {"reconstruct": reconstruct_masks, "mask_iou": iou}
