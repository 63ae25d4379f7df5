"""The train state and the jitted update, shared by train.py and benchmarks.

Pure JAX (no TensorFlow), so a train step can be built and timed on a machine
that has JAX but no input pipeline.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from uvimx import optim
from uvimx import sharding


class TrainSetup(NamedTuple):
  """The optimizer and train state of a run, derived from shapes only."""
  tx: optax.GradientTransformation
  sched_fns: list[Callable[[int], float]]  # Learning rate per step and group.
  abstract_state: Any  # ShapeDtypeStructs with their shardings.
  # A fresh train state, placed by those shardings; with pretrained=True
  # (default) holding the pre-trained parts the config names.
  init: Callable[..., Any]
  grad_accum_steps: int = 1  # Micro-batches per step (config.grad_accum_steps).


def setup_train_state(config, trainer, mesh, batch_spec, *, total_steps,
                      data_size=None):
  """Builds the optimizer, the shardings and the init of the train state.

  The train state is {"params", "state" (model state, e.g. a VQ dictionary),
  "opt" (optimizer state), "rng" (key data the steps fold their number into)}.

  Only shapes are computed here (`jax.eval_shape`): the optimizer, the
  partition rules and a checkpoint restore need nothing more, and a large
  model is materialised once, directly on its devices, by `init`.

  Args:
    config: the run config (seed, optimizer, sharding rules).
    trainer: the model family's Trainer.
    mesh: the device mesh.
    batch_spec: a batch of the training shapes (batch size 1 will do).
    total_steps: the length of training, for the schedules.
    data_size: training examples per epoch, for `*_epochs` settings.

  Returns:
    A TrainSetup.
  """
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  variable_shapes = jax.eval_shape(trainer.init, init_rng, batch_spec)
  accum = _grad_accum_steps(config, mesh)
  tx, sched_fns = optim.make(config, variable_shapes["params"],
                             total_steps=total_steps, data_size=data_size,
                             batch_size=config.input.batch_size)
  def init_fn():
    variables = trainer.init(init_rng, batch_spec)
    return {"params": variables["params"],
            "state": variables.get("state", {}),
            "opt": tx.init(variables["params"]),
            "rng": jax.random.key_data(train_rng)}

  shapes = jax.eval_shape(init_fn)
  shardings = sharding.infer_shardings(
      shapes, mesh, config.get("sharding_rules", [(".*", "replicate")]),
      fsdp_min_size=config.get("fsdp_min_size", 2**14))
  fresh = jax.jit(init_fn, out_shardings=shardings)

  def init(pretrained=True):
    train_state = fresh()
    if not pretrained or not hasattr(trainer, "load_pretrained"):
      return train_state
    # Pre-trained parts the config names (a frozen stage-I model, an encoder
    # checkpoint) replace their fresh values; a resumed run restores them
    # from its own checkpoint instead.
    variables = trainer.load_pretrained(
        {"params": train_state["params"], "state": train_state["state"]})
    variables = jax.device_put(
        variables, {k: shardings[k] for k in ("params", "state")})
    return dict(train_state, **variables)

  return TrainSetup(tx=tx, sched_fns=sched_fns,
                    abstract_state=_abstract(shapes, shardings), init=init,
                    grad_accum_steps=accum)


def _grad_accum_steps(config, mesh):
  """config.grad_accum_steps (default 1), checked against the batch size."""
  accum = config.get("grad_accum_steps", 1)
  batch_size = config.input.batch_size
  if accum < 1 or batch_size % accum:
    raise ValueError(
        f"config.grad_accum_steps={accum} must be >= 1 and divide "
        f"config.input.batch_size={batch_size}.")
  # Else XLA would move examples between devices at every micro-batch.
  if (batch_size // accum) % mesh.size:
    raise ValueError(
        f"config.grad_accum_steps={accum} makes micro-batches of "
        f"{batch_size // accum} examples, which do not split over the "
        f"{mesh.size} devices: use fewer micro-batches or a larger batch.")
  return accum


def _accumulated_grads(loss_fn, params, state, batch, rng, accum_steps):
  """value_and_grad of `trainer.loss` averaged over `accum_steps` micro-batches.

  Micro-batch c holds examples c, c + n, c + 2n, ... (n = accum_steps), so a
  batch sharded in blocks along its first axis splits evenly across devices.
  The loss is a mean over equal-sized micro-batches, so the averaged gradient
  is the whole batch's; measurements are averaged (an RMSE over micro-batches
  is then a mean of RMSEs). On CPUs this is also faster: a micro-batch's
  activations (e.g. attention weights) stay in cache (1.4x steps/s for the
  4x4-patch depth baseline at 8 micro-batches of 4). The loss must leave
  the model state as it is (raises ValueError otherwise, when traced).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    return grad_fn(params, state, batch, rng)
  micro = jax.tree.map(
      lambda x: jnp.swapaxes(
          x.reshape((-1, accum_steps) + x.shape[1:]), 0, 1), batch)

  def scores(index, microbatch):
    (loss, (new_state, measurements)), grads = grad_fn(
        params, state, microbatch, jax.random.fold_in(rng, index))
    # A loss that returns its state untouched (no state, or a frozen model
    # in it, as UViM stage II's oracle) returns the very same arrays.
    if any(a is not b for a, b in zip(jax.tree.leaves(new_state),
                                      jax.tree.leaves(state))):
      raise ValueError(
          f"config.grad_accum_steps={accum_steps}: this trainer's loss "
          "updates the model state (e.g. a VQ dictionary) at every batch, so "
          "its steps cannot be split into micro-batches; remove "
          "grad_accum_steps.")
    return loss, measurements, grads

  def add(total, inputs):
    return jax.tree.map(jnp.add, total, scores(*inputs)), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      scores, 0, jax.tree.map(lambda x: x[0], micro)))
  total, _ = jax.lax.scan(add, zeros, (jnp.arange(accum_steps), micro))
  loss, measurements, grads = jax.tree.map(lambda x: x / accum_steps, total)
  return (loss, (state, measurements)), grads


