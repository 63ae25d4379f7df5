"""Inception-v3 of FID: 2048-d pool features of images, for evaluation only.

The network that FID is defined with: TensorFlow's `inception-2015-12-05`
graph (`pool_3`), as pytorch-fid ports it (`pt_inception-2015-12-05`). It is
torchvision's Inception-v3 without the auxiliary head, with the FID graph's
two quirks: the average pools inside the blocks leave padding out of the mean
(TensorFlow's `avg_pool`), and the last block (`Mixed_7c`) max-pools in its
pool branch. The classifier is left out: only the pool features are needed.
Batch norm always uses the stored statistics.

Weights are never downloaded: `load_variables(path)` reads an .npz whose keys
and arrays are pytorch-fid's `state_dict` (torchvision's names, PyTorch's
layouts), e.g. `Mixed_5b.branch5x5_2.conv.weight` (out, in, kh, kw),
`Mixed_5b.branch5x5_2.bn.{weight, bias, running_mean, running_var}` (out,).
The flax names are the same path with `/`: `params/Mixed_5b/branch5x5_2/conv/
kernel` (kh, kw, in, out), `params/.../bn/{scale, bias}` and
`batch_stats/.../bn/{mean, var}`. `fc.*` and `*.num_batches_tracked` entries
are ignored. To make the file, download `WEIGHTS_URL` (pytorch-fid's release
file pt_inception-2015-12-05-6726825d.pth) and, where PyTorch is installed:

  python -c "import numpy as np, torch; np.savez('inception_fid.npz', **{
      k: v.numpy() for k, v in torch.load(
          'pt_inception-2015-12-05-6726825d.pth').items()})"
"""
import os

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
NUM_FEATURES = 2048

# pytorch-fid's port of the FID Inception weights.
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
               "fid_weights/pt_inception-2015-12-05-6726825d.pth")
_WEIGHTS_HELP = (
    f"Download pytorch-fid's FID Inception weights, {WEIGHTS_URL}, and "
    "convert them with np.savez of their state_dict, as the docstring of "
    "uvimx/models/inception.py shows.")


class BasicConv(nn.Module):
  """Convolution without bias, batch norm (eps 1e-3), ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)  # PyTorch's: (rows, columns) per side.

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=jax.lax.Precision.HIGHEST, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool(x):
  # TensorFlow's average pool: padded pixels are not in the mean.
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """35x35 block: 1x1, 5x5, double 3x3 and pool branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(
        _avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    for i, (features, kernel, padding) in enumerate([
        (c7, (7, 1), (3, 0)), (c7, (1, 7), (0, 3)), (c7, (7, 1), (3, 0)),
        (192, (1, 7), (0, 3))]):
      bd = BasicConv(features, kernel, padding=padding,
                     name=f"branch7x7dbl_{i + 2}")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 branches."""
  max_pool: bool  # The FID graph's Mixed_7c max-pools (a quirk of it).

  @nn.compact
  def __call__(self, x):
    def split(y, prefix):
      return [BasicConv(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(y),
              BasicConv(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(y)]

    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = split(BasicConv(384, (1, 1), name="branch3x3_1")(x), "branch3x3_2")
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = split(bd, "branch3x3dbl_3")
    pooled = (nn.max_pool(x, (3, 3), padding=((1, 1), (1, 1)))
              if self.max_pool else _avg_pool(x))
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """Images (B, H, W, 3) in [-1, 1] -> (B, 2048) FID pool features.

  Images of another size are first resized to 299x299 bilinearly without
  antialiasing (pytorch-fid's `F.interpolate(..., align_corners=False)`).
  """

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Inception-v3 takes (B, H, W, 3) RGB images, got "
                       f"{images.shape}.")
    x = images.astype(jnp.float32)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
      x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3),
                           "bilinear", antialias=False)
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    for name, pool_features in (("5b", 32), ("5c", 64), ("5d", 64)):
      x = InceptionA(pool_features, name=f"Mixed_{name}")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, channels_7x7 in (("6b", 128), ("6c", 160), ("6d", 160),
                               ("6e", 192)):
      x = InceptionC(channels_7x7, name=f"Mixed_{name}")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


# flax leaf name -> (state_dict suffix, array from the PyTorch layout).
_FROM_TORCH = {
    "kernel": ("conv.weight", lambda w: w.transpose(2, 3, 1, 0)),
    "scale": ("bn.weight", lambda w: w),
    "bias": ("bn.bias", lambda w: w),
    "mean": ("bn.running_mean", lambda w: w),
    "var": ("bn.running_var", lambda w: w),
}


def torch_name(path):
  """The state_dict name of a flax variable path.

  Args:
    path: e.g. ("params", "Mixed_5b", "branch1x1", "conv", "kernel").

  Returns:
    e.g. "Mixed_5b.branch1x1.conv.weight".
  """
  return ".".join([*path[1:-2], _FROM_TORCH[path[-1]][0]])


def load_variables(path):
  """Reads FID Inception weights (.npz, layout in the module docstring).

  Args:
    path: the .npz file.

  Returns:
    {"params": ..., "batch_stats": ...} for `InceptionV3().apply`.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No Inception-v3 FID weights at {path!r} (the evaluator's "
        f"`inception_weights`). {_WEIGHTS_HELP}")
  shapes = traverse_util.flatten_dict(jax.eval_shape(
      InceptionV3().init, jax.random.key(0),
      jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))
  with np.load(path) as npz:
    arrays = dict(npz)
  flat, missing, wrong_shape = {}, [], []
  for flax_path, shape in shapes.items():
    name = torch_name(flax_path)
    if name not in arrays:
      missing.append(name)
      continue
    flat[flax_path] = np.asarray(
        _FROM_TORCH[flax_path[-1]][1](arrays.pop(name)), np.float32)
    if flat[flax_path].shape != shape.shape:
      wrong_shape.append(f"{name}: {flat[flax_path].shape} in flax layout, "
                         f"expected {shape.shape}")
  unexpected = [k for k in arrays if not (
      k.startswith("fc.") or k.endswith(".num_batches_tracked"))]
  if missing or wrong_shape or unexpected:
    raise ValueError(
        f"{path} does not hold the FID Inception-v3 weights in pytorch-fid's "
        f"layout: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
        f" ({len(missing)}), wrong shapes {wrong_shape[:5]}, unexpected "
        f"{unexpected[:5]} ({len(unexpected)}). {_WEIGHTS_HELP}")
  return traverse_util.unflatten_dict(flat)
