r"""Speed of a config's train step on batches made in memory (no TensorFlow).

  python -m benchmarks.train_step --config configs/synthetic_baseline.py:semseg

Prints steps/s, images/s and the FLOP/s the step achieves (FLOPs per step from
XLA's cost analysis of the compiled step), next to the FLOP/s of a plain large
float32 matmul measured in the same process, so their ratio, the model FLOP
utilisation on this machine, is visible. The batch comes from the trainer's
`input_spec`: random values, the shapes and dtypes of real training batches.
With `config.grad_accum_steps` > 1 the FLOPs are those of the same update
computed on the whole batch at once.
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from uvimx import sharding
from uvimx import train_state
from uvimx import trainers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "N of the NxN matmul.")


def _random_batch(spec, rng):
  def make(s):
    if jnp.issubdtype(s.dtype, jnp.integer):
      return rng.integers(0, 4, s.shape).astype(s.dtype)
    return rng.uniform(0.5, 1.0, s.shape).astype(s.dtype)
  return jax.tree.map(make, spec)


def _time(fn, steps):
  """Seconds per call of fn() after one warm-up call (compilation)."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def train_step_speed(config, steps):
  """(seconds per step, FLOPs per step, compile seconds) of a train step."""
  mesh = sharding.make_mesh(config.get("mesh", [("data", -1)]))
  trainer = trainers.get_trainer(config)
  batch_size = config.input.batch_size
  batch = _random_batch(trainer.input_spec(batch_size), np.random.default_rng(0))
  # The schedule only sets the learning rate, which does not change the cost.
  setup = train_state.setup_train_state(
      config, trainer, mesh, batch,
      total_steps=config.get("total_steps") or 1_000_000)
  step_fn = train_state.jit_train_step(trainer, setup, mesh)
  # Random weights all through: no pre-trained parts (e.g. a stage-I model)
  # are needed to time a step.
  state = setup.init(pretrained=False)
  batch = sharding.put_batch(batch, mesh)
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, 1).compile()
  compile_seconds = time.perf_counter() - start
  flops = compiled.cost_analysis()["flops"]
  if setup.grad_accum_steps > 1:
    # XLA counts a loop body once, not once per micro-batch: count the FLOPs
    # of the same update on the whole batch at once.
    flops = train_state.jit_train_step(
        trainer, setup._replace(grad_accum_steps=1), mesh).lower(
            state, batch, 1).compile().cost_analysis()["flops"]

  def one_step():
    nonlocal state
    state, measurements = step_fn(state, batch, 1)
    return measurements["loss"]
  return _time(one_step, steps), flops, compile_seconds


def matmul_speed(n, steps):
  """(seconds per matmul, FLOPs per matmul) of an NxN float32 matmul."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  return _time(lambda: matmul(a), steps), 2 * n**3


def main(argv):
  del argv
  config = _CONFIG.value
  seconds, flops, compile_seconds = train_step_speed(config, _STEPS.value)
  mm_seconds, mm_flops = matmul_speed(_MATMUL.value, _STEPS.value)
  batch_size = config.input.batch_size
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"{'what':<26} {'steps/s':>9} {'images/s':>10} {'GFLOP/step':>11} "
        f"{'GFLOP/s':>9}")
  print(f"{'train step':<26} {1 / seconds:>9.2f} {batch_size / seconds:>10.1f}"
        f" {flops / 1e9:>11.2f} {flops / seconds / 1e9:>9.1f}")
  print(f"{f'{_MATMUL.value}^2 f32 matmul':<26} {1 / mm_seconds:>9.2f} "
        f"{'':>10} {mm_flops / 1e9:>11.2f} {mm_flops / mm_seconds / 1e9:>9.1f}")
  print(f"first step: lowering + compilation {compile_seconds:.1f} s")
  print(f"model FLOP utilisation vs matmul: "
        f"{(flops / seconds) / (mm_flops / mm_seconds):.1%}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
