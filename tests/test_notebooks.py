"""Runs the notebooks' code cells and checks what they compute."""
import json
import pathlib
import sys
import types

import numpy as np

NOTEBOOKS = pathlib.Path(__file__).parent.parent / "notebooks"


def run_notebook(name, data_dir, monkeypatch):
  """Executes the code cells of `name` with DATA_DIR set to `data_dir`."""
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
      namespace["DATA_DIR"] = data_dir
  return namespace, shown


def test_synthetic_scenes_notebook(tfds_data_dir, monkeypatch):
  ns, shown = run_notebook("synthetic_scenes.ipynb", tfds_data_dir, monkeypatch)
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
