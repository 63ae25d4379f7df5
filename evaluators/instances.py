"""COCO box and mask AP (pycocotools' COCOeval) for instance segmentation.

For AiT-style models that predict, per image, N scored instances, each a
class, a box and a mask. Ground truth comes from per-pixel maps: `instances`
(0 = no thing, 1..N thing ids) and `semantics` (class index per pixel; classes
below `num_things` are things, as in synthetic_scenes).

Conventions:
* Category ids are class index + 1 (COCO's ids start at 1; the `panoptic`
  evaluator numbers synthetic_scenes classes the same way), for ground truth
  and detections alike.
* Predicted boxes are [ymin, xmin, ymax, xmax] in continuous pixel
  coordinates, where pixel (i, j) covers [i, i + 1) x [j, j + 1): the box of
  a mask on rows r0..r1 and columns c0..c1 is [r0, c0, r1 + 1, c1 + 1]
  (`mask_box`). COCO's [x, y, w, h] is then [xmin, ymin, xmax - xmin,
  ymax - ymin], and COCOeval's box IoU (no +1) equals the pixel-count IoU of
  such boxes.
* Masks are RLE (`pycocotools.mask.encode`) with str counts, so the dicts
  are JSON-serialisable as COCO's files are.

`coco_ap` takes COCO-format input directly: a ground-truth dataset dict (as
in an instances_*.json file) and a results list (as submitted to COCO).

  config.evals.ap = dict(
      type="instances", data=..., batch_size=64,
      pp="decode|keep('image', 'instances', 'semantics')")
"""
import contextlib
import io

import jax
import numpy as np
from pycocotools import mask as mask_api
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evaluators import common
from uvimx.datasets import synthetic_scenes

# The 12 numbers of COCOeval.summarize(), in its order.
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
         "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Those the Evaluator yields, as box_<stat> and mask_<stat>: on 64x64 images
# COCO's small/medium/large ranges say little (see `coco_ap`).
METRICS = ("AP", "AP50", "AP75", "AR100")
# The results key that `coco_ap` keeps for each iou_type.
_SHAPE_KEY = {"bbox": "bbox", "segm": "segmentation"}


