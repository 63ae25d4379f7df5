"""uvimx.predict: loading, image handling, sampling, the CLI, clear errors.

The models are not trained (that would take minutes): every weight is drawn
at random, so that codes and predictions vary with the image, and saved with
uvimx.checkpoint as train.py saves them (less the optimizer state, which
inference does not read).
"""
import functools
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest
import test_uvim_trainers

from configs import uvim_synthetic
from pp import builder
from uvimx import checkpoint
from uvimx import predict
from uvimx import utils
from uvimx.trainers import uvim_stage2

REPO = pathlib.Path(__file__).parent.parent
BIG_VISION = pathlib.Path("/work/shared/fixtures/big_vision_uvim")


def random_variables(trainer, seed=0):
  """{"params", "state"} of the trainer's models, drawn at random."""
  abstract = jax.eval_shape(trainer.init, jax.random.key(0),
                            trainer.input_spec(1))
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    if utils.path_name(path).endswith("counts"):  # VQ counts are positive.
      return rng.uniform(0.5, 2.0, leaf.shape).astype(leaf.dtype)
    return 0.3 * rng.standard_normal(leaf.shape).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, abstract)


def _save(tree, workdir, step=6):
  """Saves `tree` as train.py does; returns the step directory."""
  # Host arrays: saving device arrays costs a compile per leaf.
  mngr = checkpoint.manager(str(workdir), ml_collections.ConfigDict())
  checkpoint.save(mngr, step, tree)
  mngr.wait_until_finished()
  mngr.close()
  return str(workdir / "checkpoints" / str(step))


_SMOKE_CHECKPOINTS = []


