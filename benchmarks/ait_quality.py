r"""AiT's quality claims on synthetic_scenes/64x64: trains, evaluates, tabulates.

  python -m benchmarks.ait_quality --workdir DIR --data_dir TFDS_DIR \
      [--runs depth_tokenizer,mask_tokenizer,depth_lm,...]

Runs `train.py` on the variants of `configs/ait_synthetic.py`, one after the
other, each in DIR/<variant>: first the tokenizers, then the LMs, which read
the tokenizers' last checkpoints. A run whose last checkpoint exists is not
trained again (see `benchmarks/quality_runs.py`). Then prints the tables
from the TensorBoard logs:

  tokenizers  depth reconstruction RMSE with and without mask augmentation;
              the mask tokenizer's IoU.
  depth       RMSE with hard tokens (`depth_hard`) and with soft tokens in
              the LM and the detokenizer (`depth`), of the AR LM and AiT-P,
              each trained without and with the auxiliary loss, and of the
              joint LM.
  instances   box and mask AP of the instance LM, alone and in the joint LM.

Every LM evaluates its soft and hard predict fns on the same checkpoint, so
those columns differ in inference only. The instances table starts with the
ceiling of the instance pipeline: the ground-truth token sequences of the
first `--ceiling_images` validation images (masks through the trained mask
tokenizer, boxes quantised) decoded as if an LM had predicted them with
certainty, and scored by the same evaluator.
"""
from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import quality_runs
from configs import ait_synthetic
from evaluators import instances as instances_eval
from uvimx import input_pipeline
from uvimx import trainers
from uvimx.trainers import ait

_CEILING_IMAGES = flags.DEFINE_integer(
    "ceiling_images", 200, "Validation images of the instance ceiling row.")

# Variant -> the tokenizer runs whose checkpoints it needs, by task.
_VARIANTS = {
    "depth_tokenizer": {},
    "depth_tokenizer_nomask": {},
    "mask_tokenizer": {},
    "depth_lm": {"depth": "depth_tokenizer"},
    "depth_lm_aux": {"depth": "depth_tokenizer"},
    "depth_lm_parallel": {"depth": "depth_tokenizer"},
    "depth_lm_parallel_aux": {"depth": "depth_tokenizer"},
    "instances_lm": {"instances": "mask_tokenizer"},
    "joint_lm": {"depth": "depth_tokenizer", "instances": "mask_tokenizer"},
}
_DESCRIPTIONS = {
    "depth_lm": "AR LM",
    "depth_lm_aux": "AR LM + auxiliary loss",
    "depth_lm_parallel": "AiT-P (parallel)",
    "depth_lm_parallel_aux": "AiT-P + auxiliary loss",
    "instances_lm": "instances alone",
    "joint_lm": "joint LM (depth + instances)",
}


def _total_steps(variant):
  return ait_synthetic.get_config(variant).total_steps


def _train(variant):
  needs = {f"tasks.{task}.tokenizer.checkpoint": (run, _total_steps(run))
           for task, run in _VARIANTS[variant].items()}
  quality_runs.train("configs/ait_synthetic.py", variant,
                     _total_steps(variant), needs=needs)


def _results(variant):
  """{tag: value} at the last step and wall minutes, or None if unfinished."""
  if not quality_runs.finished(variant, _total_steps(variant)):
    return None
  values, seconds = quality_runs.scalars(variant, _total_steps(variant))
  return values, seconds / 60


