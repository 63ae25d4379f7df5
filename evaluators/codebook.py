"""Codebook usage of a VQ model over a whole split.

The predict fn returns `{"code": (B, code_len) int}` dictionary indices (the
UViM stage-I trainer's "code" fn); the evaluator yields the fraction of the
`dict_size` codewords that occur anywhere in the split's codes, and the
fraction of all code positions taken by the most used codeword.

  config.evals.codebook = dict(type="codebook", pred="code", data=..., pp=...,
                               batch_size=64, dict_size=512)
"""
import numpy as np

from evaluators import common


class Evaluator:
  """Fraction of codewords used on a split."""

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size, dict_size):
    """Sets up the evaluation.

    Args:
      predict_fn: fn(variables, batch) -> {"code": (B, code_len) int}.
      mesh: the device mesh.
      data: dict(name=..., split=..., data_dir=...) of the split.
      pp: pp string of the eval examples.
      batch_size: global eval batch size.
      dict_size: codewords in the dictionary.
    """
    self.predictions = common.Predictions(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh)
    self.dict_size = dict_size

  def run(self, variables):
    """Yields ("used", fraction of codewords) and ("max_ratio", ...)."""
    counts = np.zeros(self.dict_size, np.int64)
    for batch, outputs in self.predictions(variables):
      codes = np.asarray(common.get(
          outputs, "code", "predict fn outputs (is `pred` a code fn?)"))
      codes = codes[batch["_mask"]].reshape(-1)
      # Else bincount fails on a negative code, or returns more counts than
      # dict_size for a large one.
      if codes.size and not 0 <= codes.min() <= codes.max() < self.dict_size:
        raise ValueError(
            f"The predict fn's codes span [{codes.min()}, {codes.max()}], "
            f"outside [0, dict_size={self.dict_size}): codes must be "
            "dictionary indices, and the codebook evaluator's dict_size the "
            "model's dictionary size.")
      counts += np.bincount(codes, minlength=self.dict_size)
    counts = common.process_sum(counts)
    yield "used", float(np.mean(counts > 0))
    yield "max_ratio", float(counts.max() / max(counts.sum(), 1))
