"""Builds evaluators from `config.evals` and runs predict fns over eval splits.

  config.evals = dict(
      val=dict(type="semseg",            # module evaluators/semseg.py
               pred="predict",            # a key of trainer.predict_fns()
               data=dict(name="synthetic_scenes/64x64", split="validation"),
               pp="decode|...|keep('image', 'semantics')",
               batch_size=64,
               log_steps=1000,            # or log_epochs; 0/None: only at the end
               prefix="val/",             # default: "<name>/"
               ...),                      # the rest goes to the Evaluator
  )

Each `evaluators/<type>.py` defines `Evaluator(predict_fn, *, mesh, **kw)`
with `run(variables)` yielding `(metric_name, value)` pairs. String arguments
may contain "{workdir}" (e.g. save_predictions' outfile).
"""
import dataclasses
import importlib
from typing import Any

import flax
import jax
from jax.experimental import multihost_utils
import numpy as np

from uvimx import input_pipeline
from uvimx import sharding
from uvimx import utils

# Keys of an eval config that the framework reads; the rest is the Evaluator's.
_COMMON_KEYS = ("type", "pred", "log_steps", "log_epochs", "prefix")


@dataclasses.dataclass
class Scheduled:
  """An evaluator with its name, schedule and metric-name prefix."""
  name: str
  evaluator: Any
  log_steps: int
  prefix: str

  def due(self, step, total_steps):
    """Evaluate every `log_steps` steps and always at the end of training."""
    return step == total_steps or bool(
        self.log_steps and step % self.log_steps == 0)


def from_config(config, predict_fns, mesh, *, workdir, data_size=None):
  """Instantiates `config.evals`.

  Args:
    config: the whole config (reads `evals` and `input.batch_size`).
    predict_fns: `trainer.predict_fns()`.
    mesh: the device mesh.
    workdir: substituted for "{workdir}" in string arguments.
    data_size: training examples per epoch, for `log_epochs`.

  Returns:
    A list of `Scheduled`.
  """
  scheduled = []
  for name, eval_config in (config.get("evals") or {}).items():
    eval_config = dict(eval_config)
    if "type" not in eval_config:
      raise ValueError(f"config.evals.{name} needs a `type` (a module of "
                       "evaluators/, e.g. 'semseg').")
    try:
      module = importlib.import_module(f"evaluators.{eval_config['type']}")
    except ModuleNotFoundError as e:
      if e.name != f"evaluators.{eval_config['type']}":
        raise
      raise ValueError(f"config.evals.{name}.type {eval_config['type']!r}: no "
                       f"module evaluators/{eval_config['type']}.py.") from None
    pred = eval_config.get("pred", "predict")
    if pred not in predict_fns:
      raise ValueError(f"config.evals.{name}.pred {pred!r} is not a predict "
                       f"fn of trainer {config.trainer!r}; it has "
                       f"{sorted(predict_fns)}.")
    kwargs = {k: v.format(workdir=workdir) if isinstance(v, str) and
              "{workdir}" in v else v
              for k, v in eval_config.items() if k not in _COMMON_KEYS}
    log_steps = utils.steps("log", eval_config, data_size,
                            config.input.batch_size, default=0)
    scheduled.append(Scheduled(
        name=name, evaluator=module.Evaluator(predict_fns[pred], mesh=mesh,
                                              **kwargs),
        log_steps=log_steps, prefix=eval_config.get("prefix", f"{name}/")))
  return scheduled


def check_inputs(scheduled, abstract_variables):
  """Raises now, not at an evaluation mid-run, if an evaluator's pipeline
  gives batches that its predict fn cannot take (e.g. a pp's wrong size).

  Args:
    scheduled: `from_config`'s list.
    abstract_variables: the model's {"params", "state"} as
      ShapeDtypeStructs.
  """
  for s in scheduled:
    s.evaluator.predictions.check(abstract_variables, f"config.evals.{s.name}")


class Predictions:
  """A predict fn run over a whole eval split, every example exactly once.

  Calling it with the model variables yields `(batch, outputs)` per batch,
  both dicts of host-local numpy arrays with the batch axis first. Padding
  examples are still in; `batch["_mask"]` is False for them.
  """

  def __init__(self, predict_fn, *, data, pp, batch_size, mesh, cache=True):
    # Checked here, at startup, rather than at the first evaluation mid-run:
    # every batch is split evenly over all devices.
    sharding.check_batch_size(batch_size, mesh, "The eval batch_size")
    self.dataset, self.num_batches = input_pipeline.evaluation(
        data, pp, batch_size, cache=cache)
    self.batch_size = batch_size
    self.mesh = mesh
    self.predict = jax.jit(predict_fn,
                           out_shardings=sharding.batch_sharding(mesh))

  def check(self, abstract_variables, where):
    """Raises a ValueError if the predict fn cannot take the batches."""
    specs = self.dataset.element_spec
    if not all(s.shape[1:].is_fully_defined() for s in specs.values()):
      return  # E.g. decoded images without a resize: sizes known at run time.
    batch = {k: jax.ShapeDtypeStruct((self.batch_size, *s.shape[1:]),
                                     s.dtype.as_numpy_dtype)
             for k, s in specs.items()}
    try:
      jax.eval_shape(self.predict, abstract_variables, batch)
    # flax reports e.g. a kernel of another shape than the input implies as
    # a ScopeParamShapeError, a FlaxError.
    except (KeyError, TypeError, ValueError, flax.errors.FlaxError) as e:
      shapes = {k: f"{b.dtype.name}{list(b.shape[1:])}"
                for k, b in batch.items() if k != "_mask"}
      raise ValueError(
          f"{where}: its pp gives examples {shapes}, which the model's "
          f"predict fn cannot take (check the pp's resize and keep ops): "
          f"{type(e).__name__}: {e}") from None

  def __call__(self, variables):
    for batch in self.dataset.as_numpy_iterator():
      outputs = self.predict(variables, sharding.put_batch(batch, self.mesh))
      yield batch, sharding.to_host(outputs)


def process_sum(x):
  """Sums a numpy array (e.g. a metric accumulator) over all processes.

  Its bytes travel, not its values: the gather puts them on devices, which
  (x64 off) would wrap int64 counts to int32 and round float64 sums.
  """
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  gathered = multihost_utils.process_allgather(x.reshape(-1).view(np.uint8))
  return np.asarray(gathered).view(x.dtype).reshape((-1,) + x.shape).sum(0)


def get(arrays, key, what):
  """`arrays[key]`, or an error naming `what` was missing and what there is.

  Args:
    arrays: a batch or predict-fn outputs.
    key: the key an evaluator was configured with.
    what: how the error names the dict and the kwarg, e.g. "predict fn
      output (pred_key)".
  """
  if key not in arrays:
    raise KeyError(f"No {key!r} in the {what}; it has {sorted(arrays)}.")
  return arrays[key]


def squeeze_map(x):
  """(B, H, W, 1) label or prediction maps as (B, H, W); others as they are."""
  return x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
