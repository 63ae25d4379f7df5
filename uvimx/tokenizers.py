"""Frozen stage-I tokenizers of stage-II LMs: dense labels <-> discrete codes.

An LM predicts a tokenizer's code from the image; the tokenizer's decoder
(the detokenizer) turns the predicted code back into a label. Two kinds:

  conv_vqvae  AiT's label-only conv VQ-VAE (trainer `vqvae`): the code of a
              label depends on the label alone, and decoding on the code.
  uvim        UViM's restricted oracle and base model (trainer
              `uvim_stage1`): the oracle may see the image, and the base
              model decodes with the image.

Both decode probabilities over their codes, AiT's soft tokens: the decoder's
input is sum_k p_k c_k, the probability-weighted codebook rows, so one-hot
probabilities decode exactly as the hard code, and the decoded label is a
differentiable function of the probabilities (AiT's auxiliary loss). The
config of a tokenizer, as in the run that trained it:

  dict(kind="conv_vqvae" or "uvim",
       model=<that run's config.model>, task=<that run's config.task>,
       checkpoint="WORKDIR/checkpoints/N" (uvim also: a big_vision .npz))

Its variables (params and VQ state) are frozen: the LM trainers keep them in
their "state" collection, where no gradient goes.
"""
import jax.numpy as jnp
import ml_collections

from uvimx import checkpoint
from uvimx import losses
from uvimx import tasks
from uvimx.models import vq
from uvimx.trainers import uvim_stage1
from uvimx.trainers import vqvae


