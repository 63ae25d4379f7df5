"""Helpers shared by the tasks: patch layout, one-hot inputs, losses, arguments.

Dense models predict, per patch token, every pixel of the patch: logits of
shape (B, num_patches, C, patch_pixels), big_vision UViM's layout. Patches
are in raster order, and so are the pixels within a patch. The UViM oracle
reads its label inputs in the same layout.
"""
import einops
import jax
import jax.numpy as jnp
import numpy as np

REQUIRED = object()  # Marks a task argument without a default.


def task_args(config, **defaults):
  """`config.task` merged over `defaults`; unknown or missing keys raise.

  Args:
    config: the whole config; its `task` holds `name` and the task arguments.
    **defaults: every argument the task takes, with its default value, or
      `REQUIRED` if the config must give it.

  Returns:
    A dict of all task arguments (without `name`).
  """
  given = {k: v for k, v in dict(config.task).items() if k != "name"}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"Unknown config.task keys {unknown} for task "
                     f"{config.task.name!r}; it takes {sorted(defaults)}.")
  args = {**defaults, **given}
  missing = sorted(k for k, v in args.items() if v is REQUIRED)
  if missing:
    raise ValueError(f"Task {config.task.name!r} needs config.task keys "
                     f"{missing}.")
  return args


def patchify(x, patch_size):
  """(B, H, W, C) -> (B, num_patches, C, patch_pixels)."""
  hp, wp = patch_size
  return einops.rearrange(x, "b (hn hp) (wn wp) c -> b (hn wn) c (hp wp)",
                          hp=hp, wp=wp)


def unpatchify(x, patch_size, input_size):
  """(B, num_patches, C, patch_pixels) -> (B, H, W, C); undoes `patchify`."""
  hp, wp = patch_size
  hn, wn = np.array(input_size) // np.array(patch_size)
  return einops.rearrange(x, "b (hn wn) c (hp wp) -> b (hn hp) (wn wp) c",
                          hn=hn, wn=wn, hp=hp, wp=wp)


def to_patches(x, config):
  """(B, H, W, C) -> (B, num_patches, C, patch_pixels), the model's patches."""
  return patchify(x, config.model.patch_size)


def to_pixels(x, config):
  """(B, num_patches, C, patch_pixels) -> (B, H, W, C) at the model's size."""
  return unpatchify(x, config.model.patch_size, config.model.input_size)


def one_hot(classes, valid, num_classes):
  """Per-pixel class ids -> float32 one-hot on axis -2 (the oracle's input).

  Args:
    classes: int (B, num_patches, patch_pixels).
    valid: bool (B, num_patches, patch_pixels).
    num_classes: the number of one-hot channels.

  Returns:
    (B, num_patches, num_classes, patch_pixels); an invalid pixel is all zero,
    so that the oracle sees "no label" rather than a made-up class.
  """
  return jax.nn.one_hot(jnp.where(valid, classes, -1), num_classes, axis=-2)


def masked_mean(values, valid, axis=None):
  """Mean of `values` over its `valid` entries along `axis`; 0 if none is."""
  total = jnp.sum(jnp.where(valid, values, 0.0), axis=axis)
  return total / jnp.maximum(jnp.sum(valid, axis=axis), 1)


def softmax_xent(logits, classes, valid):
  """Per-example mean softmax cross-entropy over the valid pixels.

  Args:
    logits: (B, num_patches, C, patch_pixels).
    classes: int (B, num_patches, patch_pixels), in [0, C) where valid.
    valid: bool (B, num_patches, patch_pixels): pixels that count.

  Returns:
    (B,) losses; an example without valid pixels has loss 0.
  """
  logp = jax.nn.log_softmax(logits, axis=-2)
  # Invalid pixels may hold any class id (e.g. 255): point them at class 0
  # so that the gather stays in range, then mask them out.
  classes = jnp.where(valid, classes, 0)
  nll = -jnp.take_along_axis(logp, classes[:, :, None, :], axis=-2)[:, :, 0]
  return masked_mean(nll, valid, axis=(1, 2))


def argmax_map(logits, config):
  """(B, num_patches, C, patch_pixels) logits -> int32 (B, H, W) argmax."""
  classes = jnp.argmax(logits, axis=-2)[:, :, None, :]
  return to_pixels(classes, config)[..., 0].astype(jnp.int32)


def label_map_spec(config, dtype, channels=1):
  """One example's (H, W, channels) label map at the model's input size."""
  return jax.ShapeDtypeStruct((*config.model.input_size, channels), dtype)
