r"""PolyMaX's claim on synthetic_scenes/64x64: cluster head vs per-pixel head.

  python -m benchmarks.cluster_head_quality --workdir DIR --data_dir TFDS_DIR \
      [--runs depth,perpixel_depth,...] [--figure_example 0]

Trains each variant of `configs/polymax_synthetic.py` (the cluster head and
the per-pixel baseline, same encoder, pixel decoder and budget, on semseg,
depth and normals) with `train.py` in DIR/<variant>, one after the other; a
finished run is not trained again (see `quality_runs.py`). Then prints the
table of validation metrics at the last step, and writes DIR/cluster_maps.png:
for one validation example of the depth and the normals runs, the image,
label, prediction and the K cluster probability maps (PolyMaX's Figure 8),
each map scaled to its maximum and titled with it and with its cluster's
depth bin (metres) or normal (x, y, z and its colour), clusters ordered by
how much of the image they take.
"""
import os

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw

from benchmarks import quality_runs
from configs import polymax_synthetic
from uvimx import predict
from uvimx.datasets.synthetic_scenes import visualize

_FIGURE_EXAMPLE = flags.DEFINE_integer(
    "figure_example", 0, "Index in the validation split of the figure's "
    "example.")

_TASKS = ("semseg", "depth", "normals")
# Per task: (TensorBoard tag, column name, True if higher is better).
_METRICS = {
    "semseg": [("val/miou", "mIoU", True),
               ("val/pixel_accuracy", "pixel accuracy", True)],
    "depth": [("val/rmse", "RMSE (m)", False), ("val/abs_rel", "AbsRel", False),
              ("val/delta1", "delta1", True)],
    "normals": [("val/mean", "mean angle (deg)", False),
                ("val/median", "median angle (deg)", False),
                ("val/within_11.25", "% within 11.25 deg", True)],
}
_TILE = 128  # Pixels per map in the figure.
_HEADER = 26  # Two lines of titles.


def _table():
  print("| task | metric | cluster head | per-pixel head | better |")
  print("|---|---|---|---|---|")
  minutes = {}
  for task in _TASKS:
    runs = {}
    for variant in (task, f"perpixel_{task}"):
      steps = polymax_synthetic.get_config(variant).total_steps
      if quality_runs.finished(variant, steps):
        runs[variant], seconds = quality_runs.scalars(variant, steps)
        minutes[variant] = (steps, seconds / 60)
    if len(runs) < 2:
      continue
    cluster, per_pixel = runs[task], runs[f"perpixel_{task}"]
    for tag, name, higher_is_better in _METRICS[task]:
      a, b = cluster[tag], per_pixel[tag]
      better = "cluster" if (a > b) == higher_is_better else "per-pixel"
      print(f"| {task} | {name} | {a:.4g} | {b:.4g} | "
            f"{better if a != b else 'tie'} |")
  print("\n| run | steps | wall time (min) |\n|---|---|---|")
  for variant, (steps, wall) in minutes.items():
    print(f"| `{variant}` | {steps} | {wall:.1f} |")


def _cluster_maps(variant, index):
  """The example's image, label and `cluster_maps` outputs, as numpy."""
  config = polymax_synthetic.get_config(variant)
  trainer, variables = quality_runs.trained_model(config, variant)
  ds = quality_runs.validation(config, batch_size=1)
  example = next(iter(ds.skip(index).take(1).as_numpy_iterator()))
  out = jax.jit(trainer.predict_fns()["cluster_maps"])(
      variables, {"image": example["image"]})
  return example, jax.tree.map(lambda x: np.asarray(x)[0], out)


def _tile(array):
  return Image.fromarray(array).resize((_TILE, _TILE), Image.NEAREST)


def _row(task, example, out):
  """[(title, tile)]: image, label, prediction, then the K clusters."""
  label = example[task][0]
  if task == "depth":  # Label and prediction on the label's colour scale.
    label = label[..., 0]
    depth_range = (label.min(), label.max())
    values = out["bin_centers"]
  else:
    depth_range = None
    values = out["cluster_normals"]
  picture = lambda x: _tile(predict.visualize({task: x}, depth_range))
  row = [("image", _tile(predict.visualize({"color": example["image"][0]}))),
         (f"{task} label", picture(label)), ("prediction", picture(out[task]))]
  probabilities = out["probabilities"]
  for k in np.argsort(-probabilities.mean(axis=(0, 1))):
    # Each map scaled to its maximum, to show where the cluster is active.
    high = probabilities[..., k].max()
    tile = _tile(visualize.colormap(probabilities[..., k] / high))
    if task == "depth":
      title = f"bin {values[k]:.2f} m"
    else:  # The cluster's normal as a colour swatch in the corner.
      title = " ".join(f"{v:+.1f}" for v in values[k])
      ImageDraw.Draw(tile).rectangle(
          (_TILE - 24, 0, _TILE - 1, 23), fill=tuple(int(c) for c in (
              predict.visualize({"normals": values[k][None, None]})[0, 0])),
          outline=(255, 255, 255))
    title += f"\nmax p {high:.2f}"
    row.append((title, tile))
  return row


def _figure(path):
  rows = []
  for task in ("depth", "normals"):
    steps = polymax_synthetic.get_config(task).total_steps
    if quality_runs.finished(task, steps):
      rows.append(_row(task, *_cluster_maps(task, _FIGURE_EXAMPLE.value)))
  if not rows:
    return
  height = _HEADER + _TILE
  canvas = Image.new("RGB", (_TILE * max(map(len, rows)), height * len(rows)))
  draw = ImageDraw.Draw(canvas)
  for r, row in enumerate(rows):
    for c, (title, tile) in enumerate(row):
      draw.text((c * _TILE + 2, r * height + 1), title, fill=(255, 255, 255))
      canvas.paste(tile, (c * _TILE, r * height + _HEADER))
  canvas.save(path)
  print(f"Wrote {path}: cluster probability maps, each from 0 (dark blue) "
        "to its maximum (yellow).")


def main(argv):
  del argv
  variants = [v for t in _TASKS for v in (t, f"perpixel_{t}")]
  for variant in quality_runs.selected(variants):
    quality_runs.train("configs/polymax_synthetic.py", variant,
                       polymax_synthetic.get_config(variant).total_steps)
  _table()
  _figure(os.path.join(quality_runs.WORKDIR.value, "cluster_maps.png"))


if __name__ == "__main__":
  app.run(main)
