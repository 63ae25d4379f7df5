"""TFDS builder for synthetic_scenes: ray-cast rooms with dense labels.

Nothing is downloaded: every example is rendered by `render.generate` from a
seed that depends only on (split, index), so a builder version always produces
the same examples, whatever the generation order, and `tiny` splits are
prefixes of the full ones. See `render` for the geometric conventions.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from uvimx.datasets.synthetic_scenes import render

_DESCRIPTION = f"""
Synthetic indoor-like scenes rendered by numpy ray casting: a room (floor,
ceiling, back, left and right walls) holding 2-8 objects standing on the floor
(things: {", ".join(render.CLASS_NAMES[:render.NUM_THINGS])}), lit by a
directional light with shadows, with random colours and mild procedural
textures. Every pixel has an RGB colour, metric depth (camera z, millimetres),
a camera-frame surface normal, a semantic class, an instance id, a panoptic
segment (COCO panoptic layout) and a boundary flag; intrinsics and the camera
pose are stored too. Class labels list things first: label < {render.NUM_THINGS}
is a thing.
"""

# Seeds the per-example RNG together with the example index.
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
_FULL_SIZES = {"train": 10_000, "validation": 1_000, "test": 1_000}


@dataclasses.dataclass(kw_only=True)
class SyntheticScenesConfig(tfds.core.BuilderConfig):
  """Image resolution and number of examples per split."""
  height: int = 64
  width: int = 64
  split_sizes: dict[str, int] = dataclasses.field(
      default_factory=lambda: dict(_FULL_SIZES))


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
  """Ray-cast synthetic rooms with depth, normals and panoptic labels."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "One camera for all scenes: 60 degree horizontal field of view "
               "(was 55-75) and camera height 1.4-1.6 m (was 1-2 m), so "
               "metric depth can be read from the image.",
  }
  BUILDER_CONFIGS = [
      SyntheticScenesConfig(name="64x64", description="64x64 images."),
      SyntheticScenesConfig(name="128x128", height=128, width=128,
                            description="128x128 images (same scenes)."),
      SyntheticScenesConfig(
          name="tiny", description="64x64, 48/24/24 examples, for tests.",
          split_sizes={"train": 48, "validation": 24, "test": 24}),
  ]

  def _info(self):
    h, w = self.builder_config.height, self.builder_config.width
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(h, w, 3), encoding_format="png"),
            "depth": tfds.features.Image(
                shape=(h, w, 1), dtype=np.uint16, encoding_format="png",
                doc="Camera-frame z in millimetres."),
            "normals": tfds.features.Image(
                shape=(h, w, 3), encoding_format="png",
                doc="round((n + 1) / 2 * 255), n: camera-frame unit normal."),
            "semantics": tfds.features.Image(
                shape=(h, w, 1), encoding_format="png",
                doc="Index into the panoptic_objects label names."),
            "instances": tfds.features.Image(
                shape=(h, w, 1), dtype=np.uint16, encoding_format="png",
                doc="0 for stuff, 1..N for the visible things."),
            "boundaries": tfds.features.Image(
                shape=(h, w, 1), encoding_format="png",
                doc="1 iff a 4-neighbour has another (semantic, instance)."),
            "panoptic_image": tfds.features.Image(
                shape=(h, w, 3), encoding_format="png",
                doc="Segment id = R + 256 G + 256^2 B."),
            "panoptic_objects": tfds.features.Sequence({
                "id": np.int64,
                "area": np.int64,
                "bbox": tfds.features.BBoxFeature(),
                "is_crowd": np.bool_,
                "label": tfds.features.ClassLabel(names=render.CLASS_NAMES),
            }),
            "intrinsics": tfds.features.Tensor(
                shape=(4,), dtype=np.float32,
                doc="[fx, fy, cx, cy] in pixels."),
            "camera_to_world": tfds.features.Tensor(
                shape=(4, 4), dtype=np.float32,
                doc="OpenCV camera frame to world frame (y up)."),
            "image/id": np.int64,
        }),
        metadata=tfds.core.MetadataDict(
            class_names=list(render.CLASS_NAMES),
            thing_class_names=list(render.CLASS_NAMES[:render.NUM_THINGS]),
            num_things=render.NUM_THINGS),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is rendered locally.
    return {split: self._generate_examples(split, size)
            for split, size in self.builder_config.split_sizes.items()}

  def _generate_examples(self, split, num_examples):
    height, width = self.builder_config.height, self.builder_config.width
    for index in range(num_examples):
      example = render.generate((SPLIT_SEEDS[split], index), height, width)
      yield index, dict(example, **{"image/id": index})
