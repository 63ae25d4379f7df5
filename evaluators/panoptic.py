"""Panoptic quality (PQ, SQ, RQ; Kirillov et al., CVPR 2019), as COCO's.

Follows the rules of COCO's panopticapi (`panopticapi/evaluation.py`, which
big_vision's UViM evaluator calls) on two-channel maps: every pixel holds
(semantic id, instance id).

* Segments. A semantic id that is 0 or not in `categories` is void. A thing
  segment is one (semantic, instance) pair; a stuff segment is one whole
  semantic id, whatever the instance ids of its pixels (panopticapi's
  two-channel converter gives all pixels of a stuff class one segment id).
* Matching. A predicted and a ground-truth segment of the same class match
  iff IoU > 0.5, where the union leaves out the predicted pixels that are
  void in the ground truth. Segments are disjoint, so a segment has at most
  one match. Each match is a TP and adds its IoU to the class's sum.
* Unmatched ground-truth segments are FNs, except crowd regions.
* Unmatched predicted segments are FPs, except those of which more than half
  of the pixels are ground-truth void or crowd of the same class.
* Per class c with TP + FP + FN > 0: PQ_c = sum IoU / (TP + FP/2 + FN/2),
  SQ_c = sum IoU / TP (0 without TP), RQ_c = TP / (TP + FP/2 + FN/2). PQ, SQ,
  RQ are the means over those classes: all of them, the things, the stuff.

Counts are summed over all images of the split before the per-class ratios.
PQ, SQ and RQ are percentages (0-100), like the other evaluators' metrics.

  config.evals.pq = dict(
      type="panoptic", data=..., batch_size=64,
      pp="decode|coco_panoptic|concat(['semantics', 'instances'], 'labels')|"
         "value_range(-1, 1)|keep('image', 'labels')",
      categories="synthetic_scenes")

On COCO, also keep the op's `crowd` map (resized like the labels) and set
crowd_key="crowd", as configs/uvim_paper.py does, for panopticapi's numbers.
"""
import json

import numpy as np

from evaluators import common
from uvimx.datasets import synthetic_scenes

# synthetic_scenes classes as the `coco_panoptic` pp op labels them: class
# label + 1, so that 0 is void; things first.
SYNTHETIC_SCENES_CATEGORIES = {
    i + 1: {"name": name, "isthing": i < synthetic_scenes.NUM_THINGS}
    for i, name in enumerate(synthetic_scenes.CLASS_NAMES)}



def named_categories(categories):
  """Resolves the `categories` an eval config can give.

  Args:
    categories: a dict {semantic id: {"isthing": ..., "name": ...}};
      "synthetic_scenes"; or the path of a COCO panoptic categories JSON (a
      list of {"id", "name", "isthing"}, e.g. panopticapi's
      panoptic_coco_categories.json), whose i-th entry gets semantic id i + 1
      as the `coco_panoptic` pp op numbers TFDS coco/2017_panoptic's labels.

  Returns:
    The dict.
  """
  if not isinstance(categories, str):
    return {int(k): v for k, v in categories.items()}
  if categories == "synthetic_scenes":
    return SYNTHETIC_SCENES_CATEGORIES
  try:
    with open(categories) as f:
      entries = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"Panoptic categories {categories!r}: give \"synthetic_scenes\", a "
        "dict, or the path of a COCO panoptic categories JSON.") from None
  return {i + 1: {"name": c["name"], "isthing": bool(c["isthing"])}
          for i, c in enumerate(entries)}


# Columns of the per-class statistics.
IOU, TP, FP, FN = range(4)


def _check_categories(categories):
  """Sorted ids and their isthing flags, plus False for void's index -1."""
  if not categories:
    raise ValueError("No categories: pass {semantic id: {'isthing': ...}}.")
  ids = np.array(sorted(categories), np.int64)
  if ids[0] <= 0:
    raise ValueError(f"Category id {ids[0]}: ids must be positive, 0 is "
                     "void.")
  isthing = np.array([bool(categories[int(i)]["isthing"])
                      for i in ids] + [False])
  return ids, isthing


