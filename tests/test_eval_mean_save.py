"""Tests of evaluators/mean.py, evaluators/save_predictions.py and the
batch-size and input checks of evaluators/common.py, on
synthetic_scenes/tiny."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from evaluators import common
from evaluators import mean
from evaluators import save_predictions
from uvimx import sharding

PP = ("decode|decode_depth_png|cast('int32', key='image/id')|"
      "keep('image', 'depth', 'image/id')")


def _kwargs(data_dir, batch_size=16):
  # 24 validation examples in batches of 16 on 8 devices: the second batch
  # has 8 all-zero padding examples.
  return dict(mesh=sharding.make_mesh([("data", -1)]),
              data=dict(name="synthetic_scenes/tiny", split="validation",
                        data_dir=data_dir),
              pp=PP, batch_size=batch_size)


def _raw(data_dir):
  ds = tfds.builder("synthetic_scenes/tiny", data_dir=data_dir).as_dataset(
      split="validation")
  return list(tfds.as_numpy(ds))


def test_mean(tfds_data_dir):
  evaluator = mean.Evaluator(
      lambda v, b: {"id": b["image/id"].astype(jnp.float32),
                    "depth": jnp.mean(b["depth"], axis=(1, 2, 3))},
      **_kwargs(tfds_data_dir))
  got = dict(evaluator.run({}))
  raw = _raw(tfds_data_dir)
  # Padding (id 0, depth 0) counted, or an example counted twice, would move
  # these means.
  assert got["id"] == pytest.approx(np.mean([ex["image/id"] for ex in raw]))
  assert got["id"] == pytest.approx(11.5)
  assert got["depth"] == pytest.approx(
      np.mean([ex["depth"].mean() * 0.001 for ex in raw]), rel=1e-5)


def test_mean_needs_per_example_values(tfds_data_dir):
  evaluator = mean.Evaluator(lambda v, b: {"depth": b["depth"]},
                             **_kwargs(tfds_data_dir))
  with pytest.raises(ValueError, match="one value per example"):
    list(evaluator.run({}))


def test_check_inputs_names_a_flax_kernel_shape_mismatch(tfds_data_dir):
  # A conv kernel for 3-channel images, fed the 1-channel semantic map: flax
  # raises a ScopeParamShapeError, reported like any other pp mistake.
  model = nn.Conv(4, (3, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 64, 64, 3)))

  def check(pp):
    evaluator = mean.Evaluator(
        lambda v, b: {"x": model.apply(v, b["image"] / 255).mean((1, 2, 3))},
        **dict(_kwargs(tfds_data_dir), pp=pp))
    common.check_inputs([common.Scheduled("val", evaluator, 0, "val/")],
                        variables)

  check("decode|resize(64)|keep('image')")  # The model's input: no error.
  # Without a resize the decoded images' size is known only at run time,
  # when tf.data batches them: nothing to check at startup.
  check("decode|keep('image')")
  with pytest.raises(ValueError, match=(
      r"^config.evals.val: its pp gives examples \{'image': "
      r"'uint8\[64, 64, 1\]'\}, which the model's predict fn cannot take "
      r".*ScopeParamShapeError")):
    check("decode|copy('semantics', 'image')|keep('image')")


def test_batch_size_must_divide_over_devices(tfds_data_dir):
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    mean.Evaluator(lambda v, b: {}, **_kwargs(tfds_data_dir, batch_size=10))


def _predict(v, b):
  return {"twice": 2 * b["depth"][..., 0]}


def test_save_predictions(tfds_data_dir, tmp_path):
  outfile = str(tmp_path / "sub" / "predictions.npz")
  evaluator = save_predictions.Evaluator(
      _predict, outfile=outfile, num_examples=20, **_kwargs(tfds_data_dir))
  assert not list(evaluator.run({}))  # No metrics.
  with np.load(outfile) as f:
    saved = dict(f)
  assert sorted(saved) == ["batch/depth", "batch/image", "batch/image/id",
                           "outputs/twice"]
  # The first 20 examples in split order (TFDS' stored order, not that of
  # image/id): all 16 of the first batch and 4 of the 8 real ones of the
  # second.
  raw = _raw(tfds_data_dir)[:20]
  np.testing.assert_array_equal(saved["batch/image/id"],
                                [ex["image/id"] for ex in raw])
  np.testing.assert_array_equal(saved["batch/image"],
                                np.stack([ex["image"] for ex in raw]))
  np.testing.assert_allclose(saved["outputs/twice"],
                             2 * saved["batch/depth"][..., 0])
  assert os.listdir(tmp_path / "sub") == ["predictions.npz"]


def test_save_predictions_keys_and_whole_split(tfds_data_dir, tmp_path):
  outfile = str(tmp_path / "predictions.npz")
  list(save_predictions.Evaluator(
      _predict, outfile=outfile, keys=("image/id",),
      **_kwargs(tfds_data_dir)).run({}))
  with np.load(outfile) as f:
    assert sorted(f.files) == ["batch/image/id", "outputs/twice"]
    np.testing.assert_array_equal(
        f["batch/image/id"], [ex["image/id"] for ex in _raw(tfds_data_dir)])
  with pytest.raises(KeyError, match="'nope'"):
    list(save_predictions.Evaluator(
        _predict, outfile=outfile, keys=("nope",),
        **_kwargs(tfds_data_dir)).run({}))


def test_write_npz_is_atomic(tmp_path, monkeypatch):
  path = str(tmp_path / "x.npz")
  save_predictions.write_npz(path, {"a": np.arange(3)})

  def failing_savez(f, **arrays):
    f.write(b"half a file")
    raise OSError("disk full")
  monkeypatch.setattr(np, "savez", failing_savez)
  with pytest.raises(OSError, match="disk full"):
    save_predictions.write_npz(path, {"a": np.arange(5)})
  # The old file is intact and no temp file is left behind.
  assert os.listdir(tmp_path) == ["x.npz"]
  with np.load(path) as f:
    np.testing.assert_array_equal(f["a"], np.arange(3))


def test_get_names_the_keys():
  with pytest.raises(KeyError, match=r"No 'x' in the outputs; it has \['y'\]"):
    common.get({"y": 1}, "x", "outputs")
