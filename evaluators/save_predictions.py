"""Saves the inputs and predictions of a split's first examples to an .npz.

For looking at predictions after (or during) training:

  config.evals.save = dict(type="save_predictions", data=..., pp=...,
                           batch_size=64, num_examples=32,
                           outfile="{workdir}/predictions.npz")

The file holds `batch/<key>` for the chosen batch keys and `outputs/<key>` for
every output of the predict fn, the examples along the first axis in split
order, padding left out. Only process 0 writes; its shard is the start of the
split, so with more processes `num_examples` beyond that shard are not saved.
The evaluator yields no metrics.
"""
import itertools
import math
import os
import tempfile

import jax
import numpy as np

from evaluators import common


def write_npz(path, arrays):
  """np.savez, atomically: readers see the old file or the whole new one."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # The temp file is in the same directory, so os.replace is a rename within
  # one file system, which POSIX makes atomic.
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise


class Evaluator:
  """Writes the inputs and outputs of the first examples to `outfile`."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size, outfile,
               num_examples=None, keys=None):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> outputs, batch axis first.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string of the eval examples.
      batch_size: global eval batch size.
      outfile: path of the .npz ("{workdir}" is already filled in).
      num_examples: how many examples to save; None: all of process 0's
        shard (the whole split when there is one process).
      keys: batch keys to save; None: all but `_mask` (all numeric: they
        went through the jitted predict fn).
    """
    if num_examples is not None and num_examples < 1:
      raise ValueError(f"save_predictions: num_examples={num_examples}; give "
                       "a positive number, or None for the whole split.")
    # No cache: the split is usually read only partly, and only once.
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh,
        cache=False)
    self.outfile = outfile
    self.num_examples = num_examples
    self.keys = keys
    # Padding comes only after a process's real examples, so its first
    # num_examples real ones are in this many batches. The count is the same
    # on every process, as the predict fn's collectives need.
    self.num_batches = self.predictions.num_batches
    if num_examples is not None:
      local_batch = batch_size // jax.process_count()
      self.num_batches = min(self.num_batches,
                             math.ceil(num_examples / local_batch))

  def run(self, variables):
    """Writes the file; a generator, like every `run`, with no metrics."""
    chunks = []
    for batch, outputs in itertools.islice(self.predictions(variables),
                                           self.num_batches):
      real = batch["_mask"]
      keys = self.keys if self.keys is not None else [
          k for k in batch if k != "_mask"]
      chunk = {f"batch/{k}": common.get(batch, k, "eval batch (keys)")[real]
               for k in keys}
      chunk.update({f"outputs/{k}": v[real] for k, v in outputs.items()})
      chunks.append(chunk)
    if jax.process_index() == 0:
      write_npz(self.outfile, {
          k: np.concatenate([c[k] for c in chunks])[:self.num_examples]
          for k in chunks[0]})
    yield from ()