def _class_index(semantics, ids):
  """Index into the sorted category `ids` of every pixel, -1 for void."""
  pos = np.minimum(np.searchsorted(ids, semantics), len(ids) - 1)
  return np.where(ids[pos] == semantics, pos, -1)


def _segments(panoptic, ids, isthing):
  """Segment index per pixel (-1: void) and each segment's class index."""
  cls = _class_index(panoptic[..., 0], ids)
  # Stuff (and void) pixels get instance 0: one segment per stuff class.
  instance = np.where(isthing[cls], panoptic[..., 1], 0).astype(np.int64)
  # One int64 key per (class, instance) pair: a 1-D unique is fast.
  span = instance.max() - instance.min() + 1
  keys, segment = np.unique((cls + 1) * span + instance - instance.min(),
                            return_inverse=True)
  # Void (class -1) sorts first: shift it to -1, the segments to 0, 1, ...
  has_void = int(keys[0] < span)
  return (segment.reshape(cls.shape) - has_void,
          keys[has_void:] // span - 1)


def _match(gt, pred, categories, crowd):
  """The segments of both maps and which match: the core of `pq_stats`.

  Returns:
    A dict of numpy arrays: "ids", "isthing" (of `_check_categories`);
    per ground-truth segment "gt_cls" (class index), "gt_area" and
    "is_crowd"; per predicted segment "pred_cls" and "ignored" (not an FP
    however unmatched); "iou" and "match" (num_gt, num_pred).
  """
  gt, pred = np.asarray(gt), np.asarray(pred)
  if gt.shape != pred.shape or gt.ndim != 3 or gt.shape[-1] != 2:
    raise ValueError(
        f"Panoptic labels {gt.shape} and predictions {pred.shape} must be "
        "(H, W, 2) maps (semantic id, instance id) of the same size; "
        "predictions of another size must be resized to the label size by "
        "the task's predict fn.")
  ids, isthing = _check_categories(categories)
  gt_seg, gt_cls = _segments(gt, ids, isthing)
  pred_seg, pred_cls = _segments(pred, ids, isthing)
  num_gt, num_pred = len(gt_cls), len(pred_cls)
  # Void as the last segment of each.
  gt_seg = np.where(gt_seg < 0, num_gt, gt_seg)
  pred_seg = np.where(pred_seg < 0, num_pred, pred_seg)
  # overlap[i, j]: pixels of gt segment i in predicted segment j.
  overlap = np.bincount(
      (gt_seg * (num_pred + 1) + pred_seg).ravel(),
      minlength=(num_gt + 1) * (num_pred + 1)
  ).reshape(num_gt + 1, num_pred + 1).astype(np.float64)
  gt_area = overlap[:-1].sum(axis=1)
  pred_area = overlap[:, :-1].sum(axis=0)
  pred_void = overlap[-1, :-1]
  overlap = overlap[:-1, :-1]

  is_crowd = np.zeros(num_gt, bool)
  if crowd is not None:
    crowd = np.asarray(crowd, bool)
    if crowd.shape != gt.shape[:2]:
      raise ValueError(f"The crowd mask {crowd.shape} must be (H, W) like "
                       f"the labels {gt.shape}.")
    crowd_area = np.bincount(gt_seg[crowd], minlength=num_gt + 1)
    is_crowd = crowd_area[:-1] > 0
    if crowd_area[-1] or (crowd_area[:-1] != gt_area * is_crowd).any():
      raise ValueError("The crowd mask must cover whole ground-truth segments "
                       "and no void pixel.")

  same_class = gt_cls[:, None] == pred_cls[None, :]
  union = gt_area[:, None] + pred_area[None, :] - overlap - pred_void[None]
  iou = overlap / np.maximum(union, 1) * same_class
  match = ~is_crowd[:, None] & (iou > 0.5)
  # Predictions mostly on void or on crowd regions of their class are no FP.
  crowd_overlap = (overlap * (same_class & is_crowd[:, None])).sum(axis=0)
  ignored = (pred_void + crowd_overlap) / pred_area > 0.5
  return dict(ids=ids, isthing=isthing, gt_cls=gt_cls, gt_area=gt_area,
              is_crowd=is_crowd, pred_cls=pred_cls, ignored=ignored, iou=iou,
              match=match)


def pq_stats(gt, pred, categories, crowd=None):
  """Per-class IoU sum, TP, FP and FN of one image.

  Args:
    gt: int (H, W, 2) ground truth, (semantic id, instance id) per pixel.
    pred: int (H, W, 2) prediction of the same size.
    categories: {semantic id (> 0): {"isthing": bool or 0/1, ...}}; other
      semantic ids are void.
    crowd: optional bool (H, W): the pixels of ground-truth crowd regions
      (COCO's iscrowd=1 segments), each region a whole gt segment. If an
      image has several crowd segments of one class, panopticapi ignores FPs
      by their overlap with only one of them (the last listed); here with
      all of them.

  Returns:
    float64 (K, 4), K = len(categories) in increasing id order; the columns
    are `IOU` (sum over TPs), `TP`, `FP` and `FN`.
  """
  m = _match(gt, pred, categories, crowd)
  match = m["match"]
  stats = np.zeros((len(m["ids"]), 4))
  np.add.at(stats[:, IOU], m["gt_cls"], (m["iou"] * match).sum(axis=1))
  np.add.at(stats[:, TP], m["gt_cls"], match.sum(axis=1))
  np.add.at(stats[:, FN], m["gt_cls"],
            (~match.any(axis=1) & ~m["is_crowd"]) * 1.0)
  np.add.at(stats[:, FP], m["pred_cls"],
            (~match.any(axis=0) & ~m["ignored"]) * 1.0)
  return stats


def ground_truth_segments(gt, pred, categories):
  """Per ground-truth segment of one image: how the prediction got it.

  For error analysis (e.g. which thing sizes a model misses): PQ's matching
  rules, segment by segment.

  Args:
    gt: int (H, W, 2) ground truth, as `pq_stats` takes it.
    pred: int (H, W, 2) prediction.
    categories: as `pq_stats` takes them.

  Returns:
    A dict of (S,) arrays over the S ground-truth segments: "class_id" (the
    semantic id), "isthing", "area" (pixels), "iou" (the largest IoU with a
    predicted segment of its class, 0 if none) and "matched" (that IoU is
    above 0.5: a true positive of PQ).
  """
  m = _match(gt, pred, categories, None)
  best = m["iou"].max(axis=1, initial=0.0)
  return {"class_id": m["ids"][m["gt_cls"]],
          "isthing": m["isthing"][m["gt_cls"]], "area": m["gt_area"],
          "iou": best, "matched": best > 0.5}


def pq_metrics(stats, categories):
  """PQ, SQ, RQ (percent) of per-class statistics, as panopticapi averages.

  Classes without TP, FP and FN have no PQ: NaN in `pq/<class>` and left
  out of the means. A mean over no class (e.g. no stuff anywhere) is NaN.

  Args:
    stats: (K, 4) as `pq_stats` returns, summed over images.
    categories: the `categories` of `pq_stats`; a category's optional
      "name" names its `pq/<class>` metric (default: the id).

  Returns:
    {"pq", "sq", "rq", "n"} over all classes, the same with suffixes
    "_things" and "_stuff", and "pq/<class>" for each class. "n*" count the
    classes in each mean.
  """
  ids, isthing = _check_categories(categories)
  iou, tp, fp, fn = np.asarray(stats, np.float64).T
  if len(tp) != len(ids):
    raise ValueError(f"Statistics of {len(tp)} classes for {len(ids)} "
                     "categories.")
  seen = tp + fp + fn > 0
  denominator = np.where(seen, tp + 0.5 * fp + 0.5 * fn, 1)
  per_class = {
      "pq": 100 * iou / denominator,
      "sq": 100 * np.where(tp > 0, iou / np.maximum(tp, 1), 0),
      "rq": 100 * tp / denominator,
  }
  metrics = {}
  for suffix, group in (("", seen), ("_things", seen & isthing[:-1]),
                        ("_stuff", seen & ~isthing[:-1])):
    for name, values in per_class.items():
      metrics[name + suffix] = (float(values[group].mean()) if group.any()
                                else float("nan"))
    metrics["n" + suffix] = int(group.sum())
  for i, class_id in enumerate(ids):
    name = categories[int(class_id)].get("name", int(class_id))
    metrics[f"pq/{name}"] = float(per_class["pq"][i]) if seen[i] else np.nan
  return metrics


def panoptic_quality(gt, pred, categories, crowd=None):
  """PQ, SQ and RQ of predictions for a set of images (see `pq_metrics`).

  Args:
    gt: a list of int (H, W, 2) ground truths, (semantic id, instance id).
    pred: a list of int (H, W, 2) predictions, the same sizes.
    categories: {semantic id: {"isthing": bool, "name": optional}}; semantic
      id 0 and ids not listed are void.
    crowd: optional list of bool (H, W) crowd masks (see `pq_stats`).

  Returns:
    The dict of `pq_metrics`.
  """
  if not gt or len(gt) != len(pred):
    raise ValueError(f"{len(gt)} ground truths for {len(pred)} predictions; "
                     "give the same positive number.")
  crowd = [None] * len(gt) if crowd is None else crowd
  stats = sum(pq_stats(g, p, categories, c)
              for g, p, c in zip(gt, pred, crowd, strict=True))
  return pq_metrics(stats, categories)


class Evaluator:
  """PQ, SQ and RQ of a predict fn over a whole split."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size, categories,
               pred_key="panoptic", label_key="labels", crowd_key=None):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> outputs; `outputs[pred_key]` is the
        int (B, H, W, 2) (semantic id, instance id) map, at the label size.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string giving `label_key`, the int (H, W, 2) map (semantic id,
        instance id), e.g. the concatenation of the `coco_panoptic` op's
        `semantics` (class label + 1, 0 void) and `instances` (which numbers
        stuff segments too: no matter, a stuff segment is a whole class).
      batch_size: global eval batch size.
      categories: {semantic id: {"isthing": bool, "name": optional}}, or a
        name or file for `named_categories` (eval configs are ConfigDicts,
        whose keys are strings), e.g. "synthetic_scenes".
      pred_key: the panoptic key of the predict fn's outputs.
      label_key: the panoptic key of the batch.
      crowd_key: optional key of the batch's crowd maps, int or bool
        (B, H, W[, 1]), nonzero on ground-truth crowd segments (the
        `coco_panoptic` op's `crowd`, resized and kept like the labels).
        With it, crowd regions count as panopticapi counts them (see
        `pq_stats`), as COCO's PQ needs; without it they are ordinary
        segments (a missed one is a FN, an unmatched prediction on one a
        FP).
    """
    categories = named_categories(categories)
    _check_categories(categories)
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)
    self.categories = categories
    self.pred_key = pred_key
    self.label_key = label_key
    self.crowd_key = crowd_key

  def run(self, variables):
    """Yields the (name, value) pairs of `pq_metrics`."""
    stats = np.zeros((len(self.categories), 4))
    for batch, outputs in self.predictions(variables):
      mask = batch["_mask"]
      gt = common.get(batch, self.label_key, "eval batch (label_key)")[mask]
      pred = common.get(outputs, self.pred_key,
                        "predict fn outputs (pred_key)")[mask]
      crowd = [None] * len(gt)
      if self.crowd_key is not None:
        crowd = common.squeeze_map(common.get(
            batch, self.crowd_key, "eval batch (crowd_key)"))[mask] != 0
      for g, p, c in zip(gt, pred, crowd, strict=True):
        stats += pq_stats(g, p, self.categories, c)
    yield from pq_metrics(common.process_sum(stats), self.categories).items()
