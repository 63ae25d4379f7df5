"""Surface normals: regress a unit vector per pixel.

Labels: `batch["normals"]`, float32 (B, H, W, 3) unit vectors (as
`decode_normals_png` writes them); the zero vector marks a pixel without a
normal, which is left out of the loss.
Model output: "normals" (B, num_patches, 3, patch_pixels), unnormalised.
Model input (UViM oracle): "normals", the labels in the same layout (zero
where invalid).

Loss: the squared L2 distance between output and label, |n_hat - n|^2,
averaged over the valid pixels (PolyMaX's choice: more stable than an
angular loss). It is taken before normalising, so that zero-initialised
heads get finite gradients; for a unit output it is 2 - 2 cos(angle).
Prediction: the outputs renormalised to unit length.

Takes no task arguments.
"""
import jax.numpy as jnp

from uvimx.tasks import common


def model_outputs(config):
  common.task_args(config)  # Rejects unknown config.task keys.
  return {"normals": 3}


def label_spec(config):
  return {"normals": common.label_map_spec(config, jnp.float32, channels=3)}


def model_inputs(batch, config):
  """{"normals": float32 (B, num_patches, 3, patch_pixels)}."""
  return {"normals": common.to_patches(batch["normals"], config).astype(
      jnp.float32)}


def normalize(x, axis):
  """`x` / |x| along `axis`; zero vectors stay zero."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, 1e-12)


def loss(logits, batch, config):
  """Per-example mean squared L2 distance over valid pixels, measurements.

  Args:
    logits: {"normals": (B, num_patches, 3, patch_pixels)}.
    batch: holds "normals" labels (B, H, W, 3).
    config: the whole config (`model.patch_size` is read).

  Returns:
    (B,) losses and {"normals_l2", "normals_angle"}: the batch mean loss and
    the mean angle in degrees between the renormalised outputs and the
    labels over the batch's valid pixels.
  """
  target = model_inputs(batch, config)["normals"]
  valid = jnp.any(target != 0, axis=-2)
  out = logits["normals"]
  per_example = common.masked_mean(jnp.sum((out - target) ** 2, axis=-2),
                                   valid, axis=(1, 2))
  cos = jnp.sum(normalize(out, axis=-2) * target, axis=-2)
  angle = jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
  return per_example, {"normals_l2": jnp.mean(per_example),
                       "normals_angle": common.masked_mean(angle, valid)}


def predict_outputs(logits, config):
  """{"normals": float32 (B, H, W, 3)}: unit vectors (0 for a 0 output)."""
  return {"normals": normalize(common.to_pixels(logits["normals"], config),
                               axis=-1)}
