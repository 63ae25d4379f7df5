r"""Inference with a trained UViM (stage-II LM + stage-I base model).

  python -m uvimx.predict --config configs/uvim_synthetic.py:panoptic_stage2 \
      --checkpoint /tmp/s2/checkpoints/3000 --image in.png --out out.png \
      [--temperature 1.0 --num_samples 4 --seed 0]

With big_vision's released UViM checkpoints, two .npz files (the stage-II LM
and the stage-I model), and the config of their architecture:

  python -m uvimx.predict --config CONFIG.py:VARIANT \
      --checkpoint panoptic_stageII_params.npz \
      --stage1 panoptic_stageI_params.npz --image in.jpg --out out.png

The PNG shows the prediction at the input image's size (panoptic: a colour
per class, a shade per instance; depth: a colour map over the map's range;
colorization: the colour image); with --num_samples, the samples side by side.
From Python:

  predictor = predict.load(config, "/tmp/s2/checkpoints/3000")
  out = predictor.predict("in.png")         # {"panoptic": int32 (H, W, 2)}
  samples = predictor.predict(image, num_samples=4, temperature=1.0)
  rgb = predict.visualize(samples)          # uint8 (H, 4 W, 3)

An image is a path, a PIL image or a uint8 array (H, W, 3) of any size. A
file or PIL image is read as the `decode` pp op reads a dataset image, 8-bit
RGB: grayscale repeated in 3 channels, alpha dropped, palettes expanded,
16-bit values cut to their high byte; a file is also turned upright by its
EXIF orientation, as a photo viewer shows it. The image is then made what
the config's pp makes of a dataset image: resized to
`config.model.input_size` (bilinear, no antialiasing, as the pp's `resize`),
grayscale if the pp has `rgb_to_grayscale_to_rgb` (colorization, whose
models then also take (H, W) grayscale arrays) and scaled to [-1, 1]. The
prediction is resized back to (H, W): nearest for integer outputs (labels),
bilinear for real ones. The codes are sampled and decoded by the stage-II
trainer's own functions: on an image of the input size, a prediction is
exactly what its evaluators see.
"""
import importlib.util
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
from PIL import Image
from PIL import ImageOps

from uvimx import checkpoint as checkpoint_lib
from uvimx.datasets.synthetic_scenes import visualize as scenes_vis
from uvimx.trainers import uvim_stage2

# The pp op whose models take the image's luma (UViM's colorization).
_GRAYSCALE_OP = "rgb_to_grayscale_to_rgb"
# tf.image.rgb_to_grayscale's weights, which that op uses.
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)
# Dimensions of one prediction, per output name (more: a samples axis).
_NDIM = {"panoptic": 3, "depth": 2, "color": 3, "semantics": 2, "normals": 3}


