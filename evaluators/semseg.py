"""Semantic segmentation: mIoU and pixel accuracy from one confusion matrix.

The confusion matrix is accumulated over all labelled pixels of the split (as
in the Cityscapes / ADE20k / COCO-stuff protocols, pixels are pooled over
images), summed over processes, and the metrics are read off it at the end.
All metrics are percentages (0-100).

  config.evals.val = dict(type="semseg", data=..., pp=..., batch_size=64,
                          num_classes=9, ignore_label=255)
"""
import numpy as np

from evaluators import common


def confusion_matrix(gt, pred, num_classes, ignore_label=255):
  """Counts the (label, prediction) pairs of all pixels not labelled ignored.

  Args:
    gt: integer label map(s), any shape, e.g. (B, H, W).
    pred: integer predictions of the same shape.
    num_classes: labels and predictions must be in [0, num_classes), except
      labels equal to `ignore_label`, whose pixels are not counted (whatever
      their prediction).
    ignore_label: the label of pixels to leave out.

  Returns:
    int64 (num_classes, num_classes): rows are labels, columns predictions.
  """
  gt, pred = np.asarray(gt), np.asarray(pred)
  if gt.shape != pred.shape:
    raise ValueError(
        f"Segmentation labels {gt.shape} and predictions {pred.shape} differ "
        "in shape; predictions of another size must be resized to the label "
        "size by the task's predict fn.")
  keep = gt != ignore_label
  gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
  for what, x in (("label", gt), ("prediction", pred)):
    if x.size and (x.min() < 0 or x.max() >= num_classes):
      raise ValueError(
          f"A {what} is outside [0, num_classes={num_classes}) (values "
          f"{x.min()}..{x.max()}, ignore_label={ignore_label}); check "
          "num_classes and ignore_label.")
  counts = np.bincount(gt * num_classes + pred, minlength=num_classes ** 2)
  return counts.reshape(num_classes, num_classes)


def semseg_metrics(confusion, class_names=None):
  """mIoU, pixel accuracy and per-class IoU (percent) of a confusion matrix.

  IoU_c = TP_c / (TP_c + FP_c + FN_c). A class with a zero union (neither
  labelled nor predicted anywhere) has an undefined IoU: it is NaN in
  `iou/<class>` and left out of `miou`, the mean over all other classes
  (including classes that are only predicted, whose IoU is 0).

  Args:
    confusion: (K, K) counts, rows labels, columns predictions.
    class_names: optional K names for the `iou/<name>` keys; default: the
      class indices.

  Returns:
    {"miou", "pixel_accuracy", "iou/<class>" for each class: float}.
  """
  confusion = np.asarray(confusion, np.float64)
  num_classes = confusion.shape[0]
  names = range(num_classes) if class_names is None else class_names
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class_names for {num_classes} classes.")
  if not confusion.sum():
    raise ValueError("No labelled pixel: every label is the ignore_label.")
  tp = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
  defined = union > 0
  iou = 100 * np.where(defined, tp / np.maximum(union, 1), np.nan)
  return {
      "miou": float(iou[defined].mean()),
      "pixel_accuracy": float(100 * tp.sum() / confusion.sum()),
      **{f"iou/{name}": float(v) for name, v in zip(names, iou)},
  }


class Evaluator:
  """mIoU and pixel accuracy of a predict fn over a whole split."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size, num_classes,
               ignore_label=255, pred_key="semantics", label_key="semantics",
               class_names=None):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> outputs; `outputs[pred_key]` is the
        (B, H, W) or (B, H, W, 1) integer class map, at the label size.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string giving `label_key`, an (H, W, 1) or (H, W) int map.
      batch_size: global eval batch size.
      num_classes: number of classes.
      ignore_label: label of pixels that are not evaluated.
      pred_key: the class-map key of the predict fn's outputs.
      label_key: the class-map key of the batch.
      class_names: optional names for the per-class `iou/<name>` metrics.
    """
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f"{len(class_names)} class_names for num_classes="
                       f"{num_classes}.")
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.pred_key = pred_key
    self.label_key = label_key
    self.class_names = class_names

  def run(self, variables):
    """Yields ("miou", .), ("pixel_accuracy", .) and ("iou/<class>", .)."""
    confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
    for batch, outputs in self.predictions(variables):
      gt = common.get(batch, self.label_key, "eval batch (label_key)")
      pred = common.get(outputs, self.pred_key, "predict fn outputs (pred_key)")
      real = batch["_mask"]
      confusion += confusion_matrix(
          common.squeeze_map(gt)[real], common.squeeze_map(pred)[real],
          self.num_classes, self.ignore_label)
    yield from semseg_metrics(common.process_sum(confusion),
                              self.class_names).items()
