"""Helpers shared by the per-pixel tasks: patch layout, CE loss, arguments.

Dense models predict, per patch token, every pixel of the patch: logits of
shape (B, num_patches, C, patch_pixels), big_vision UViM's layout. Patches
are in raster order, and so are the pixels within a patch.
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
  nll = jnp.where(valid, nll, 0.0)
  count = jnp.sum(valid, axis=(1, 2))
  return jnp.sum(nll, axis=(1, 2)) / jnp.maximum(count, 1)


def argmax_map(logits, config):
  """(B, num_patches, C, patch_pixels) logits -> int32 (B, H, W) argmax."""
  classes = jnp.argmax(logits, axis=-2)[:, :, None, :]
  return unpatchify(classes, config.model.patch_size,
                    config.model.input_size)[..., 0].astype(jnp.int32)


def label_map_spec(config, dtype):
  """One example's (H, W, 1) label map at the model's input size."""
  return jax.ShapeDtypeStruct((*config.model.input_size, 1), dtype)