def get_config(spec):
  """The config of "path/to/config.py:arg", as train.py's --config reads it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No config file {path!r} (from {spec!r}).")
  module_spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def load(config, checkpoint, *, stage1=None):
  """A Predictor for a stage-II config and its trained weights.

  Args:
    config: the stage-II config the weights were trained with, a ConfigDict
      or its "path.py:variant" (e.g.
      "configs/uvim_synthetic.py:panoptic_stage2"): model, task, sampling.
    checkpoint: a uvimx stage-II step directory, "WORKDIR/checkpoints/N",
      which holds the LM and the frozen stage-I model; or big_vision's
      stage-II .npz, which holds only the LM.
    stage1: with a .npz only: the stage-I weights, big_vision's stage-I .npz
      (or a uvimx stage-I step directory); default config.oracle.checkpoint.

  Returns:
    The Predictor.

  Raises:
    FileNotFoundError: a checkpoint is missing, or a directory is not a
      checkpoint step directory.
    ValueError: the config is not a stage-II config, a checkpoint holds
      another model than the config's, or the stage-I weights are missing.
  """
  if isinstance(config, str):
    config = get_config(config)
  if config.get("trainer") != "uvim_stage2":
    raise ValueError(
        f"uvimx.predict needs a stage-II config (trainer 'uvim_stage2'), "
        f"got trainer {config.get('trainer')!r}: e.g. "
        "configs/uvim_synthetic.py:panoptic_stage2.")
  checkpoint = os.fspath(checkpoint)
  trainer = uvim_stage2.Trainer(config)
  abstract = jax.eval_shape(trainer.init, jax.random.key(0),
                            trainer.input_spec(1))
  if not checkpoint.endswith(".npz"):
    if stage1 is not None:
      raise ValueError(
          "stage1 is for big_vision .npz checkpoints only: a uvimx stage-II "
          f"checkpoint ({checkpoint!r}) holds its stage-I model.")
    checkpoint_lib.check_run_config(checkpoint, {
        "model": config.model, "oracle.model": config.oracle.model})
    try:
      variables = _load_step(checkpoint, abstract)
    except ValueError as e:
      raise ValueError(
          f"{e}\nA stage-II run's checkpoint holds both stages; a stage-I "
          "run's alone cannot predict.") from None
    return Predictor(trainer, variables)
  stage1 = stage1 or config.oracle.get("checkpoint")
  if not stage1:
    raise ValueError(
        f"{checkpoint!r} holds only the stage-II LM: give the stage-I weights "
        "too (stage1=, --stage1, or config.oracle.checkpoint), e.g. "
        "big_vision's panoptic_stageI_params.npz.")
  params = checkpoint_lib.load_big_vision_npz(
      checkpoint, {"params": abstract["params"]})["params"]
  # As the stage-II trainer loads its frozen stage-I model.
  stage1, oracle = os.fspath(stage1), abstract["state"]["oracle"]
  if stage1.endswith(".npz"):
    oracle = checkpoint_lib.load_big_vision_npz(stage1, template=oracle)
  else:
    oracle = _load_step(stage1, oracle)
  return Predictor(trainer, {"params": params, "state": {"oracle": oracle}})


def _load_step(path, abstract):
  """The items of `abstract` from a uvimx step directory, checked."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No checkpoint at {path!r}.")
  for parent in (path, os.path.join(path, "checkpoints")):
    steps = ([int(n) for n in os.listdir(parent) if n.isdigit()]
             if os.path.isdir(parent) else [])
    if steps:  # A workdir: name the step directory to give.
      raise FileNotFoundError(
          f"{path!r} is not a checkpoint step directory; give one, e.g. the "
          f"latest: {os.path.join(parent, str(max(steps)))!r}.")
  variables = checkpoint_lib.load_variables(path, abstract)
  return variables


