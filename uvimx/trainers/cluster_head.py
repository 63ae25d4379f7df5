"""PolyMaX's cluster-prediction head, or its per-pixel baseline, on one task.

`uvimx/models/cluster_head.py` predicts at stride 4; the predictions are
resized (bilinear) to the label size and trained with the dense losses of
`uvimx/losses.py`, on the final prediction and, with `aux_weight`, on every
earlier decoder layer's (deep supervision, as kMaX). The config:

  config.model = dict(input_size=(H, W), backbone=..., num_clusters=...,
                      per_pixel=False, ...)  # cluster_head.Model's kwargs;
      # head, num_classes and the depth range come from config.task.
  config.task = dict(name="semseg", num_classes=..., ignore_label=...)
             or dict(name="depth", min_depth=..., max_depth=...)
             or dict(name="normals")
  config.loss = {term: weight}, terms of the task (below); 0 skips a term.
  config.aux_weight = weight of each earlier layer's loss (default 1.0).

Loss terms (each a per-example mean over valid pixels, see uvimx/losses.py):
  semseg   xent, dice                                  (kMaX's)
  depth    silog, relative_squared_error, gradient_matching, charbonnier
  normals  normals_l2, normals_angular

Valid pixels: semseg labels in [0, num_classes) other than `ignore_label`,
depth > 0, normals not the zero vector.
"""
import functools

import jax
import jax.numpy as jnp

from uvimx import losses
from uvimx import tasks
from uvimx.models import cluster_head
from uvimx.tasks import common
from uvimx.tasks import semseg

# Per task: its config.task arguments with defaults, and its loss terms.
_TASK_ARGS = {
    "semseg": dict(num_classes=common.REQUIRED, ignore_label=None),
    "depth": dict(min_depth=0.0, max_depth=10.0),
    "normals": {},
}
_TERMS = {
    "semseg": ("xent", "dice"),
    "depth": ("silog", "relative_squared_error", "gradient_matching",
              "charbonnier"),
    "normals": ("normals_l2", "normals_angular"),
}
# Depth predictions enter logs: the per-pixel head's softplus can underflow.
_MIN_PREDICTED_DEPTH = 1e-3


class Trainer:
  """init / loss / predict_fns of the cluster head and its baseline."""

  def __init__(self, config):
    self.config = config
    self.task_name = config.task.name
    if self.task_name not in _TASK_ARGS:
      raise ValueError(f"The cluster_head trainer does config.task.name "
                       f"{sorted(_TASK_ARGS)}, not {self.task_name!r}.")
    self.task_args = common.task_args(config, **_TASK_ARGS[self.task_name])
    self.weights = dict(config.loss)
    unknown = sorted(set(self.weights) - set(_TERMS[self.task_name]))
    if unknown:
      raise ValueError(f"Unknown config.loss terms {unknown} for task "
                       f"{self.task_name!r}; it has {_TERMS[self.task_name]}.")
    if not any(self.weights.values()):
      raise ValueError(f"config.loss {self.weights} weights no term: the "
                       "model would not train; give some of "
                       f"{_TERMS[self.task_name]} a weight.")
    self.aux_weight = config.get("aux_weight", 1.0)
    model = dict(config.model)
    self.label_size = tuple(model.pop("input_size"))
    # The task arguments the model takes too (classes, depth range).
    head_args = {k: v for k, v in self.task_args.items()
                 if k in ("num_classes", "min_depth", "max_depth")}
    self.model = cluster_head.Model(head=self.task_name, **head_args, **model)

  def input_spec(self, batch_size):
    return tasks.batch_spec(self.config, batch_size)

  def init(self, rng, batch):
    params = self.model.init(rng, batch["image"])["params"]
    return {"params": params, "state": {}}

  def _predict(self, params, images, train=False, rng=None):
    """{"final": prediction, "aux": [...]}, every map at the label size."""
    out = self.model.apply({"params": params}, images, train=train,
                           rngs={"dropout": rng} if train else None)
    resize = functools.partial(cluster_head.upsample_outputs,
                               size=self.label_size)
    return {"final": resize(out["final"]), "aux": [resize(p) for p in out["aux"]]}

  def _terms(self, prediction, batch):
    """{term: (B,) loss} of one label-size prediction, weighted terms only."""
    if self.task_name == "semseg":
      labels = batch["semantics"][..., 0]
      num_classes = self.task_args["num_classes"]
      valid = semseg.valid_labels(labels, num_classes,
                                  self.task_args["ignore_label"])
      logits = prediction["semantics"]
      fns = {
          "xent": lambda: losses.softmax_xent(logits, labels, valid),
          "dice": lambda: losses.dice(jax.nn.softmax(logits),
                                      jax.nn.one_hot(labels, num_classes),
                                      valid)}
    elif self.task_name == "depth":
      gt = batch["depth"][..., 0]
      pred = jnp.maximum(prediction["depth"], _MIN_PREDICTED_DEPTH)
      fns = {t: functools.partial(getattr(losses, t), pred, gt, gt > 0)
             for t in _TERMS["depth"]}
    else:
      gt = batch["normals"]
      fns = {t: functools.partial(getattr(losses, t), prediction["normals"],
                                  gt, jnp.any(gt != 0, axis=-1))
             for t in _TERMS["normals"]}
    return {t: fns[t]() for t, w in self.weights.items() if w}

  def _weighted(self, terms):
    return sum(w * jnp.mean(terms[t]) for t, w in self.weights.items() if w)

  def loss(self, params, state, batch, rng):
    out = self._predict(params, batch["image"], train=True, rng=rng)
    final = self._terms(out["final"], batch)
    loss = self._weighted(final)
    # "final" is the last decoder layer's prediction: aux[:-1] are the others.
    for prediction in out["aux"][:-1]:
      loss += self.aux_weight * self._weighted(self._terms(prediction, batch))
    measurements = {f"final_{t}": jnp.mean(v) for t, v in final.items()}
    return loss, (state, measurements)

  def predict_fns(self):
    def predict(variables, batch):
      """The task's prediction at the label size, as the evaluators take it."""
      final = self._predict(variables["params"], batch["image"])["final"]
      if self.task_name == "semseg":
        return {"semantics": jnp.argmax(final["semantics"], -1)}
      return {self.task_name: final[self.task_name]}

    def cluster_maps(variables, batch):
      """What the clusters stand for and where (PolyMaX's Figure 8).

      {"probabilities": (B, H, W, K) the stride-4 softmax over the clusters
      resized (bilinear) to the label size, and per cluster "bin_centers"
      (B, K) metres or "cluster_normals" (B, K, 3), with the task's
      prediction: depth = sum_k p_k b_k holds at the label size too.}
      """
      final = self.model.apply(variables, batch["image"])["final"]
      extra = {"depth": "bin_centers", "normals": "cluster_normals"}[
          self.task_name]
      probabilities = jax.nn.softmax(final["mask_logits"], axis=-1)
      return {"probabilities": cluster_head.upsample(probabilities,
                                                     self.label_size),
              **cluster_head.upsample_outputs(
                  {self.task_name: final[self.task_name]}, self.label_size),
              extra: final[extra]}

    fns = {"predict": predict}
    # Semseg's clusters are its classes: its maps are the class posteriors.
    if not self.model.per_pixel and self.task_name != "semseg":
      fns["cluster_maps"] = cluster_maps
    return fns
