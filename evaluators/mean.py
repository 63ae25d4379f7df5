"""Means over a split of per-example values computed by a predict fn.

For losses or any other per-example score: the predict fn returns
`{name: (B,) values}` and the evaluator yields each name's mean over the real
(non-padding) examples of the split.

  config.evals.val_loss = dict(type="mean", pred="loss", data=..., pp=...,
                               batch_size=64)
"""
import numpy as np

from evaluators import common


class Evaluator:
  """Mean over a split of each per-example output of a predict fn."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> {name: (B,) values}.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string of the eval examples.
      batch_size: global eval batch size.
    """
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)

  def run(self, variables):
    """Yields (name, mean) for each output of the predict fn."""
    sums, count = {}, 0
    for batch, outputs in self.predictions(variables):
      real = batch["_mask"]
      for name, values in outputs.items():
        if values.shape != real.shape:
          raise ValueError(
              f"The mean evaluator needs one value per example, but predict "
              f"fn output {name!r} has shape {values.shape} for a batch of "
              f"{real.shape[0]}.")
        sums[name] = sums.get(name, 0.0) + values[real].sum(dtype=np.float64)
      count += real.sum()
    # Sorted, so that every process sums the same entries.
    names = sorted(sums)
    totals = common.process_sum(np.array([sums[n] for n in names] + [count]))
    for name, total in zip(names, totals):
      yield name, float(total / totals[-1])
