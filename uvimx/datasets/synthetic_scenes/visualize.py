r"""Writes a PNG grid of synthetic_scenes examples, one row per example.

Columns: image, depth (colour-mapped per image), normals, semantics, instances,
boundaries and panoptic segments. Builds the dataset first if needed.

  python -m uvimx.datasets.synthetic_scenes.visualize --data_dir /tmp/tfds \
      --config 64x64 --split validation --num 6 --out grid.png
"""
import colorsys

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw
import tensorflow_datasets as tfds

from uvimx.datasets.synthetic_scenes import render
from uvimx.datasets.synthetic_scenes import synthetic_scenes

COLUMNS = ("image", "depth", "normals", "semantics", "instances", "boundaries",
           "panoptic")
# Anchors of a perceptually ordered dark-blue -> teal -> yellow colour map.
_COLORMAP_ANCHORS = np.array([[48, 18, 59], [40, 120, 200], [30, 190, 160],
                              [160, 220, 60], [250, 230, 40]], np.float64)
_HEADER = 14  # Pixels of the column-title row.


def colormap(values):
  """Maps values in [0, 1] to uint8 RGB by interpolating the anchors."""
  position = np.clip(values, 0, 1) * (len(_COLORMAP_ANCHORS) - 1)
  low = np.minimum(position.astype(int), len(_COLORMAP_ANCHORS) - 2)
  frac = (position - low)[..., None]
  rgb = (1 - frac) * _COLORMAP_ANCHORS[low] + frac * _COLORMAP_ANCHORS[low + 1]
  return rgb.round().astype(np.uint8)


def palette(num):
  """`num` distinct colours; index 0 is black (stuff / background)."""
  # Golden-ratio hue steps keep consecutive ids far apart in colour.
  colors = [colorsys.hsv_to_rgb((k * 0.618034) % 1, 0.75, 0.95)
            for k in range(num - 1)]
  return (np.array([(0, 0, 0)] + colors) * 255).round().astype(np.uint8)


def tiles(example):
  """RGB uint8 arrays for each entry of COLUMNS."""
  depth = example["depth"][..., 0].astype(np.float64)
  ids = example["panoptic_image"].astype(np.int64) @ 256**np.arange(3)
  return {
      "image": example["image"],
      "depth": colormap((depth - depth.min()) / max(np.ptp(depth), 1)),
      "normals": example["normals"],
      "semantics": palette(len(render.CLASS_NAMES) + 1)[
          example["semantics"][..., 0] + 1],
      "instances": palette(256)[example["instances"][..., 0] % 256],
      "boundaries": np.repeat(example["boundaries"] * 255, 3, axis=-1),
      "panoptic": palette(256)[ids % 256],
  }


def grid(examples, tile):
  """One row per example, one column per entry of COLUMNS, titled."""
  height, width = examples[0]["image"].shape[:2]
  scale = max(1, -(-tile // max(height, width)))  # Ceil division.
  h, w = height * scale, width * scale
  canvas = Image.new("RGB", (w * len(COLUMNS), _HEADER + h * len(examples)))
  draw = ImageDraw.Draw(canvas)
  for col, name in enumerate(COLUMNS):  # `tiles` returns them in this order.
    draw.text((col * w + 2, 1), name, fill=(255, 255, 255))
  for row, example in enumerate(examples):
    for col, (name, array) in enumerate(tiles(example).items()):
      image = Image.fromarray(array).resize((w, h), Image.NEAREST)
      canvas.paste(image, (col * w, _HEADER + row * h))
  return canvas


def main(argv):
  del argv
  f = flags.FLAGS
  builder = synthetic_scenes.SyntheticScenes(config=f.config,
                                             data_dir=f.data_dir)
  builder.download_and_prepare()
  dataset = builder.as_dataset(split=f"{f.split}[:{f.num}]")
  grid(list(tfds.as_numpy(dataset)), f.tile).save(f.out)


if __name__ == "__main__":
  # Defined here, not at import: notebooks and tests import `grid` next to
  # other programs' flags (train.py also has --config).
  flags.DEFINE_string("data_dir", None, "TFDS data directory.")
  flags.DEFINE_string("config", "64x64", "Builder config name.")
  flags.DEFINE_string("split", "validation", "Split to read.")
  flags.DEFINE_integer("num", 6, "Number of examples (rows).")
  flags.DEFINE_string("out", "grid.png", "Output PNG path.")
  flags.DEFINE_integer("tile", 128, "Minimum tile size in pixels.")
  app.run(main)
