r"""Prints the images/s of training input pipelines (TFDS -> pp -> batch).

  python -m benchmarks.input_pipeline                   # built-in pipelines
  python -m benchmarks.input_pipeline --config configs/X.py:variant

With --config, the config's `input` (data, pp, batch_size, ...) is measured;
without, the UViM-style train pipelines below on synthetic_scenes/64x64 (built
on first use in --data_dir). The first --warmup batches (dataset open, shuffle
buffer fill, tracing) are not timed.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from ml_collections import config_flags

from uvimx import input_pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file whose `input` is measured.",
    lock_config=False)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data dir for the built-in pipelines.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Batch size of the built-in pipelines.")
_BATCHES = flags.DEFINE_integer("batches", 100, "Timed batches.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed batches first.")

_RES = 64
# Inception crop + flip applied identically to the image and its labels, then
# a square resize: the UViM paper's train-time augmentation (Section 4).
_AUGMENT = ("inception_box|randu('fliplr')|" + "|".join(
    f"crop_box(key='{k}')|det_fliplr(key='{k}')"
    for k in ("image", "{labels}")))
_PIPELINES = {
    "panoptic": (
        "decode|coco_panoptic|make_canonical|"
        "concat(['semantics', 'instances'], 'labels')|"
        + _AUGMENT.format(labels="labels") +
        f"|resize({_RES})|resize({_RES}, key='labels', method='nearest')|"
        "value_range(-1, 1)|keep('image', 'labels')"),
    "depth": (
        "decode|decode_depth_png|" + _AUGMENT.format(labels="depth") +
        f"|resize({_RES})|resize({_RES}, key='depth', method='nearest')|"
        "value_range(-1, 1)|keep('image', 'depth')"),
    "normals": (
        "decode|decode_normals_png|" + _AUGMENT.format(labels="normals") +
        f"|resize({_RES})|resize({_RES}, key='normals', method='nearest')|"
        "value_range(-1, 1)|keep('image', 'normals')"),
    "colorization": (
        "decode|inception_box|crop_box(key='image')|randu('fliplr')|"
        f"det_fliplr(key='image')|resize({_RES})|copy('image', 'labels')|"
        "rgb_to_grayscale_to_rgb|value_range(-1, 1)|"
        "value_range(-1, 1, key='labels')|keep('image', 'labels')"),
}


def images_per_second(input_config):
  """Times `--batches` batches of the training pipeline after a warm-up."""
  ds, _ = input_pipeline.training(input_config)
  batches = ds.as_numpy_iterator()
  for _ in range(_WARMUP.value):
    next(batches)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(batches)
  elapsed = time.perf_counter() - start
  return _BATCHES.value * input_config["batch_size"] / elapsed


def main(argv):
  del argv
  if _CONFIG.value is not None:
    configs = {"config": _CONFIG.value.input}
  else:
    data = dict(name="synthetic_scenes/64x64", split="train",
                data_dir=_DATA_DIR.value)
    configs = {name: dict(data=data, pp=pipe, batch_size=_BATCH_SIZE.value,
                          shuffle_buffer_size=10_000)
               for name, pipe in _PIPELINES.items()}
  print(f"{'pipeline':<14} {'batch':>6} {'images/s':>10}")
  for name, config in configs.items():
    rate = images_per_second(config)
    print(f"{name:<14} {config['batch_size']:>6} {rate:>10.0f}")


if __name__ == "__main__":
  app.run(main)