class ConvVqvae:
  """AiT's conv VQ-VAE (`uvimx/models/conv_vqvae.py`) as a tokenizer.

  `encode_labels` / `decode_labels` work on label maps in task units (depth
  (N, H, W, 1) in metres, or masks (N, S, S) in [0, 1]; decoded: (N, H, W));
  `encode` / `decode` / `aux_loss` on batches of a depth tokenizer.
  """

  def __init__(self, config, checkpoint_field="the tokenizer's checkpoint"):
    # The vqvae trainer knows the model, the task and its label units.
    self.vqvae = vqvae.Trainer(ml_collections.ConfigDict(
        {"trainer": "vqvae", "model": config.model, "task": config.task,
         "mask_ratio": 0.0}))
    self.model = self.vqvae.model
    self.model_config = config.model
    self.checkpoint = config.get("checkpoint")
    self.checkpoint_field = checkpoint_field
    self.label_size = self.vqvae.label_size
    self.grid = tuple(s // self.model.downsample for s in self.label_size)
    self.num_codes = self.model.num_codes
    self.code_len = self.grid[0] * self.grid[1]

  def label_spec(self, batch_size):
    return self.vqvae.input_spec(batch_size)

  def init(self, rng, batch):
    return self.vqvae.init(rng, batch)

  def load(self, variables):
    return _load(self.checkpoint, self.checkpoint_field, variables,
                 self.model_config)

  def encode_labels(self, variables, labels):
    """Labels (N, ...) in task units -> (N, L) int32 codes."""
    codes = self.model.apply(variables, self.vqvae.to_model_units(labels),
                             method=self.model.encode)
    return codes.reshape(codes.shape[0], -1)

  def decode_labels(self, variables, probabilities):
    """(N, L, K) probabilities over the codes -> (N, H, W) labels."""
    p = probabilities.reshape((-1, *self.grid, self.num_codes))
    return self.vqvae.from_model_units(
        self.model.apply(variables, p, method=self.model.decode_soft))

  def encode(self, variables, batch):
    """The code (B, L) of every depth map of the batch."""
    return self.encode_labels(variables, batch["depth"])

  def decode(self, variables, probabilities, batch):
    """{"depth": (B, H, W) metres} from (B, L, K) code probabilities."""
    del batch  # The label-only decoder needs no image.
    return {"depth": self.decode_labels(variables, probabilities)}

  def aux_loss(self, variables, probabilities, batch):
    """(B,) AiT's auxiliary loss of the decoded depth: SILog."""
    depth = self.decode(variables, probabilities, batch)["depth"]
    gt = batch["depth"][..., 0]
    # SILog takes logs: the decoder's output is unconstrained.
    return losses.silog(jnp.maximum(depth, 1e-3), gt, gt > 0)


class Uvim:
  """UViM's stage-I model (`uvimx/models/uvim.py`) as a tokenizer."""

  def __init__(self, config, checkpoint_field="the tokenizer's checkpoint"):
    self.task = tasks.get_task(config.task.name)
    # Tasks read the patch grid from `model`: the stage-I model's.
    self.task_config = ml_collections.ConfigDict(
        {"task": config.task, "model": config.model})
    self.model = uvim_stage1.make_model(config.model, self.task_config)
    self.model_config = config.model
    self.checkpoint = config.get("checkpoint")
    self.checkpoint_field = checkpoint_field
    self.num_codes = config.model.dict_size
    self.code_len = config.model.code_len

  def label_spec(self, batch_size):
    return tasks.batch_spec(self.task_config, batch_size)

  def init(self, rng, batch):
    return self.model.init({"params": rng, "state": rng},
                           self.task.model_inputs(batch, self.task_config),
                           ctx=batch["image"])

  def load(self, variables):
    return _load(self.checkpoint, self.checkpoint_field, variables,
                 self.model_config)

  def encode(self, variables, batch):
    _, out = self.model.apply(
        variables, self.task.model_inputs(batch, self.task_config),
        ctx=batch["image"], method=self.model.encode)
    return out["code"]

  def _logits(self, variables, code, images):
    """Base-model logits of int codes (B, L) or probabilities (B, L, K)."""
    if jnp.issubdtype(code.dtype, jnp.integer):
      logits, _ = self.model.apply(variables, code, ctx=images,
                                   discrete_input=True,
                                   method=self.model.decode)
      return logits
    codewords = self.model.apply(variables, method=self.model.get_codewords)
    logits, _ = self.model.apply(
        variables, vq.soft_codewords(code, codewords), ctx=images,
        method=self.model.decode)
    return logits

  def decode(self, variables, code, batch):
    """The task's predictions from int codes or code probabilities."""
    return self.task.predict_outputs(
        self._logits(variables, code, batch["image"]), self.task_config)

  def aux_loss(self, variables, probabilities, batch):
    """(B,) the stage-I task's own loss of the base model's output."""
    logits = self._logits(variables, probabilities, batch["image"])
    return self.task.loss(logits, batch, self.task_config)[0]


_KINDS = {"conv_vqvae": ConvVqvae, "uvim": Uvim}


def _load(path, field, variables, model_config):
  """`variables` from the checkpoint `path` that config field `field` gives:
  a uvimx step directory or (UViM's stage I) a big_vision .npz."""
  if not path:
    raise ValueError(
        f"The LM needs its trained stage-I model: set {field} to a step "
        "directory WORKDIR/checkpoints/N of the run that trained it (UViM's "
        "stage I: or a big_vision .npz).")
  try:
    if path.endswith(".npz"):
      return checkpoint.load_big_vision_npz(path, template=variables)
    checkpoint.check_run_config(path, {"model": model_config})
    return checkpoint.load_variables(path, variables)
  except ValueError as e:  # Which of the config's checkpoints it is.
    raise ValueError(f"{field}: {e}") from None


def get(config, checkpoint_field="the tokenizer's checkpoint"):
  """The tokenizer of a tokenizer config (see the module docstring).

  Args:
    config: the tokenizer config.
    checkpoint_field: how errors name the config field of its checkpoint.
  """
  if config.get("kind") not in _KINDS:
    raise ValueError(f"Unknown tokenizer kind {config.get('kind')!r}: use "
                     f"one of {sorted(_KINDS)}.")
  return _KINDS[config.kind](config, checkpoint_field)