def _instance_ceiling():
  """COCO box and mask AP of ground-truth sequences, decoded (see above)."""
  config = ait_synthetic.get_config("instances_lm")
  tokenizer_run = _VARIANTS["instances_lm"]["instances"]
  config.tasks.instances.tokenizer.checkpoint = quality_runs.last_checkpoint(
      tokenizer_run, _total_steps(tokenizer_run))
  trainer = trainers.get_trainer(config)
  task = trainer.tasks["instances"]
  data = dict(config.evals.instances.data, data_dir=quality_runs.DATA_DIR.value)
  dataset, _ = input_pipeline.evaluation(data, config.evals.instances.pp,
                                         _CEILING_IMAGES.value)
  batch = next(dataset.as_numpy_iterator())
  batch = {k: v[batch["_mask"]] for k, v in batch.items() if k != "_mask"}
  state = task.tokenizer.load(jax.eval_shape(
      lambda: trainer.init(jax.random.key(0), batch))["state"]["instances"])

  @jax.jit
  def decode(state, batch):
    targets = task.sequences(state, batch, jax.random.key(0))["targets"]
    logits = 1e4 * jax.nn.one_hot(targets, trainer.model.vocab_size)
    return task.predict(state, ait.Sampled(targets, logits), batch,
                        soft_decode=False, tau=1.0)

  out = jax.tree.map(np.asarray, decode(state, batch))
  ids = np.arange(len(batch["image"])) + 1
  gt = instances_eval.coco_ground_truth(
      batch["instances"][..., 0], batch["semantics"][..., 0], 4, ids)
  detections = instances_eval.coco_detections(
      out["boxes"], out["scores"], out["classes"], out["masks"], ids)
  return {f"{kind}_{metric}": value
          for kind, iou_type in (("box", "bbox"), ("mask", "segm"))
          for metric, value in instances_eval.coco_ap(
              gt, detections, iou_type).items()}


def _tables():
  print("| tokenizer | metric | value | wall time (min) |")
  print("|---|---|---|---|")
  for variant, tag, metric in (
      ("depth_tokenizer", "val/rmse", "val RMSE (m), mask ratio 0.5"),
      ("depth_tokenizer_nomask", "val/rmse", "val RMSE (m), no masking"),
      ("mask_tokenizer", "val/mask_iou", "val mask IoU")):
    if results := _results(variant):
      print(f"| {variant} | {metric} | {results[0][tag]:.4f} | "
            f"{results[1]:.1f} |")

  print("\n| depth LM | RMSE hard (m) | RMSE soft (m) | AbsRel soft | "
        "delta1 soft | steps | wall time (min) |")
  print("|---|---|---|---|---|---|---|")
  for variant in ("depth_lm", "depth_lm_aux", "depth_lm_parallel",
                  "depth_lm_parallel_aux", "joint_lm"):
    if results := _results(variant):
      values, minutes = results
      print(f"| {_DESCRIPTIONS[variant]} | {values['depth_hard/rmse']:.4f} | "
            f"{values['depth/rmse']:.4f} | {values['depth/abs_rel']:.4f} | "
            f"{values['depth/delta1']:.4f} | {_total_steps(variant)} | "
            f"{minutes:.1f} |")

  print("\n| instances LM | box AP | box AP50 | mask AP | mask AP50 | steps | "
        "wall time (min) |")
  print("|---|---|---|---|---|---|---|")
  if quality_runs.finished(tokenizer := _VARIANTS["instances_lm"]["instances"],
                           _total_steps(tokenizer)):
    ceiling = _instance_ceiling()
    print(f"| ceiling: ground-truth tokens ({_CEILING_IMAGES.value} images) | "
          + " | ".join(f"{ceiling[m]:.2f}" for m in (
              "box_AP", "box_AP50", "mask_AP", "mask_AP50")) + " | | |")
  for variant in ("instances_lm", "joint_lm"):
    if results := _results(variant):
      values, minutes = results
      print(f"| {_DESCRIPTIONS[variant]} | "
            + " | ".join(f"{values[f'instances/{m}']:.2f}" for m in (
                "box_AP", "box_AP50", "mask_AP", "mask_AP50"))
            + f" | {_total_steps(variant)} | {minutes:.1f} |")


def main(argv):
  del argv
  for variant in quality_runs.selected(_VARIANTS):
    _train(variant)
  _tables()


if __name__ == "__main__":
  app.run(main)
