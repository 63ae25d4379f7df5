"""UViM stage I: the restricted oracle and the base model, trained jointly.

The oracle encodes the label (and, with `with_encoder_ctx`, the image) into a
short discrete code; the base model reconstructs the label from the image and
that code (`uvimx/models/uvim.py`). The task named by `config.task.name`
(panoptic, depth, colorization, semseg, normals) turns the label into the
oracle's inputs and the model's logits back into a prediction. The config:

  config.model = dict(input_size=..., patch_size=..., code_len=...,
                      width=..., enc_depth=..., dec_depth=..., dict_size=...,
                      with_encoder_ctx=..., code_dropout=..., ...)
  config.task = dict(name="panoptic", num_classes=..., max_instances=...)
  config.w_commitment = 0.25   # weight of the commitment loss
  config.freeze_dict = False   # True: no dictionary learning
  config.init_head_bias = 0.0  # initial value of the heads' biases

`model.inputs` and `model.outputs` come from the task, so the config does not
repeat them.
"""
import jax
import jax.numpy as jnp
import numpy as np

from uvimx import tasks
from uvimx.models import uvim


def make_model(model_config, task_config):
  """The stage-I model for a task: per-patch inputs/outputs from the task."""
  if "inputs" in model_config or "outputs" in model_config:
    raise ValueError("model.inputs and model.outputs are derived from the "
                     "task; remove them from the config.")
  task = tasks.get_task(task_config.task.name)
  patch_pixels = int(np.prod(model_config.patch_size))
  shapes = {k: (c, patch_pixels)
            for k, c in task.model_outputs(task_config).items()}
  return uvim.Model(**model_config, inputs=shapes, outputs=shapes)


class Trainer:
  """init / loss / predict_fns of the stage-I VQ model."""

  def __init__(self, config):
    self.config = config
    self.task = tasks.get_task(config.task.name)
    self.model = make_model(config.model, config)

  def input_spec(self, batch_size):
    return tasks.batch_spec(self.config, batch_size)

  def init(self, rng, batch):
    params_rng, state_rng = jax.random.split(rng)
    variables = self.model.init(
        {"params": params_rng, "state": state_rng},
        self.task.model_inputs(batch, self.config), ctx=batch["image"])
    params = dict(variables["params"])
    # big_vision's init_head_bias: e.g. a negative bias makes the initial
    # one-hot predictions, and so the first losses, small.
    for k in self.model.outputs:
      head = dict(params[f"head_{k}"])
      head["bias"] = jnp.full_like(head["bias"],
                                   self.config.get("init_head_bias", 0.0))
      params[f"head_{k}"] = head
    return {"params": params, "state": variables["state"]}

  def loss(self, params, state, batch, rng):
    dropout_rng, vqvae_rng = jax.random.split(rng)
    (logits, out), new_variables = self.model.apply(
        {"params": params, "state": state},
        self.task.model_inputs(batch, self.config), ctx=batch["image"],
        train=True, update_dict=not self.config.get("freeze_dict", False),
        rngs={"dropout": dropout_rng, "vqvae": vqvae_rng}, mutable=["state"])
    per_example, measurements = self.task.loss(logits, batch, self.config)
    loss_rec = jnp.mean(per_example)
    # Pulls the oracle's output towards its codeword; the dictionary itself
    # follows the outputs by EMA, not by gradients.
    loss_commitment = jnp.mean(jnp.square(
        out["bottleneck"] - jax.lax.stop_gradient(out["bottleneck_q"])))
    loss = loss_rec + self.config.get("w_commitment", 0.25) * loss_commitment
    measurements = dict(
        measurements, loss_rec=loss_rec, loss_commitment=loss_commitment,
        codebook_max_ratio=out["codebook_max_ratio"],
        codebook_zeros_ratio=out["codebook_zeros_ratio"])
    return loss, (new_variables["state"], measurements)

  def predict_fns(self):
    def oracle_inputs(batch):
      return self.task.model_inputs(batch, self.config)

    def predict(variables, batch):
      """The label reconstructed from the oracle's own code."""
      logits, _ = self.model.apply(variables, oracle_inputs(batch),
                                   ctx=batch["image"])
      return self.task.predict_outputs(logits, self.config)

    def code(variables, batch):
      """The oracle's code, (B, code_len) dictionary indices."""
      _, out = self.model.apply(variables, oracle_inputs(batch),
                                ctx=batch["image"], method=self.model.encode)
      return {"code": out["code"]}

    return {"predict": predict, "code": code}
