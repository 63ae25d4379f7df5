"""Trainers: one module per model family, selected by `config.trainer`.

`train.py` owns the loop (input, sharding, optimizer, checkpoints, logging,
evaluation); a trainer module only says what is model-specific. Each module
defines a class `Trainer`, built as `Trainer(config)` from the whole config:

  input_spec(batch_size) -> {key: jax.ShapeDtypeStruct}
      The training batch the model expects (image, labels). `train.py`
      checks the input pipeline against it; benchmarks fill it with random
      values to time a train step without TensorFlow.
  init(rng, batch) -> variables
      `variables` is {"params": ..., "state": ...}: "state" holds non-trained
      model state (e.g. a VQ dictionary and counts), {} if there is none.
      `batch` is a dict of arrays shaped like a training batch (any batch
      size): init must only use shapes, so `train.py` passes a batch of 1.
  loss(params, state, batch, rng) -> (loss, (new_state, measurements))
      Called inside the jitted train step on the global batch, so batch
      statistics (e.g. VQ counts) are global without explicit collectives.
      `measurements` is a dict of scalars, logged as `train/<name>`.
  load_pretrained(variables) -> variables   (optional)
      Called once on a fresh start (not on resume) with the initialised
      {"params", "state"}; returns them with the pre-trained parts the
      config names (e.g. a frozen stage-I model in "state") filled in, as
      arrays of the same shapes.
  predict_fns() -> {name: fn(variables, batch) -> dict of arrays}
      Functions evaluators call (by name, `config.evals.<e>.pred`) on eval
      batches; the outputs keep the batch axis first.

Everything here is pure JAX: trainers never import TensorFlow.
"""
import importlib


def get_trainer(config):
  """Returns `uvimx.trainers.<config.trainer>.Trainer(config)`."""
  try:
    module = importlib.import_module(f"uvimx.trainers.{config.trainer}")
  except ModuleNotFoundError as e:
    if e.name != f"uvimx.trainers.{config.trainer}":
      raise
    raise ValueError(
        f"Unknown config.trainer {config.trainer!r}: there is no module "
        f"uvimx/trainers/{config.trainer}.py.") from None
  return module.Trainer(config)