def smoke_checkpoints(tmp_path_factory):
  """(stage-I, stage-II) step dirs of smoke_stage2's models, made once.

  test_notebooks.py uses them too.
  """
  if not _SMOKE_CHECKPOINTS:
    root = tmp_path_factory.mktemp("predict")
    variables = random_variables(
        uvim_stage2.Trainer(uvim_synthetic.get_config("smoke_stage2")))
    _SMOKE_CHECKPOINTS.extend([
        _save(variables["state"]["oracle"], root / "s1"),
        _save(variables, root / "s2")])
  return tuple(_SMOKE_CHECKPOINTS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  return smoke_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(checkpoints):
  return predict.load(uvim_synthetic.get_config("smoke_stage2"),
                      checkpoints[1])


def _image(height, width, seed=0):
  return np.random.RandomState(seed).randint(
      0, 256, (height, width, 3)).astype(np.uint8)


@functools.cache
def _jitted_predict_fn(predictor):
  return jax.jit(predictor.trainer.predict_fns()["predict"])


def _trainer_predict(predictor, image):
  """The stage-II trainer's own predict fn (what evaluators run)."""
  batch = {"image": predictor.model_input(image)[None]}
  return jax.device_get(
      _jitted_predict_fn(predictor)(predictor.variables, batch))


def test_prediction_equals_the_trainers_predict_fn(predictor):
  image = _image(64, 64)
  # The model input is what the config's pp makes of a 64x64 image.
  pp = builder.get_preprocess_fn("value_range(-1, 1)")
  np.testing.assert_array_equal(predictor.model_input(image),
                                pp({"image": image})["image"].numpy())
  out = predictor.predict(image)
  assert out["panoptic"].shape == (64, 64, 2)
  assert out["panoptic"].dtype == np.int32
  expected = _trainer_predict(predictor, image)["panoptic"][0]
  np.testing.assert_array_equal(out["panoptic"], expected)
  # Noisy weights: the prediction is not constant.
  assert len(np.unique(out["panoptic"][..., 1])) > 1


def test_prediction_has_the_images_size(predictor):
  # 2x the input size: the model sees the image resized to 64x64, and each
  # predicted label covers 2x2 pixels (nearest, no blending of labels).
  image = _image(128, 128)
  out = predictor.predict(Image.fromarray(image))["panoptic"]
  small = _trainer_predict(predictor, image)["panoptic"][0]
  np.testing.assert_array_equal(out, small.repeat(2, 0).repeat(2, 1))
  odd = predictor.predict(_image(37, 90))["panoptic"]
  assert odd.shape == (37, 90, 2)
  assert set(np.unique(odd[..., 1])) <= set(range(16))


def test_temperature_zero_is_deterministic(predictor):
  image = _image(64, 64, seed=3)
  greedy = predictor.predict(image)["panoptic"]
  samples = predictor.predict(image, num_samples=3, temperature=0.0,
                              seed=7)["panoptic"]
  assert samples.shape == (3, 64, 64, 2)
  for sample in samples:
    np.testing.assert_array_equal(sample, greedy)


def test_num_samples_at_temperature_one(predictor):
  image = _image(48, 80, seed=4)
  samples = predictor.predict(image, num_samples=3,
                              temperature=1.0)["panoptic"]
  assert samples.shape == (3, 48, 80, 2)
  assert len({s.tobytes() for s in samples}) > 1  # They differ.
  # The seed defaults to one derived from the image: the same samples again.
  again = predictor.predict(image, num_samples=3, temperature=1.0)
  np.testing.assert_array_equal(again["panoptic"], samples)
  other = predictor.predict(image, num_samples=3, temperature=1.0, seed=1)
  assert other["panoptic"].tobytes() != samples.tobytes()


def test_load_takes_a_config_name(predictor, checkpoints):
  loaded = predict.load(f"{REPO}/configs/uvim_synthetic.py:smoke_stage2",
                        checkpoints[1])
  jax.tree.map(np.testing.assert_array_equal, loaded.variables,
               predictor.variables)


def test_cli_output_path_checks(tmp_path):
  # main() runs them before it reads a checkpoint.
  for out, match in ((tmp_path / "no" / "out.png", "no folder"),
                     (tmp_path / "out", "image file name"),
                     (tmp_path / "out.psd", "image file name")):
    with pytest.raises(ValueError, match=match):
      predict._check_out_path(str(out))
  predict._check_out_path(str(tmp_path / "out.jpg"))


def test_cli_writes_the_visualisation(predictor, checkpoints, tmp_path):
  image = _image(40, 56, seed=5)
  Image.fromarray(image).save(tmp_path / "in.png")
  run = subprocess.run(
      [sys.executable, "-m", "uvimx.predict",
       "--config", "configs/uvim_synthetic.py:smoke_stage2",
       "--checkpoint", checkpoints[1], "--image", str(tmp_path / "in.png"),
       "--out", str(tmp_path / "out.png"), "--num_samples", "3",
       "--temperature", "1.0"], cwd=REPO, check=True, capture_output=True,
      text=True)
  out = tmp_path / "out.png"
  assert f"Wrote the panoptic prediction to {out}" in run.stdout
  with Image.open(tmp_path / "out.png") as png:
    assert png.mode == "RGB" and png.size == (3 * 56, 40)  # Side by side.
    written = np.asarray(png)
  expected = predict.visualize(
      predictor.predict(image, num_samples=3, temperature=1.0))
  np.testing.assert_array_equal(written, expected)


def test_predict_imports_no_tensorflow():
  code = ("import sys; import uvimx.predict; "
          "assert 'tensorflow' not in sys.modules, 'TF imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("image, error, match", [
    (np.zeros((64, 64, 3), np.float32), ValueError, "float32.*uint8"),
    (np.zeros((64, 64), np.uint8), ValueError, "grayscale.*dstack"),
    (np.zeros((64, 64, 1), np.uint8), ValueError, "grayscale"),
    (np.zeros((64, 64, 4), np.uint8), ValueError, r"4 channels.*x\[\.\.\., :3"),
    (Image.new("F", (8, 8)), ValueError, "floating-point.*mode 'F'"),
    (np.zeros((2, 64, 64, 3), np.uint8), ValueError, "one image"),
    (np.zeros((0, 64, 3), np.uint8), ValueError, "empty"),
    ([[0, 0, 0]], TypeError, "list"),
    ("/no/such/image.png", FileNotFoundError, "No image file"),
])
def test_bad_images_raise(predictor, image, error, match):
  with pytest.raises(error, match=match):
    predictor.predict(image)


