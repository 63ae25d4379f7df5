r"""TFDS builder for NYU Depth v2's labelled split with 40-class labels.

The 1,449 densely labelled frames of NYU Depth v2 (Silberman et al. 2012),
795 train / 654 test, with the 40-class semantic labels of Gupta et al.
(2013) and surface normals: the setup of PolyMaX, InvPT and most multi-task
dense-prediction papers. TFDS's own `nyu_depth_v2` has depth only.

The files are not downloadable here; put them, per split, in a manual dir:

  MANUAL_DIR/train/000001.png          RGB, 480x640
               .../depth_gt_000001.png   uint16 depth, 1/5000 m, 0 = missing
               .../segm_gt_000001.png    uint8 class 0..39, 255 = unlabelled
               .../norm_gt_000001.png    RGB (n + 1) * 127.5, 127 = missing
  MANUAL_DIR/test/...

then build once:

  python -m uvimx.datasets nyuv2_labeled --manual_dir MANUAL_DIR \
      --data_dir DATA_DIR

(`tfds build` would do the same, but TFDS 4.9.10's CLI needs apache_beam.)

A frame without a normals file gets missing normals everywhere. Depth is
stored in millimetres, like synthetic_scenes (`decode_depth_png`'s default).
Normals are stored in synthetic_scenes' camera frame (OpenCV's: x right,
y down, z forward): the files' frame is x right, y forward, z up (a floor's
normal is about (0, -0.2, 1) there; normals from the depth map agree).
"""
import os
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# NYU-40 (Gupta et al. 2013), label ids 0..39.
CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door",
    "window", "bookshelf", "picture", "counter", "blinds", "desk", "shelves",
    "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet",
    "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop")
IGNORE_LABEL = 255
HEIGHT, WIDTH = 480, 640
SPLITS = ("train", "test")
# The depth PNGs' unit, and the stored one (mm).
_DEPTH_UNITS_PER_M = 5000
_MISSING_NORMAL = 127
# The docstring's file layout and build command, for error messages.
_LAYOUT = __doc__[__doc__.index("  MANUAL_DIR"):__doc__.index("(`tfds build")]


def _to_camera_frame(normals):
  """8-bit normals (x right, y forward, z up) -> (x right, y down, z forward).

  (x, y, z) -> (x, -z, y); in 8 bits v = (n + 1) * 127.5, -n is 255 - v.
  Missing normals stay (127, 127, 127).
  """
  x, y, z = np.moveaxis(normals, -1, 0)
  converted = np.stack([x, 255 - z, y], axis=-1).astype(np.uint8)
  missing = np.all(normals == _MISSING_NORMAL, axis=-1, keepdims=True)
  return np.where(missing, normals, converted)


def _read(path):
  with open(path, "rb") as f:
    return np.array(Image.open(f))


class Nyuv2Labeled(tfds.core.GeneratorBasedBuilder):
  """NYU Depth v2 labelled frames: image, depth, 40 classes, normals."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Normals in the camera frame of synthetic_scenes (x right, y "
               "down, z forward), not the files' (x right, y forward, z up).",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

  def _info(self):
    def image(channels, dtype=np.uint8):
      return tfds.features.Image(shape=(HEIGHT, WIDTH, channels), dtype=dtype)
    return self.dataset_info_from_configs(
        description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict({
            "image": image(3),
            "depth": image(1, np.uint16),
            "semantics": image(1),
            "normals": image(3),
            "image/id": np.int64,
        }),
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    missing = [s for s in SPLITS if not os.path.isdir(os.path.join(root, s))]
    if missing:
      raise FileNotFoundError(
          f"nyuv2_labeled needs the folders {missing} in the manual dir "
          f"{os.fspath(root)!r}:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {s: self._generate_examples(os.path.join(root, s)) for s in SPLITS}

  def _generate_examples(self, folder):
    for name in sorted(os.listdir(folder)):
      match = re.fullmatch(r"(\d+)\.png", name)
      if not match:
        continue
      index = match.group(1)
      path = lambda kind: os.path.join(folder, f"{kind}_{index}.png")
      depth = _read(path("depth_gt")).astype(np.float64)
      depth_mm = np.round(depth * 1000 / _DEPTH_UNITS_PER_M).astype(np.uint16)
      normals = (_to_camera_frame(_read(path("norm_gt")))
                 if os.path.exists(path("norm_gt"))
                 else np.full((HEIGHT, WIDTH, 3), _MISSING_NORMAL, np.uint8))
      semantics = _read(path("segm_gt"))
      unknown = sorted(set(np.unique(semantics).tolist())
                       - set(range(len(CLASS_NAMES))) - {IGNORE_LABEL})
      if unknown:
        raise ValueError(
            f"{path('segm_gt')} holds labels {unknown}: NYU-40 "
            f"labels are 0..{len(CLASS_NAMES) - 1}, {IGNORE_LABEL} unlabelled "
            "(files with 1..40 and 0 unlabelled need 1 subtracted, 0 -> 255).")
      yield index, {
          "image": _read(os.path.join(folder, name)),
          "depth": depth_mm[..., None],
          "semantics": semantics[..., None],
          "normals": normals,
          "image/id": int(index),
      }

