"""Monocular depth as classification into uniform bins, as in UViM.

Labels: `batch["depth"]`, float32 (B, H, W, 1) metres; 0 (or less) marks a
pixel without a measurement (the `decode_depth_png` / NYU convention), which
is left out of the loss.
Model output: "depth" logits (B, num_patches, num_bins, patch_pixels).
Model input (UViM oracle): "depth", the bins one-hot in the same layout, as
big_vision's `depth_task.input_pp`, except that unmeasured pixels are all
zero (big_vision's TODO "encode depth==0 as class==-1"; it feeds bin 0).

Encoding (big_vision UViM `depth_task`): bin = floor((d - min_depth) /
(max_depth - min_depth) * num_bins), clipped to [0, num_bins - 1].
Decoding (the same): the centre of the *argmax* bin, min_depth + (bin + 0.5)
* bin_width; so in-range depths round-trip to within half a bin width.

Task arguments (`config.task`), defaults for synthetic_scenes:
  num_bins: 256, UViM's.
  min_depth, max_depth: 0 and 10 m. synthetic_scenes depths lie in 0.8-8.6 m
    (rooms at most 8 m deep; the 64x64 train split spans 0.84-8.52 m), and
    10 m is also the usual cap of NYU depth v2 (UViM's NYU max_depth). The
    bin width, 3.9 cm, adds a quantisation RMSE of only 1.1 cm (width /
    sqrt(12)); depths beyond the range fall into the end bins.
  target_sigma: 0 (UViM): one-hot targets. > 0: the target distribution is
    a Gaussian over bin ids around the true bin with this standard deviation
    (in bins), so that the cross-entropy also rewards near misses: a one-hot
    target treats a bin 1 cm off like one 5 m off, which small models trained
    briefly learn from slowly.
  decoding: "argmax" (UViM): the argmax bin's centre; "mean": the expected
    depth under the predicted distribution over bin centres.
"""
import jax
import jax.numpy as jnp

from uvimx.tasks import common


def _args(config):
  args = common.task_args(config, num_bins=256, min_depth=0.0, max_depth=10.0,
                          target_sigma=0.0, decoding="argmax")
  if args["decoding"] not in ("argmax", "mean"):
    raise ValueError(f"Unknown depth decoding {args['decoding']!r}: use "
                     "'argmax' or 'mean'.")
  if not args["max_depth"] > args["min_depth"]:
    raise ValueError(f"config.task needs max_depth > min_depth (the binned "
                     f"range, in metres), got {args['min_depth']} and "
                     f"{args['max_depth']}.")
  if not args["target_sigma"] >= 0:
    raise ValueError(f"config.task.target_sigma is a width in bins, >= 0 "
                     f"(0: one-hot targets), got {args['target_sigma']}.")
  return args


def model_outputs(config):
  return {"depth": _args(config)["num_bins"]}


def label_spec(config):
  return {"depth": common.label_map_spec(config, jnp.float32)}


def to_bins(depth, config):
  """Depth in metres -> int32 bin ids in [0, num_bins)."""
  args = _args(config)
  t = (depth - args["min_depth"]) / (args["max_depth"] - args["min_depth"])
  bins = jnp.floor(t * args["num_bins"]).astype(jnp.int32)
  return jnp.clip(bins, 0, args["num_bins"] - 1)


def from_bins(bins, config):
  """Bin ids -> float32 depth in metres at the bin centres."""
  args = _args(config)
  width = (args["max_depth"] - args["min_depth"]) / args["num_bins"]
  return args["min_depth"] + (bins.astype(jnp.float32) + 0.5) * width


def targets(batch, config):
  """Labels -> (bin ids, valid mask), both (B, num_patches, patch_pixels)."""
  depth = common.to_patches(batch["depth"], config)[:, :, 0]
  return to_bins(depth, config), depth > 0


def model_inputs(batch, config):
  """{"depth": float32 (B, num_patches, num_bins, patch_pixels)}."""
  bins, valid = targets(batch, config)
  return {"depth": common.one_hot(bins, valid, _args(config)["num_bins"])}


def loss(logits, batch, config):
  """Per-example mean cross-entropy over the bins of measured pixels.

  Args:
    logits: {"depth": (B, num_patches, num_bins, patch_pixels)}.
    batch: holds "depth" labels (B, H, W, 1) in metres.
    config: the whole config (`task` and `model.patch_size` are read).

  Returns:
    (B,) losses and {"depth_xent", "depth_rmse"}: the batch mean loss and the
    RMSE in metres of the decoded prediction over the batch's measured pixels.
  """
  args = _args(config)
  bins, valid = targets(batch, config)
  if args["target_sigma"] > 0:
    ids = jnp.arange(args["num_bins"])[None, None, :, None]
    target = jax.nn.softmax(
        -0.5 * ((ids - bins[:, :, None]) / args["target_sigma"]) ** 2, axis=-2)
    nll = -jnp.sum(target * jax.nn.log_softmax(logits["depth"], axis=-2),
                   axis=-2)
    per_example = common.masked_mean(nll, valid, axis=(1, 2))
  else:
    per_example = common.softmax_xent(logits["depth"], bins, valid)
  depth = common.to_patches(batch["depth"], config)[:, :, 0]
  pred = _decode(logits["depth"], config)
  mse = common.masked_mean((pred - depth) ** 2, valid)
  return per_example, {"depth_xent": jnp.mean(per_example),
                       "depth_rmse": jnp.sqrt(mse)}


def _decode(logits, config):
  """(..., num_bins, P) logits -> (..., P) depths, as `decoding` says."""
  args = _args(config)
  if args["decoding"] == "argmax":
    return from_bins(jnp.argmax(logits, axis=-2), config)
  centres = from_bins(jnp.arange(args["num_bins"]), config)
  return jnp.einsum("...kp,k->...p", jax.nn.softmax(logits, axis=-2), centres)


def predict_outputs(logits, config):
  """{"depth": float32 (B, H, W)} in metres, decoded as `decoding` says."""
  depth = _decode(logits["depth"], config)[:, :, None]
  return {"depth": common.to_pixels(depth, config)[..., 0]}