def test_bad_files_and_seeds_raise(predictor, tmp_path):
  text = tmp_path / "notes.png"
  text.write_text("not an image")
  with pytest.raises(ValueError, match="not an image file"):
    predictor.predict(text)
  image = _image(8, 8)
  for seed in (2**31, -1, True, 1.5):
    with pytest.raises(ValueError,
                       match=r"seed must be an int in \[0, 2\*\*31\)"):
      predictor.predict(image, seed=seed)


def _pil_image_of_mode(mode, seed=0):
  """A 37x91 image of PIL `mode`, made from random RGB."""
  rgb = Image.fromarray(_image(37, 91, seed))
  if mode == "I;16":  # 16-bit grayscale, the full range.
    return Image.fromarray(np.random.RandomState(seed).randint(
        0, 2**16, (37, 91)).astype(np.uint16))
  return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "I;16"])
def test_image_files_are_read_as_the_decode_op_reads_them(mode, tmp_path):
  # As TFDS and the `decode` op read a dataset's files: 8-bit RGB.
  path = tmp_path / f"{mode.replace(';', '')}.png"
  image = _pil_image_of_mode(mode)
  image.save(path)
  decode = builder.get_preprocess_fn("decode")
  expected = decode({"image": open(path, "rb").read()})["image"].numpy()
  np.testing.assert_array_equal(predict.to_uint8_image(path), expected)
  np.testing.assert_array_equal(predict.to_uint8_image(image), expected)


def test_image_files_are_turned_upright(tmp_path):
  # A phone photo: stored sideways, with the EXIF orientation 6 ("rotate 90
  # degrees clockwise to view"): the model sees it as it is viewed.
  image = Image.fromarray(_image(37, 91))
  image.save(tmp_path / "stored.jpg")
  exif = Image.Exif()
  exif[0x0112] = 6
  image.save(tmp_path / "photo.jpg", exif=exif)
  stored = predict.to_uint8_image(tmp_path / "stored.jpg")
  np.testing.assert_array_equal(predict.to_uint8_image(tmp_path / "photo.jpg"),
                                np.rot90(stored, k=-1))


def test_model_input_is_resized_as_the_pp_resizes(predictor):
  pp = builder.get_preprocess_fn("resize(64)|value_range(-1, 1)")
  for height, width in ((75, 100), (300, 200), (37, 91)):
    image = _image(height, width, seed=height)
    np.testing.assert_array_equal(predictor.model_input(image),
                                  pp({"image": image})["image"].numpy())


def test_bad_checkpoints_raise(checkpoints):
  stage1, stage2 = checkpoints
  config = uvim_synthetic.get_config("smoke_stage2")
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    predict.load(config, stage2 + "_missing")
  workdir = os.path.dirname(os.path.dirname(stage2))
  with pytest.raises(FileNotFoundError, match=f"'{stage2}'"):
    predict.load(config, workdir)  # Names the step to use.
  with pytest.raises(ValueError, match="another model(.|\n)*holds both stages"):
    predict.load(config, stage1)  # A stage-I run's checkpoint.
  wider = uvim_synthetic.get_config("smoke_stage2")
  wider.model.mlp_dim *= 2  # Same tree, other shapes.
  with pytest.raises(ValueError, match="another model.*Dense_0/kernel"):
    predict.load(wider, stage2)
  with pytest.raises(ValueError, match="stage-II config"):
    predict.load(uvim_synthetic.get_config("smoke_stage1"), stage1)
  with pytest.raises(ValueError, match="holds its stage-I model"):
    predict.load(config, stage2, stage1=stage1)
  with pytest.raises(ValueError, match="stage-I weights"):
    predict.load(config, BIG_VISION / "stage2.npz")
  # With the run's config.json: another code length, which no parameter
  # shape shows (bottleneck_resize), is refused.
  checkpoint.save_config(workdir, config)
  longer = uvim_synthetic.get_config("smoke_stage2")
  longer.oracle.model.code_len = longer.model.seq_len = 16
  try:
    with pytest.raises(ValueError, match=r"model.seq_len is 16 here, 4 there; "
                       r"oracle.model.code_len is 16 here, 4 there\."):
      predict.load(longer, stage2)
    predict.load(config, stage2)  # The run's own config.
  finally:
    os.remove(os.path.join(workdir, "config.json"))


