"""Tests of evaluators/semseg.py: a hand-made confusion matrix, a full split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from evaluators import semseg
from uvimx import sharding

# 5 classes: class 3 is only predicted, class 4 appears nowhere (its one
# prediction is on an ignored pixel).
GT = np.array([[0, 0, 1, 255],
               [2, 2, 1, 0]])
PRED = np.array([[0, 1, 1, 4],
                 [2, 3, 1, 0]])
# The 7 counted (label, prediction) pairs: (0,0) x2, (0,1), (1,1) x2, (2,2),
# (2,3); rows labels, columns predictions.
CONFUSION = np.array([[2, 1, 0, 0, 0],
                      [0, 2, 0, 0, 0],
                      [0, 0, 1, 1, 0],
                      [0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0]])


def test_confusion_matrix_hand_made():
  got = semseg.confusion_matrix(GT, PRED, num_classes=5)
  np.testing.assert_array_equal(got, CONFUSION)
  assert got.dtype == np.int64


def test_semseg_metrics_hand_made():
  got = semseg.semseg_metrics(CONFUSION)
  # TP = 2, 2, 1, 0, 0; union = label + prediction counts - TP:
  # 3+2-2 = 3, 2+3-2 = 3, 2+1-1 = 2, 0+1-0 = 1, 0 (undefined).
  assert got["iou/0"] == pytest.approx(100 * 2 / 3)
  assert got["iou/1"] == pytest.approx(100 * 2 / 3)
  assert got["iou/2"] == pytest.approx(50)
  assert got["iou/3"] == 0
  assert np.isnan(got["iou/4"])
  # Mean over the 4 classes with a non-zero union: (2/3 + 2/3 + 1/2 + 0) / 4.
  assert got["miou"] == pytest.approx(100 * 11 / 24)          # 45.83
  assert got["pixel_accuracy"] == pytest.approx(100 * 5 / 7)  # 71.43
  named = semseg.semseg_metrics(CONFUSION, class_names="abcde")
  assert sorted(named) == ["iou/a", "iou/b", "iou/c", "iou/d", "iou/e",
                           "miou", "pixel_accuracy"]
  assert named["iou/c"] == got["iou/2"]


def test_semseg_errors():
  # The prediction 4 on the ignored pixel is no error, but 3 is for 3 classes.
  np.testing.assert_array_equal(
      semseg.confusion_matrix(GT, PRED, num_classes=4), CONFUSION[:4, :4])
  with pytest.raises(ValueError, match="outside"):
    semseg.confusion_matrix(GT, PRED, num_classes=3)
  with pytest.raises(ValueError, match="outside"):
    semseg.confusion_matrix(np.where(GT == 2, 7, GT), PRED, num_classes=5)
  with pytest.raises(ValueError, match="outside"):
    semseg.confusion_matrix(GT, -PRED, num_classes=5)
  with pytest.raises(ValueError, match="resized"):
    semseg.confusion_matrix(GT, PRED[:, :2], num_classes=5)
  with pytest.raises(ValueError, match="No labelled pixel"):
    semseg.semseg_metrics(np.zeros((3, 3)))
  with pytest.raises(ValueError, match="class_names"):
    semseg.semseg_metrics(CONFUSION, class_names=["a"])


PP = "decode|cast('int32', key='semantics')|keep('image', 'semantics')"
NAMES = ("sphere", "box", "cylinder", "cone", "floor", "ceiling", "back_wall",
         "left_wall", "right_wall")


def _evaluate(predict_fn, data_dir, num_devices=8, batch_size=16, **kwargs):
  # 24 validation examples in batches of 16: the second batch has 8 padding
  # examples, all-zero, i.e. labelled class 0.
  evaluator = semseg.Evaluator(
      predict_fn, mesh=sharding.make_mesh(
          [("data", -1)], devices=jax.devices()[:num_devices]),
      data=dict(name="synthetic_scenes/tiny", split="validation",
                data_dir=data_dir),
      pp=PP, batch_size=batch_size, num_classes=9, **kwargs)
  return dict(evaluator.run({}))


def test_evaluator_ground_truth_is_perfect(tfds_data_dir):
  got = _evaluate(lambda v, b: {"semantics": b["semantics"][..., 0]},
                  tfds_data_dir)
  assert got["miou"] == 100 and got["pixel_accuracy"] == 100
  assert all(got[f"iou/{c}"] == 100 for c in range(9))


# 8 devices, batches of 16 (8 padding examples); 1 device, batches of 10
# (3 batches, 6 padding examples).
@pytest.mark.parametrize("num_devices,batch_size", [(8, 16), (1, 10)])
def test_evaluator_constant_prediction(tfds_data_dir, num_devices,
                                       batch_size):
  # Everything predicted "floor" (4), and "right_wall" (8) ignored.
  got = _evaluate(
      lambda v, b: {"semantics": jnp.full(b["semantics"].shape[:3], 4)},
      tfds_data_dir, num_devices, batch_size, ignore_label=8,
      class_names=NAMES)
  ds = tfds.builder("synthetic_scenes/tiny", data_dir=tfds_data_dir
                    ).as_dataset(split="validation")
  labels = np.stack([ex["semantics"] for ex in tfds.as_numpy(ds)])
  counts = np.bincount(labels.ravel(), minlength=9)
  assert len(labels) == 24 and (counts > 0).all()
  # Independently: of the pixels not labelled 8, the floor ones are right.
  # IoU(floor) = floor / (all counted pixels); the other 7 labelled classes
  # have IoU 0; right_wall is neither labelled nor predicted: undefined.
  counted = counts.sum() - counts[8]
  assert got["pixel_accuracy"] == pytest.approx(100 * counts[4] / counted)
  assert got["iou/floor"] == pytest.approx(100 * counts[4] / counted)
  assert got["iou/sphere"] == 0 and np.isnan(got["iou/right_wall"])
  assert got["miou"] == pytest.approx(100 * counts[4] / counted / 8)