def make_train_step(trainer, tx, accum_steps=1):
  """The update: one optimizer step on one global batch.

  A step whose loss, update or new model state is not finite changes nothing
  (the train state passes through) and reports `nonfinite`; the loop turns
  that into an error naming the step, so no NaN or inf reaches the
  parameters or a checkpoint.

  Args:
    trainer: the model family's Trainer.
    tx: the optax transformation.
    accum_steps: micro-batches the batch's gradient is accumulated over (a
      trainer whose loss leaves the model state as it is; see
      `_accumulated_grads`).

  Returns:
    `train_step(train_state, batch, step) -> (train_state, measurements)`.
  """
  def train_step(train_state, batch, step):
    rng = jax.random.fold_in(jax.random.wrap_key_data(train_state["rng"]), step)
    (loss, (model_state, measurements)), grads = _accumulated_grads(
        trainer.loss, train_state["params"], train_state["state"], batch, rng,
        accum_steps)
    updates, opt = tx.update(grads, train_state["opt"], train_state["params"])
    params = optax.apply_updates(train_state["params"], updates)
    new_state = dict(train_state, params=params, opt=opt, state=model_state)
    # The update too: a finite loss can still give an infinite update (a
    # huge lr), and the next step's NaN would come after it was checkpointed.
    # (One norm of the updates: a finiteness check of every new param would
    # cost tiny models a quarter of their step time.)
    # And the model state the loss updated (e.g. UViM's EMA dictionary): the
    # arrays it returned as it got them (a frozen model) need no check.
    updated = [new for new, old in zip(jax.tree.leaves(model_state),
                                       jax.tree.leaves(train_state["state"]))
               if new is not old and jnp.issubdtype(new.dtype, jnp.inexact)]
    finite = (jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(updates))
              & jnp.isfinite(optax.global_norm(updated)))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             new_state, train_state)
    measurements = dict(measurements, loss=loss,
                        grad_norm=optax.global_norm(grads),
                        nonfinite=jnp.logical_not(finite))
    return new_state, measurements
  return train_step


def jit_train_step(trainer, setup, mesh):
  """`make_train_step`, jitted with the train state's and batch's shardings.

  The train state is donated: its buffers are reused for the next one.

  Args:
    trainer: the model family's Trainer.
    setup: the run's TrainSetup.
    mesh: the device mesh.

  Returns:
    `train_step(train_state, global_batch, step) -> (train_state,
    measurements)`, the measurements replicated.
  """
  shardings = jax.tree.map(lambda a: a.sharding, setup.abstract_state)
  return jax.jit(
      make_train_step(trainer, setup.tx, setup.grad_accum_steps),
      in_shardings=(shardings, sharding.batch_sharding(mesh), None),
      out_shardings=(shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))


def _abstract(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)