def test_big_vision_checkpoints():
  config = test_uvim_trainers.big_vision_config()
  config.oracle.checkpoint = ""  # The stage-I file comes from predict.load.
  stage1, stage2 = BIG_VISION / "stage1.npz", BIG_VISION / "stage2.npz"
  predictor = predict.load(config, stage2, stage1=stage1)
  # Every array of both files is in the predictor's variables.
  variables = {"params": predictor.variables["params"],
               "oracle": predictor.variables["state"]["oracle"]}
  for name, path in (("params", stage2), ("oracle", stage1)):
    expected = checkpoint.load_big_vision_npz(str(path))
    if name == "params":
      expected = expected["params"]
    jax.tree.map(np.testing.assert_array_equal,
                 jax.device_get(variables[name]), expected)
  # Loaded so, the trainer predicts big_vision's own pipeline outputs.
  io2 = np.load(BIG_VISION / "stage2_io.npz")
  np.testing.assert_array_equal(
      _jitted_predict_fn(predictor)(predictor.variables,
                                    {"image": io2["image"]})["panoptic"],
      io2["pipeline_pred/panoptic"])
  image = _image(32, 32)
  np.testing.assert_array_equal(
      predictor.predict(image)["panoptic"],
      _trainer_predict(predictor, image)["panoptic"][0])
  with pytest.raises(ValueError, match="does not fit this model"):
    predict.load(config, stage1, stage1=stage2)  # Swapped.
  with pytest.raises(FileNotFoundError, match="No big_vision checkpoint"):
    predict.load(config, stage2, stage1=BIG_VISION / "missing.npz")


@pytest.fixture(scope="module")
def colorizer():
  """A smoke colorization model: grayscale in, colour out."""
  config = uvim_synthetic.get_config("smoke_stage2")
  colorization = uvim_synthetic.get_config("colorization_stage2")
  config.task, config.input.pp = colorization.task, colorization.input.pp
  trainer = uvim_stage2.Trainer(config)
  return predict.Predictor(trainer, random_variables(trainer))


def test_colorization_takes_grayscale_and_returns_colour(colorizer):
  image = _image(64, 64, seed=6)
  # The model sees the image's luma, exactly as the config's pp makes it.
  pp = builder.get_preprocess_fn("rgb_to_grayscale_to_rgb|value_range(-1, 1)")
  np.testing.assert_array_equal(colorizer.model_input(image),
                                pp({"image": image})["image"].numpy())
  gray = colorizer.model_input(image)[..., 0]
  gray_uint8 = np.round((gray + 1) * 127.5).astype(np.uint8)
  # A grayscale image is welcome, 2-D or as PIL mode L.
  np.testing.assert_array_equal(
      colorizer.predict(gray_uint8)["color"],
      colorizer.predict(Image.fromarray(gray_uint8))["color"])
  out = colorizer.predict(image)["color"]
  assert out.shape == (64, 64, 3) and out.dtype == np.float32
  # Real outputs are resized back bilinearly.
  big = _image(75, 100, seed=7)
  small = _trainer_predict(colorizer, big)["color"][0]
  np.testing.assert_allclose(
      colorizer.predict(big)["color"],
      jax.image.resize(small, (75, 100, 3), "linear"), atol=1e-6)
  with pytest.raises(ValueError, match="4 channels"):
    colorizer.predict(np.zeros((8, 8, 4), np.uint8))


def test_visualize():
  panoptic = np.zeros((2, 3, 2), np.int32)
  panoptic[0, 0] = (4, 2)
  picture = predict.visualize({"panoptic": panoptic})
  assert picture.shape == (2, 3, 3) and picture.dtype == np.uint8
  assert picture[1, 1].tolist() == [0, 0, 0]  # Void.
  assert picture[0, 0].any()
  depth = np.linspace(1, 5, 12, dtype=np.float32).reshape(2, 2, 3)
  picture = predict.visualize({"depth": depth}, depth_range=(1, 9))
  assert picture.shape == (2, 6, 3)  # Two samples side by side.
  np.testing.assert_array_equal(picture[0, 0], [48, 18, 59])  # Map start.
  color = predict.visualize({"color": np.full((2, 2, 3), -1.0)})
  assert color.shape == (2, 2, 3) and not color.any()
