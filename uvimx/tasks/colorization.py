"""Colorization: regress the RGB image from its grayscale version, as in UViM.

Labels: `batch["labels"]`, float32 (B, H, W, 3), the RGB image in [-1, 1].
The model's image (and the UViM oracle's context) is `batch["image"]`, which
the pp makes grayscale (`rgb_to_grayscale_to_rgb`), as in big_vision.
Model output: "color" (B, num_patches, 3, patch_pixels), RGB values.
Model input (UViM oracle): "color", the labels in the same layout.

Loss (big_vision's `colorization_task`): the mean squared error over pixels
and channels. Prediction: the outputs clipped to [-1, 1].

Takes no task arguments.
"""
import jax.numpy as jnp

from uvimx.tasks import common


def model_outputs(config):
  common.task_args(config)  # Rejects unknown config.task keys.
  return {"color": 3}


def label_spec(config):
  return {"labels": common.label_map_spec(config, jnp.float32, channels=3)}


def model_inputs(batch, config):
  """{"color": float32 (B, num_patches, 3, patch_pixels)}."""
  return {"color": common.to_patches(batch["labels"], config).astype(
      jnp.float32)}


def loss(logits, batch, config):
  """Per-example mean squared error, and {"color_mse"}, its batch mean."""
  error = logits["color"] - model_inputs(batch, config)["color"]
  per_example = jnp.mean(jnp.square(error), axis=(1, 2, 3))
  return per_example, {"color_mse": jnp.mean(per_example)}


def predict_outputs(logits, config):
  """{"color": float32 (B, H, W, 3)}: RGB in [-1, 1]."""
  return {"color": jnp.clip(common.to_pixels(logits["color"], config),
                            -1.0, 1.0)}
