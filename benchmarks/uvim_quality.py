r"""UViM's quality claims on synthetic_scenes/64x64: trains, evaluates, tabulates.

  python -m benchmarks.uvim_quality --workdir DIR --data_dir TFDS_DIR \
      [--runs panoptic_stage1,panoptic_stage2,...]

Runs `train.py` on each variant of `configs/uvim_synthetic.py` (stage-II runs
read their stage-I run's last checkpoint, so list stage I first), one after
the other, each in DIR/<variant>. A run whose last checkpoint exists is not
trained again, so the command can be repeated (or run in several processes on
disjoint `--runs`) and then prints the whole table from the workdirs'
TensorBoard logs: the validation metrics at the last step, the codebook usage
of stage I on validation, and each run's training wall time.

A second table says where panoptic stage I and the base model alone lose PQ:
the validation thing segments by area, with the fraction that the model
recognises (a PQ true positive: a predicted segment of its class with IoU >
0.5) and their mean best IoU, and the class accuracy on thing pixels.
"""
import functools

from absl import app
import jax
import numpy as np

from benchmarks import quality_runs
from configs import uvim_synthetic
from evaluators import panoptic as panoptic_eval

# Variant -> the stage-I variant whose checkpoint it needs.
_VARIANTS = {
    "panoptic_stage1": None,
    "panoptic_base_only": None,
    "panoptic_stage2": "panoptic_stage1",
    "panoptic_stage2_nonar": "panoptic_stage1",
    "panoptic_stage2_from_base": "panoptic_stage1",
    "panoptic_stage2_nonar_from_base": "panoptic_stage1",
    "depth_stage1": None,
    "depth_base_only": None,
    "depth_stage2": "depth_stage1",
    "depth_stage2_from_base": "depth_stage1",
    "colorization_stage1": None,
    "colorization_stage2": "colorization_stage1",
}
# Per task, the table's metrics: (TensorBoard tag, column name).
_METRICS = {
    "panoptic": [("val/pq", "PQ"), ("val/pq_things", "PQ things"),
                 ("val/pq_stuff", "PQ stuff")],
    "depth": [("val/rmse", "RMSE (m)"), ("val/abs_rel", "AbsRel"),
              ("val/delta1", "delta1")],
    "colorization": [("val/psnr", "PSNR (dB)"),
                     ("diversity/diversity", "diversity at T=1")],
}
_DESCRIPTIONS = {
    "stage1": "stage I: base model + oracle's code",
    "base_only": "base model alone (zero code)",
    "stage2": "UViM: LM's code (T=0) + base model",
    "stage2_nonar": "UViM, non-autoregressive LM",
    "stage2_from_base": "UViM, LM encoder started as the base model",
    "stage2_nonar_from_base": "UViM, non-autoregressive, so started",
}


def _total_steps(variant):
  return uvim_synthetic.get_config(variant).total_steps


def _train(variant):
  """Trains `variant` with train.py unless its last checkpoint exists."""
  stage1 = _VARIANTS[variant]
  needs = ({"oracle.checkpoint": (stage1, _total_steps(stage1))} if stage1
           else {})
  quality_runs.train("configs/uvim_synthetic.py", variant,
                     _total_steps(variant), needs=needs)


@functools.cache  # A stage-I run's codebook usage serves several rows.
def _scalars(variant):
  """{tag: value} at the run's last step, and the run's wall seconds."""
  return quality_runs.scalars(variant, _total_steps(variant))


def _table():
  print("| variant | what | metrics | stage-I codewords used (val) | steps | "
        "wall time (min) |")
  print("|---|---|---|---|---|---|")
  for variant in _VARIANTS:
    if not quality_runs.finished(variant, _total_steps(variant)):
      continue
    values, seconds = _scalars(variant)
    task, _, what = variant.partition("_")
    metrics = ", ".join(f"{name} {values[tag]:.3g}"
                        for tag, name in _METRICS[task] if tag in values)
    # The code's stage-I model; the base model alone has no code.
    stage1 = None if what == "base_only" else _VARIANTS[variant] or variant
    used = ("-" if stage1 is None else
            f"{_scalars(stage1)[0].get('codebook/used', float('nan')):.3f}")
    print(f"| `{variant}` | {_DESCRIPTIONS[what]} | {metrics} | {used} | "
          f"{_total_steps(variant)} | {seconds / 60:.1f} |")


# Upper ends of the thing-area bins, in pixels of the 64x64 images; the median
# thing covers about 110 pixels.
_AREA_BINS = (50, 100, 200, 400, np.inf)


def _thing_segments(variant):
  """The val thing segments' areas, matches and IoUs, and the class accuracy
  of the thing pixels, of `variant`'s last checkpoint."""
  config = uvim_synthetic.get_config(variant)
  trainer, variables = quality_runs.trained_model(config, variant)
  val = config.evals.val
  dataset = quality_runs.validation(config, val.batch_size)
  predict = jax.jit(trainer.predict_fns()["predict"])
  categories = panoptic_eval.named_categories(val.categories)
  things = np.array([i for i, c in categories.items() if c["isthing"]])
  segments, correct, total = [], 0, 0
  for batch in dataset.as_numpy_iterator():
    keep = batch["_mask"]
    preds = np.asarray(predict(variables, batch)["panoptic"])[keep]
    for gt, pred in zip(batch["labels"][keep], preds):
      s = panoptic_eval.ground_truth_segments(gt, pred, categories)
      segments.append({k: v[s["isthing"]] for k, v in s.items()})
      on_things = np.isin(gt[..., 0], things)
      correct += np.sum(pred[..., 0][on_things] == gt[..., 0][on_things])
      total += np.sum(on_things)
  return ({k: np.concatenate([s[k] for s in segments]) for k in segments[0]},
          correct / total)


def _thing_table():
  variants = [v for v in ("panoptic_stage1", "panoptic_base_only")
              if quality_runs.finished(v, _total_steps(v))]
  if not variants:
    return
  bins = list(zip((0,) + _AREA_BINS[:-1], _AREA_BINS))
  print("\n| thing segments (val) | " + " | ".join(
      f"area {lo}-{hi}" if np.isfinite(hi) else f"area >= {lo}"
      for lo, hi in bins) + " | class accuracy, thing pixels |")
  print("|---" * (len(bins) + 2) + "|")
  for variant in variants:
    segments, class_accuracy = _thing_segments(variant)
    cells = []
    for lo, hi in bins:
      inside = (segments["area"] >= lo) & (segments["area"] < hi)
      cells.append(f"{inside.sum()}: {segments['matched'][inside].mean():.0%}"
                   f" (IoU {segments['iou'][inside].mean():.2f})")
    print(f"| `{variant}` | " + " | ".join(cells) +
          f" | {class_accuracy:.0%} |")


def main(argv):
  del argv
  for variant in quality_runs.selected(_VARIANTS):
    _train(variant)
  _table()
  _thing_table()


if __name__ == "__main__":
  app.run(main)
