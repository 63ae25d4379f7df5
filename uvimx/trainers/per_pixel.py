"""Per-pixel baseline: a ViT trained directly on a task's pixel-wise loss.

This is UViM's "base model only" ablation (no guiding code): `vit_dense.Model`
predicts every pixel of its patch from each token, and the task named by
`config.task.name` (`semseg`, `depth`) encodes the labels, gives the loss and
decodes the logits. The config:

  config.model = dict(patch_size=..., input_size=..., width=..., depth=...,
                      mlp_dim=..., num_heads=..., [posemb=..., dropout=...])
  config.task = dict(name="semseg", num_classes=..., ignore_label=...)
              or dict(name="depth", [num_bins=..., min_depth=..., ...])

The model's outputs come from the task (semseg: {"semantics": num_classes},
depth: {"depth": num_bins}), so `config.model` does not repeat them.
"""
import jax.numpy as jnp

from uvimx import tasks
from uvimx.models import vit_dense


class Trainer:
  """init / loss / predict_fns of the per-pixel baseline."""

  def __init__(self, config):
    self.config = config
    self.task = tasks.get_task(config.task.name)
    if "outputs" in config.model:
      raise ValueError("config.model.outputs is derived from config.task; "
                       "remove it from config.model.")
    self.model = vit_dense.Model(**config.model,
                                 outputs=self.task.model_outputs(config))

  def input_spec(self, batch_size):
    return tasks.batch_spec(self.config, batch_size)

  def init(self, rng, batch):
    params = self.model.init(rng, batch["image"])["params"]
    return {"params": params, "state": {}}

  def loss(self, params, state, batch, rng):
    logits = self.model.apply({"params": params}, batch["image"], train=True,
                              rngs={"dropout": rng})
    per_example, measurements = self.task.loss(logits, batch, self.config)
    return jnp.mean(per_example), (state, measurements)

  def predict_fns(self):
    def predict(variables, batch):
      logits = self.model.apply({"params": variables["params"]},
                                batch["image"])
      return self.task.predict_outputs(logits, self.config)
    return {"predict": predict}
