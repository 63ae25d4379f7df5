r"""Prints the depth metrics of image-blind predictors: the bar for depth models.

  python -m benchmarks.depth_reference --data_dir DIR [--dataset NAME]

A depth model must beat what needs no image: the training split's per-pixel
mean depth map (the same map for every validation image) and its single mean
depth. Foundation II's bar for the per-pixel baseline is half the mean map's
RMSE. Metrics are `evaluators.depth.depth_metrics` (per image, averaged) on
the validation split.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
import numpy as np

from evaluators import depth as depth_eval
from uvimx import input_pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_DATASET = flags.DEFINE_string("dataset", "synthetic_scenes/64x64",
                               "TFDS dataset with a uint16 mm `depth` image.")
_PP = "decode_depth_png|keep('depth')"
_MAX_DEPTH = 16.0  # Metres; as the evaluator, 0 (missing) and beyond are void.


def _depth_maps(split):
  """All depth maps of `split`, (N, H, W) float64 metres."""
  ds, _ = input_pipeline.evaluation(
      dict(name=_DATASET.value, split=split, data_dir=_DATA_DIR.value), _PP,
      batch_size=500)
  maps = [b["depth"][b["_mask"]][..., 0] for b in ds.as_numpy_iterator()]
  return np.concatenate(maps).astype(np.float64)


def main(argv):
  del argv
  train, val = _depth_maps("train"), _depth_maps("validation")
  # Means of the valid depths only (NYU has holes; synthetic_scenes none).
  train = np.where((train > 0) & (train <= _MAX_DEPTH), train, np.nan)
  references = {
      "train mean depth map": np.nanmean(train, axis=0),
      "train mean depth": np.full(train.shape[1:], np.nanmean(train)),
  }
  print(f"{_DATASET.value}: {len(train)} train, {len(val)} validation maps; "
        f"valid depths {np.nanmin(train):.2f}-{np.nanmax(train):.2f} m")
  print("| predictor | rmse (m) | abs_rel | delta1 | silog |")
  print("|---|---|---|---|---|")
  for name, depth_map in references.items():
    pred = np.broadcast_to(depth_map, val.shape)
    m = depth_eval.depth_metrics(val, pred, max_depth=_MAX_DEPTH)
    print(f"| {name} | {m['rmse']:.3f} | {m['abs_rel']:.3f} | "
          f"{m['delta1']:.3f} | {m['silog']:.1f} |")


if __name__ == "__main__":
  app.run(main)