def mask_box(mask):
  """[ymin, xmin, ymax, xmax] of a non-empty bool (H, W) mask's pixels."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64)


def _xywh(box):
  ymin, xmin, ymax, xmax = (float(v) for v in box)
  return [xmin, ymin, xmax - xmin, ymax - ymin]


def _rle(mask):
  rle = mask_api.encode(np.asfortranarray(mask, np.uint8))
  return {"size": [int(s) for s in rle["size"]],
          "counts": rle["counts"].decode("ascii")}


def _categories(num_things):
  return [{"id": c + 1, "name": f"class_{c}"} for c in range(num_things)]


def coco_ground_truth(instances, semantics, num_things, image_ids):
  """A COCO-format ground-truth dataset dict from per-pixel maps.

  Every instance id > 0 of an image is one annotation (iscrowd 0) whose
  class is that of its pixels; `area` is its pixel count and `bbox` the
  extent of its pixels (see the module docstring).

  Args:
    instances: int (B, H, W), 0 for no thing, 1..N for the thing instances.
    semantics: int (B, H, W) class index per pixel.
    num_things: classes 0..num_things - 1 are things (category ids 1..).
    image_ids: B distinct ints, the images' COCO ids.

  Returns:
    {"images", "annotations", "categories"}; annotation ids are 1, 2, ...
    (COCOeval takes a match with id 0 for no match).
  """
  instances, semantics = np.asarray(instances), np.asarray(semantics)
  if (instances.ndim != 3 or instances.shape != semantics.shape or
      len(image_ids) != len(instances)):
    raise ValueError(
        f"Instance maps {instances.shape} and semantic maps "
        f"{semantics.shape} must both be (B, H, W), with B = "
        f"{len(image_ids)} image ids.")
  images, annotations = [], []
  for image_id, inst, sem in zip(image_ids, instances, semantics):
    images.append({"id": int(image_id), "height": inst.shape[0],
                   "width": inst.shape[1]})
    for i in np.unique(inst[inst > 0]):
      mask = inst == i
      classes = np.unique(sem[mask])
      if len(classes) != 1 or not 0 <= classes[0] < num_things:
        raise ValueError(
            f"Instance {i} of image {image_id} has pixels of classes "
            f"{classes.tolist()}; an instance must be of one thing class "
            f"(< num_things = {num_things}).")
      annotations.append({
          "id": len(annotations) + 1, "image_id": int(image_id),
          "category_id": int(classes[0]) + 1, "bbox": _xywh(mask_box(mask)),
          "area": int(mask.sum()), "iscrowd": 0, "segmentation": _rle(mask)})
  return {"images": images, "annotations": annotations,
          "categories": _categories(num_things)}


def coco_detections(boxes, scores, classes, masks, image_ids, *,
                    max_detections=100):
  """COCO-format results of padded per-image predictions.

  Args:
    boxes: (B, N, 4) [ymin, xmin, ymax, xmax] in pixels (module docstring).
    scores: (B, N); a slot with score <= 0 holds no detection.
    classes: int (B, N) class indices (category id = class + 1). Classes
      that are no ground-truth category are left out by COCOeval.
    masks: bool (B, N, H, W).
    image_ids: the B images' COCO ids.
    max_detections: per image, only the highest-scored ones are kept: COCO
      allows 100 per image (COCOeval alone would cap them per image and
      class).

  Returns:
    A list of {"image_id", "category_id", "bbox" ([x, y, w, h]), "score",
    "segmentation" (RLE)}.
  """
  boxes, scores = np.asarray(boxes), np.asarray(scores)
  classes, masks = np.asarray(classes), np.asarray(masks)
  batch = (len(image_ids), *scores.shape[1:])
  if (scores.shape != batch or boxes.shape != (*batch, 4) or
      classes.shape != batch or masks.shape[:2] != batch or masks.ndim != 4):
    raise ValueError(
        f"Predictions for {len(image_ids)} images need boxes (B, N, 4), "
        f"scores and classes (B, N), masks (B, N, H, W); got boxes "
        f"{boxes.shape}, scores {scores.shape}, classes {classes.shape}, "
        f"masks {masks.shape}.")
  results = []
  for image_id, box, score, cls, mask in zip(
      image_ids, boxes, scores, classes, masks):
    kept = np.flatnonzero(score > 0)
    kept = kept[np.argsort(-score[kept], kind="stable")][:max_detections]
    results += [{"image_id": int(image_id), "category_id": int(cls[k]) + 1,
                 "bbox": _xywh(box[k]), "score": float(score[k]),
                 "segmentation": _rle(mask[k])} for k in kept]
  return results


def coco_ap(ground_truth, detections, iou_type):
  """The 12 COCOeval summary numbers (`STATS`), in percent.

  pycocotools' prints are swallowed. Neither argument is modified.

  Area ranges are COCO's defaults (small < 32^2 < medium < 96^2 < large
  pixels), meant for COCO-size images: on 64x64 synthetic_scenes images
  there is no large object and most are small, so APs/APm/APl mostly say
  how big objects are. A number without any ground truth to average over
  (e.g. APl there) is NaN, COCOeval's -1.

  Args:
    ground_truth: a COCO-format dataset dict ("images", "annotations" with
      "iscrowd", "area", "bbox" or "segmentation", "categories"), e.g. from
      `coco_ground_truth`.
    detections: a COCO results list, e.g. from `coco_detections`; only the
      "bbox" (iou_type "bbox") or the "segmentation" ("segm") of each is
      read. For "segm" the detection area is the mask's, as in detectron2.
      No detections at all give AP 0.
    iou_type: "bbox" or "segm".

  Returns:
    {name: float} for every name in `STATS`.
  """
  if iou_type not in _SHAPE_KEY:
    raise ValueError(f"iou_type {iou_type!r}: give 'bbox' or 'segm'.")
  # Copies: pycocotools writes into annotations ("ignore", "area", "id").
  results = [{k: d[k] for k in ("image_id", "category_id", "score",
                                _SHAPE_KEY[iou_type])} for d in detections]
  with contextlib.redirect_stdout(io.StringIO()):
    gt = _coco(ground_truth["images"], ground_truth["categories"],
               [dict(a) for a in ground_truth["annotations"]])
    # loadRes cannot take an empty list (it looks at results[0]).
    dt = (gt.loadRes(results) if results else
          _coco(gt.dataset["images"], gt.dataset["categories"], []))
    evaluation = COCOeval(gt, dt, iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  return {name: 100 * float(v) if v >= 0 else float("nan")
          for name, v in zip(STATS, evaluation.stats)}


def _coco(images, categories, annotations):
  """A pycocotools COCO object of a dataset held in memory."""
  coco = COCO()
  coco.dataset = {"images": images, "categories": categories,
                  "annotations": annotations}
  coco.createIndex()
  return coco


class Evaluator:
  """COCO box and mask AP of a predict fn over a whole split.

  Only this process's examples are evaluated (detections are not gathered
  across processes), so it refuses to run with more than one process.
  """

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size,
               num_things=synthetic_scenes.NUM_THINGS,
               instances_key="instances", semantics_key="semantics",
               max_detections=100):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> outputs with "boxes" (B, N, 4),
        "scores" (B, N), "classes" (B, N) and "masks" (B, N, H, W) at the
        label size, as `coco_detections` takes them.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string giving `instances_key` and `semantics_key`, (H, W) or
        (H, W, 1) maps as `coco_ground_truth` takes them.
      batch_size: global eval batch size.
      num_things: classes 0..num_things - 1 are things.
      instances_key: the instance-id map's key in the batch.
      semantics_key: the class map's key in the batch.
      max_detections: see `coco_detections`.
    """
    if jax.process_count() > 1:
      raise NotImplementedError(
          "The instances evaluator sees only this process's examples; with "
          f"{jax.process_count()} processes its AP would be of a part of the "
          "split. Evaluate with one process.")
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)
    self.num_things = num_things
    self.instances_key = instances_key
    self.semantics_key = semantics_key
    self.max_detections = max_detections

  def run(self, variables):
    """Yields box_<stat> and mask_<stat> for every stat in `METRICS`."""
    images, annotations, detections = [], [], []
    for batch, outputs in self.predictions(variables):
      keep = batch["_mask"]
      instances = common.squeeze_map(common.get(
          batch, self.instances_key, "eval batch (instances_key)"))[keep]
      semantics = common.squeeze_map(common.get(
          batch, self.semantics_key, "eval batch (semantics_key)"))[keep]
      pred = {k: common.get(outputs, k, "predict fn outputs")[keep]
              for k in ("boxes", "scores", "classes", "masks")}
      if pred["masks"].shape[2:] != instances.shape[1:]:
        raise ValueError(
            f"Predicted masks {pred['masks'].shape[2:]} and labels "
            f"{instances.shape[1:]} differ in size; masks of another size "
            "must be resized to the label size by the task's predict fn.")
      # Unique over the split: the images counted so far come before.
      image_ids = len(images) + 1 + np.arange(len(instances))
      gt = coco_ground_truth(instances, semantics, self.num_things,
                             image_ids)
      images += gt["images"]
      annotations += gt["annotations"]
      detections += coco_detections(**pred, image_ids=image_ids,
                                    max_detections=self.max_detections)
    # Each batch numbered its annotations from 1.
    for i, annotation in enumerate(annotations):
      annotation["id"] = i + 1
    ground_truth = {"images": images, "annotations": annotations,
                    "categories": _categories(self.num_things)}
    for prefix, iou_type in (("box", "bbox"), ("mask", "segm")):
      stats = coco_ap(ground_truth, detections, iou_type)
      for name in METRICS:
        yield f"{prefix}_{name}", stats[name]
