"""Runs the notebooks' code cells and checks what they compute."""
import json
import pathlib
import sys
import types

import numpy as np

import test_predict

REPO = pathlib.Path(__file__).parent.parent
NOTEBOOKS = REPO / "notebooks"


def run_notebook(name, monkeypatch, **settings):
  """Executes the code cells of `name`, overriding its settings.

  A notebook's first code cell sets its settings (DATA_DIR, CHECKPOINT, ...)
  without using them; `settings` replace them after every code cell.
  """
  # Notebooks show results with IPython's display(); record what they show.
  shown = []
  display = types.SimpleNamespace(display=shown.append)
  monkeypatch.setitem(sys.modules, "IPython",
                      types.SimpleNamespace(display=display))
  monkeypatch.setitem(sys.modules, "IPython.display", display)
  cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
  namespace = {}
  for cell in cells:
    if cell["cell_type"] == "code":
      exec("".join(cell["source"]), namespace)  # pylint: disable=exec-used
      namespace.update(settings)
  return namespace, shown


def test_synthetic_scenes_notebook(tfds_data_dir, monkeypatch):
  ns, shown = run_notebook("synthetic_scenes.ipynb", monkeypatch,
                           DATA_DIR=tfds_data_dir)
  # 7 columns of tiles of at least 96 px (64x64 scaled by 2 is 128 px), 4 rows
  # and a 14 px title row.
  assert shown == [ns["grid_image"]]
  assert ns["grid_image"].size == (7 * 128, 14 + 4 * 128)
  batch = ns["batch"]
  assert batch["image"].shape == (8, 48, 48, 3)
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1
  np.testing.assert_allclose(
      np.linalg.norm(batch["normals"], axis=-1), 1.0, atol=1e-5)
  assert batch["depth"].min() > 0 and batch["depth"].max() < 20  # metres
  assert ns["num_batches"] == 3  # 24 validation examples at batch 8.


def test_uvim_inference_notebook(tfds_data_dir, tmp_path_factory,
                                 monkeypatch):
  # Smoke size: the smoke_stage2 models (random weights) on
  # synthetic_scenes/tiny.
  _, checkpoint = test_predict.smoke_checkpoints(tmp_path_factory)
  ns, shown = run_notebook(
      "uvim_inference.ipynb", monkeypatch,
      CONFIG=f"{REPO / 'configs' / 'uvim_synthetic.py'}:smoke_stage2",
      CHECKPOINT=checkpoint, DATA_DIR=tfds_data_dir, NUM_EXAMPLES=3,
      NUM_SAMPLES=2)
  assert shown == [ns["comparison"], ns["sample_grid"]]
  # Rows of input / ground truth / prediction, 64x64 tiles scaled by 2.
  assert ns["comparison"].size == (3 * 128, 3 * 128)
  assert ns["sample_grid"].size == ((1 + 2) * 128, 128)
  # The labels are drawn in the predictions' format.
  assert ns["labels"]["panoptic"].shape == (3, 64, 64, 2)
  assert ns["predictions"][0]["panoptic"].shape == (64, 64, 2)
  assert ns["samples"]["panoptic"].shape == (2, 64, 64, 2)