class Predictor:
  """A stage-II LM with its stage-I model, predicting on single images."""

  def __init__(self, trainer, variables):
    """`load` makes one from checkpoints; this, from variables in memory.

    Args:
      trainer: the `uvim_stage2.Trainer` of the config.
      variables: {"params": the LM's, "state": {"oracle": stage I}}.
    """
    self.trainer = trainer
    # One image at a time: one device. (Restored arrays keep the mesh they
    # were saved from, which would repeat the work on each of its devices.)
    self.variables = jax.device_put(variables, jax.devices()[0])
    config = trainer.config
    self.input_size = tuple(config.model.input_size)
    self.grayscale = _GRAYSCALE_OP in config.get("input", {}).get("pp", "")
    self._run = jax.jit(self._sample_and_decode,
                        static_argnames=("num_samples", "temperature"))

  def _sample_and_decode(self, variables, images, seeds, num_samples,
                         temperature):
    """{name: (B, N, ...)}: N predictions per image, one per sampled code."""
    sampling = {} if temperature is None else {"temperature": temperature}
    tokens = self.trainer.sample_codes(variables["params"], images,
                                       num_samples, seeds=seeds, **sampling)
    b, n, length = tokens.shape
    # The B * N codes decode as one batch: for N = 1 exactly the trainer's
    # `predict` fn.
    outputs = self.trainer._decode_labels(  # pylint: disable=protected-access
        variables["state"], tokens.reshape(b * n, length),
        jnp.repeat(images, n, axis=0))
    return {k: v.reshape((b, n) + v.shape[1:]) for k, v in outputs.items()}

  def model_input(self, image):
    """float32 (h, w, 3) in [-1, 1]: `image` as the config's pp makes it."""
    pixels = to_uint8_image(image, grayscale_ok=self.grayscale)
    height, width = self.input_size
    if pixels.shape[:2] != (height, width):
      # The pp's `resize`: tf.image.resize's bilinear (half-pixel centres,
      # no antialiasing), rounded back to uint8.
      resized = jax.image.resize(pixels.astype(np.float32),
                                 (height, width, 3), "linear", antialias=False)
      pixels = np.clip(np.round(np.asarray(resized)), 0, 255).astype(np.uint8)
    if self.grayscale:
      pixels = _grayscale(pixels)
    # value_range(-1, 1), in its float32 order of operations.
    return (np.float32(-1) +
            pixels.astype(np.float32) / np.float32(255) * np.float32(2))

  def predict(self, image, *, num_samples=None, temperature=None,
              seed=None):
    """The task's prediction for one image, at the image's size.

    Args:
      image: a path, a PIL image or a uint8 array (H, W, 3) (see the module
        docstring); for a grayscale-input model (colorization) also (H, W).
      num_samples: None: one prediction; N: N predictions, each from its own
        sampled code (a leading axis N).
      temperature: of the code sampling; None: config.sampling's (0,
        greedy, in the synthetic_scenes configs), as the evaluators use.
      seed: int seed of the sampling, in [0, 2**31); None derives it from
        the image, as the evaluators do, so that an image always gets the
        same samples.

    Returns:
      {name: numpy array}, the task's `predict_outputs` for the image
      without a batch axis: "panoptic" int32 (H, W, 2) (semantic id,
      instance id), "depth" float32 (H, W) metres or "color" float32
      (H, W, 3) RGB in [-1, 1]; with num_samples, (N, H, W, ...).

    Raises:
      FileNotFoundError: no image file at the path.
      TypeError: `image` is none of the above.
      ValueError: the image is none of the above (see `to_uint8_image`), or
        a sampling argument is out of range.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(
        seed, (int, np.integer)) or not 0 <= seed < 2**31):
      raise ValueError(f"seed must be an int in [0, 2**31), got {seed!r}.")
    pixels = to_uint8_image(image, grayscale_ok=self.grayscale)
    images = self.model_input(pixels)[None]
    seeds = None if seed is None else jnp.array([seed], jnp.int32)
    outputs = self._run(
        self.variables, images, seeds,
        num_samples=1 if num_samples is None else num_samples,
        temperature=None if temperature is None else float(temperature))
    outputs = {k: _resize(np.asarray(v[0]), pixels.shape[:2])
               for k, v in outputs.items()}
    if num_samples is None:
      return {k: v[0] for k, v in outputs.items()}
    return outputs


def to_uint8_image(image, grayscale_ok=False):
  """uint8 (H, W, 3) RGB from a path, PIL image or array; clear errors.

  Args:
    image: a path or a PIL image (read as the `decode` pp op reads a file:
      see the module docstring), or a numpy array.
    grayscale_ok: also take grayscale arrays, (H, W) or (H, W, 1), and
      repeat them in 3 channels. (An array of another shape is refused: its
      layout is not known, where a file's or PIL image's mode says it.)

  Returns:
    The uint8 (H, W, 3) array.

  Raises:
    FileNotFoundError: no file at the path.
    TypeError: `image` is none of the above.
    ValueError: not an image file, a floating-point image, an array not
      uint8 or not RGB (or grayscale, if grayscale_ok), or empty.
  """
  rgb = "(H, W, 3)" + (" or grayscale (H, W)" if grayscale_ok else "")
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"No image file at {path!r}.")
    try:
      pil = Image.open(path)
    except Image.UnidentifiedImageError:
      raise ValueError(f"{path!r} is not an image file that PIL can read "
                       "(PNG, JPEG, ...).") from None
    with pil:
      return to_uint8_image(ImageOps.exif_transpose(pil), grayscale_ok)
  if isinstance(image, Image.Image):
    image = _rgb_array(image)
  if not isinstance(image, np.ndarray):
    raise TypeError(f"Give an image path, a PIL image or a uint8 numpy array "
                    f"{rgb}, not {type(image).__name__}.")
  if image.dtype != np.uint8:
    raise ValueError(
        f"The image array is {image.dtype}; give uint8 values in [0, 255]: "
        "e.g. np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) for an "
        "image x in [0, 1], np.clip(np.round(x), 0, 255).astype(np.uint8) "
        "for one in [0, 255].")
  shape = image.shape
  if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
    if not grayscale_ok:
      raise ValueError(
          f"The image is grayscale, shape {shape}; this model takes RGB "
          "(H, W, 3): repeat the channel, np.dstack([x] * 3).")
    image = np.dstack([image] * 3)
  elif len(shape) == 3 and shape[2] == 4:
    raise ValueError(
        f"The image has 4 channels (RGBA?), shape {shape}; this model takes "
        f"RGB {rgb}: drop the alpha channel, x[..., :3].")
  elif len(shape) != 3 or shape[2] != 3:
    raise ValueError(f"The image has shape {shape}; give one image {rgb}.")
  if not image.size:
    raise ValueError(f"The image is empty, shape {shape}.")
  return image


def _rgb_array(pil):
  """uint8 (H, W, 3) of a PIL image, as tf.io.decode_image(channels=3)."""
  if pil.mode == "F":
    raise ValueError(
        "The image has floating-point pixels (PIL mode 'F'); give an 8-bit "
        "image, e.g. Image.fromarray(np.clip(np.round(x), 0, 255)"
        ".astype(np.uint8)).")
  if pil.mode.startswith("I"):  # 16-bit ("I;16...") or 32-bit integers.
    # As decode_png makes 16-bit files 8-bit: the high byte.
    high = np.clip(np.asarray(pil, np.int64), 0, 65535) >> 8
    return np.dstack([high.astype(np.uint8)] * 3)
  return np.asarray(pil.convert("RGB"))


def _grayscale(rgb):
  """tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(rgb)) for uint8."""
  luma = (rgb.astype(np.float32) * np.float32(1 / 255)) @ _LUMA
  # tf.image.convert_image_dtype back to uint8: scale by 255.5, truncate.
  gray = (luma * np.float32(255.5)).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


def _resize(x, size):
  """(N, h, w, ...) -> (N, *size, ...): nearest for ints, else bilinear."""
  (h, w), (height, width) = x.shape[1:3], size
  if (h, w) == (height, width):
    return x
  if np.issubdtype(x.dtype, np.integer):
    # Pixel centres: output i takes input floor((i + 0.5) * h / height).
    rows = (2 * np.arange(height) + 1) * h // (2 * height)
    cols = (2 * np.arange(width) + 1) * w // (2 * width)
    return x[:, rows][:, :, cols]
  return np.asarray(jax.image.resize(
      x, (x.shape[0], height, width) + x.shape[3:], "linear"))


def visualize(outputs, depth_range=None):
  """An RGB picture of a prediction, as uint8 (H, W, 3).

  Panoptic: a colour per semantic class (void black), a shade per instance;
  depth: a colour map from `depth_range` (default: the map's min and max);
  colour and normals: as RGB; semantics: a colour per class. Samples (a
  leading axis N, as `predict(num_samples=N)` gives) are laid out side by
  side, (H, N W, 3), with one depth range for all.

  Args:
    outputs: a `Predictor.predict` result (or labels in its format): one
      output name, e.g. {"depth": (H, W)} or {"depth": (N, H, W)}.
    depth_range: (min, max) metres of the depth colour map.

  Returns:
    The uint8 (H, W, 3) or (H, N W, 3) picture.
  """
  (name, value), = outputs.items()
  if name not in _NDIM:
    raise ValueError(f"No visualisation for output {name!r}; known: "
                     f"{sorted(_NDIM)}.")
  value = np.asarray(value)
  samples = value if value.ndim > _NDIM[name] else value[None]
  if name == "depth":
    low, high = ((samples.min(), samples.max()) if depth_range is None
                 else depth_range)
    pictures = scenes_vis.colormap((samples - low) / max(high - low, 1e-6))
  elif name == "panoptic":
    semantics, instances = samples[..., 0], samples[..., 1]
    colors = scenes_vis.palette(int(semantics.max()) + 1)[semantics]
    # Golden-ratio steps keep consecutive instances of a class apart.
    shade = 1 - 0.5 * ((instances * 0.618034) % 1)
    pictures = np.round(colors * shade[..., None]).astype(np.uint8)
  elif name == "semantics":
    pictures = scenes_vis.palette(int(samples.max()) + 1)[samples]
  else:  # Colour in [-1, 1], unit normals: both from [-1, 1] to [0, 255].
    pictures = np.round(np.clip((samples + 1) * 127.5, 0, 255)).astype(
        np.uint8)
  return np.concatenate(list(pictures), axis=1)


def _check_out_path(path):
  """Raises a ValueError if PIL cannot write `path`, before any work."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"--out {path!r}: no folder {folder!r}; create it first.")
  extension = os.path.splitext(path)[1].lower()
  if Image.registered_extensions().get(extension) not in Image.SAVE:
    raise ValueError(f"--out {path!r}: give an image file name PIL can "
                     "write, e.g. ending in .png or .jpg.")


def main(argv):
  del argv
  f = flags.FLAGS
  _check_out_path(f.out)
  # Orbax logs each restore at INFO and WARNING; the output is the picture.
  logging.set_verbosity(logging.ERROR)
  predictor = load(f.config, f.checkpoint, stage1=f.stage1)
  outputs = predictor.predict(f.image, num_samples=f.num_samples,
                              temperature=f.temperature, seed=f.seed)
  Image.fromarray(visualize(outputs)).save(f.out)
  print(f"Wrote the {' and '.join(outputs)} prediction to {f.out}.")


if __name__ == "__main__":
  # Defined here, not at import: tests and notebooks import this module next
  # to train.py, which has its own --config.
  config_flags.DEFINE_config_file(
      "config", None, "Stage-II config, e.g. "
      "configs/uvim_synthetic.py:panoptic_stage2.", lock_config=True)
  flags.DEFINE_string("checkpoint", None, "uvimx stage-II step directory "
                      "(WORKDIR/checkpoints/N) or big_vision stage-II .npz.")
  flags.DEFINE_string("stage1", None, "With a .npz --checkpoint: the "
                      "stage-I .npz (default: config.oracle.checkpoint).")
  flags.DEFINE_string("image", None, "Input image file (RGB).")
  flags.DEFINE_string("out", None, "Output PNG of the prediction.")
  flags.DEFINE_float("temperature", None, "Sampling temperature (default: "
                     "config.sampling's; 0 is greedy).")
  flags.DEFINE_integer("num_samples", None, "Draw this many samples and "
                       "show them side by side.")
  flags.DEFINE_integer("seed", None, "Sampling seed (default: from the "
                       "image).")
  flags.mark_flags_as_required(["config", "checkpoint", "image", "out"])
  app.run(main)
