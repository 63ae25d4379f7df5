"""Tests of uvimx/models/inception.py: size, forward, weight-file layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from uvimx.models import inception


def _shapes():
  """{flax path: ShapeDtypeStruct} of the variables, without computing."""
  return traverse_util.flatten_dict(jax.eval_shape(
      inception.InceptionV3().init, jax.random.key(0),
      jnp.zeros((1, 299, 299, 3))))


def write_random_weights(path, seed=0):
  """An .npz of random weights in pytorch-fid's layout; returns them in flax's.

  He-normal kernels keep activations of order 1 through the 94 ReLU layers;
  batch norms get random affine parameters and statistics, and the file also
  holds the entries that are ignored (fc, num_batches_tracked), as a real
  state_dict does.
  """
  rng = np.random.default_rng(seed)
  flat, torch_layout = {}, {}
  for variable, shape in _shapes().items():
    shape = shape.shape
    kind = variable[-1]
    if kind == "kernel":
      value = rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[:3]))
    elif kind in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, size=shape)
    else:
      value = rng.normal(scale=0.1, size=shape)
    flat[variable] = value.astype(np.float32)
    torch_layout[inception.torch_name(variable)] = (
        flat[variable].transpose(3, 2, 0, 1) if kind == "kernel"
        else flat[variable])
  torch_layout["fc.weight"] = np.zeros((1008, 2048), np.float32)
  torch_layout["fc.bias"] = np.zeros(1008, np.float32)
  torch_layout["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.array(0)
  np.savez(path, **torch_layout)
  return traverse_util.unflatten_dict(flat)


def test_parameter_count():
  shapes = _shapes()
  params = sum(np.prod(s.shape) for p, s in shapes.items()
               if p[0] == "params")
  # torchvision's inception_v3 has 27,161,264 parameters (its weights' meta
  # "num_params"), counting the conv kernels and the batch-norm weight and
  # bias. Without its auxiliary head (conv0: 768*128 + 2*128, conv1:
  # 128*768*5*5 + 2*768, fc: 768*1000 + 1000; 3,326,696) and its classifier
  # (2048*1000 + 1000 = 2,049,000), which pytorch-fid's FID model shares
  # except for 1008 classes, that leaves 21,785,568.
  assert 27_161_264 - 3_326_696 - 2_049_000 == 21_785_568
  assert params == 21_785_568
  # 94 conv + batch-norm layers: stem 5, 3 x InceptionA 7, InceptionB 4,
  # 4 x InceptionC 10, InceptionD 6, 2 x InceptionE 9.
  assert sum(p[-1] == "kernel" for p in shapes) == 5 + 21 + 4 + 40 + 6 + 18
  # Running mean and variance per batch-norm channel, as many as scale + bias.
  stats = sum(np.prod(s.shape) for p, s in shapes.items()
              if p[0] == "batch_stats")
  assert stats == sum(np.prod(s.shape) for p, s in shapes.items()
                      if p[-1] in ("scale", "bias"))


def test_output_shape():
  model = inception.InceptionV3()
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 299, 299, 3)))
  for size in (299, 64, 512):
    out = jax.eval_shape(model.apply, variables, jnp.zeros((3, size, size, 3)))
    assert out.shape == (3, inception.NUM_FEATURES)
  with pytest.raises(ValueError, match="RGB"):
    jax.eval_shape(model.apply, variables, jnp.zeros((3, 64, 64, 1)))


def test_jitted_forward_on_random_weights(tmp_path):
  variables = write_random_weights(tmp_path / "w.npz")
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3),
                              minval=-1, maxval=1)
  features = np.asarray(jax.jit(inception.InceptionV3().apply)(
      variables, images))
  assert features.shape == (2, 2048) and features.dtype == np.float32
  # Means of ReLU outputs: finite, non-negative, and not dead.
  assert np.isfinite(features).all() and (features >= 0).all()
  assert (features > 0).mean() > 0.5
  assert not np.allclose(features[0], features[1])


def test_avg_pool_leaves_padding_out():
  # TensorFlow's average pool of the FID graph: a constant stays constant at
  # the border (PyTorch's default would give 4/9 in the corners).
  np.testing.assert_allclose(inception._avg_pool(jnp.ones((1, 4, 4, 1))), 1)


def test_load_variables(tmp_path):
  path = tmp_path / "w.npz"
  written = write_random_weights(path)
  loaded = inception.load_variables(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(written)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(written)):
    np.testing.assert_array_equal(a, b)
  # Names and layouts as pytorch-fid's state_dict.
  with np.load(path) as npz:
    kernel = npz["Mixed_6b.branch7x7_2.conv.weight"]
    assert kernel.shape == (128, 128, 1, 7)  # (out, in, kh, kw)
    np.testing.assert_array_equal(
        loaded["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
        kernel.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        loaded["batch_stats"]["Conv2d_1a_3x3"]["bn"]["var"],
        npz["Conv2d_1a_3x3.bn.running_var"])


def test_load_variables_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
    inception.load_variables(str(tmp_path / "missing.npz"))
  write_random_weights(tmp_path / "w.npz")
  with np.load(tmp_path / "w.npz") as npz:
    arrays = dict(npz)
  bad = {k: v for k, v in arrays.items() if k != "Mixed_7c.branch1x1.bn.bias"}
  # Not transposed from PyTorch's layout.
  bad["Conv2d_1a_3x3.conv.weight"] = arrays[
      "Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0)
  bad["head.weight"] = np.zeros(3)
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match=(
      r"missing \['Mixed_7c.branch1x1.bn.bias'\] \(1\), wrong shapes "
      r"\['Conv2d_1a_3x3.conv.weight.*unexpected \['head.weight'\]")):
    inception.load_variables(tmp_path / "bad.npz")
