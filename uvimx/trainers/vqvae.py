"""AiT's label-only conv VQ-VAE (`uvimx/models/conv_vqvae.py`) on depth maps.

The tokenizer sees the label only, never the image. The config:

  config.model = dict(input_size=(H, W), downsample=..., width=16,
                      code_dim=..., num_codes=128, ...)  # conv_vqvae.Model's
      # kwargs; `channels` comes from the task.
  config.task = dict(name="depth", max_depth=10.0)
  config.w_commitment = 0.25   # weight of the commitment loss (AiT's)
  config.mask_ratio = 0.5      # AiT's mask augmentation; 0 turns it off
  config.mask_patch = 16       # its square patch size, in pixels

Depth in metres is divided by `max_depth`, so that the model's inputs and
outputs are about [0, 1] whatever the depth range; 0 (no measurement) stays
0, as in the masked patches. AiT feeds its VQ-VAE raw metres (use_norm=False)
and its loss is in m^2. A ReLU network whose biases start at zero scales its
encoder outputs with its input, so both loss terms shrink by about the same
factor, max_depth^2, which Adam does not see.

Mask augmentation (AiT Sec. 3.4): a random `mask_ratio` of the
`mask_patch` x `mask_patch` patches of each input map is zeroed, so that the
tokenizer learns to fill in regions without a measurement; the loss still
compares with the whole unmasked map where it is valid (> 0).
"""
import jax
import jax.numpy as jnp

from uvimx.models import conv_vqvae
from uvimx.models import vq
from uvimx.tasks import common


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


class Trainer:
  """init / loss / predict_fns of the conv VQ-VAE depth tokenizer."""

  def __init__(self, config):
    if config.task.name != "depth":
      raise ValueError(f"The vqvae trainer does config.task.name 'depth', not "
                       f"{config.task.name!r}.")
    self.max_depth = common.task_args(config, max_depth=10.0)["max_depth"]
    model = dict(config.model)
    self.label_size = tuple(model.pop("input_size"))
    self.model = conv_vqvae.Model(channels=1, **model)
    self.w_commitment = config.get("w_commitment", 0.25)
    self.mask_ratio = config.get("mask_ratio", 0.5)
    self.mask_patch = config.get("mask_patch", 16)
    if not 0 <= self.mask_ratio <= 1:
      raise ValueError(f"config.mask_ratio must be in [0, 1], not "
                       f"{self.mask_ratio}.")
    divisors = {"model.downsample": self.model.downsample}
    if self.mask_ratio:
      divisors["mask_patch"] = self.mask_patch
    for name, size in divisors.items():
      if any(s % size for s in self.label_size):
        raise ValueError(f"The label size {self.label_size} "
                         f"(config.model.input_size) is not divisible by "
                         f"config.{name}={size}.")

  def input_spec(self, batch_size):
    return {"depth": jax.ShapeDtypeStruct((batch_size, *self.label_size, 1),
                                          jnp.float32)}

  def _normalised(self, depth):
    """Metres -> model units, with unmeasured pixels (<= 0) at exactly 0."""
    return jnp.maximum(depth, 0.0) / self.max_depth

  def init(self, rng, batch):
    return dict(self.model.init(rng, self._normalised(batch["depth"])))

  def loss(self, params, state, batch, rng):
    mask_rng, restart_rng = jax.random.split(rng)
    target = self._normalised(batch["depth"])
    inputs = (mask_patches(mask_rng, target, self.mask_patch, self.mask_ratio)
              if self.mask_ratio else target)
    (reconstruction, aux), new_variables = self.model.apply(
        {"params": params, "state": state}, inputs, train=True,
        rngs={"restart": restart_rng}, mutable=["state"])
    # AiT's depth loss (MseIgnoreZeroLoss): the mean squared error over the
    # valid pixels of the whole batch.
    loss_rec = common.masked_mean(jnp.square(reconstruction - target),
                                  target > 0)
    loss_commitment = vq.commitment_loss(aux["z"], aux["z_q"])
    loss = loss_rec + self.w_commitment * loss_commitment
    measurements = dict(
        loss_rec=loss_rec, loss_commitment=loss_commitment,
        rmse=jnp.sqrt(loss_rec) * self.max_depth,  # Metres, batch-wide.
        codebook_used_ratio=jnp.mean(aux["code_counts"] > 0),
        codebook_perplexity=vq.perplexity(aux["code_counts"]))
    return loss, (new_variables["state"], measurements)

  def predict_fns(self):
    def reconstruct(variables, batch):
      """{"depth": (B, H, W) metres}, the label decoded from its own code."""
      reconstruction, _ = self.model.apply(
          variables, self._normalised(batch["depth"]))
      return {"depth": reconstruction[..., 0] * self.max_depth}

    return {"reconstruct": reconstruct}
