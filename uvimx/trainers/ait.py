"""AiT (Ning et al., 2023): one LM that predicts the tokens of several tasks.

The LM is UViM's stage-II encoder-decoder (`uvimx/models/lm.py`), decoded by
`uvimx/decode.py`; a task turns its labels into a token sequence with a
frozen tokenizer (`uvimx/tokenizers.py`), and the sampled tokens back:

  codes      a dense label as its tokenizer's code: AiT's depth, with the
             conv VQ-VAE, or any UViM task, with its stage-I model.
  instances  objects as box, class and mask tokens
             (`uvimx/tasks/instance_sequence.py`), the masks coded by a
             conv VQ-VAE mask tokenizer.

Vocabulary: token 0 pads; tokens 1..T are the task tokens, one per task in
sorted name order, each the first input of its task's sequences (so it says
which task to solve); then every task's disjoint slices of token types.
`seq_len` is the longest task's: shorter sequences are padded with token 0
at weight 0. Both, and `vocab_size`, are derived, not configured.

  config.model = dict(<lm.Model's other arguments>, parallel=False)
  config.tasks = dict(
      depth=dict(type="codes",
                 tokenizer=dict(kind="conv_vqvae", model=..., task=...,
                                checkpoint="TOKENIZER_WORKDIR/checkpoints/N"),
                 mix=1.0,       # the fraction of every batch on this task
                 aux_weight=0.0, aux_tau=0.8,   # AiT's auxiliary loss
                 sampling=dict(temperature=0.0, soft_tokens=True,
                               soft_decode=True, tau=0.8)),
      instances=dict(type="instances", tokenizer=<the mask tokenizer>,
                     sequence=dict(num_bins=64, max_instances=8, ...),
                     mix=..., aux_weight=..., aux_tau=...,
                     sampling=dict(temperature=1.0, top_p=0.4, ...)))
  config.encoder_init = optional big_vision ViT .npz for the LM's encoder

Soft tokens (AiT Sec. 3.3) are inference options: `soft_tokens` feeds the LM
the probability-weighted token embedding of the previous position,
`soft_decode` feeds the detokenizer the probability-weighted codebook rows,
with probabilities softmax(tau * logits) over the task's code slice. The
auxiliary loss (weight `aux_weight`) passes the teacher-forced logits the
same way, with `aux_tau`, through the frozen detokenizer, and adds a task
loss on its output (SILog for depth; dice + MSE for instance masks): its
gradients reach the LM only.

Batch mixing: the first round(mix * B) examples of every (shuffled) training
batch train the first task, the next ones the second, ...; so every example
carries the labels of all tasks (synthetic_scenes has depth and instances of
the same scenes). Mixing separate datasets is not supported.

Predict fns: `<task>` samples with the task's `sampling`; a codes task also
has `<task>_hard` (drawn tokens in, argmax codes decoded: no soft tokens).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from uvimx import decode
from uvimx import losses
from uvimx import tokenizers
from uvimx.models import lm
from uvimx.tasks import instance_sequence
from uvimx.trainers import uvim_stage2


def _slice_probs(logits, lo, size, tau):
  """softmax(tau * logits) over the vocabulary slice [lo, lo + size)."""
  return jax.nn.softmax(tau * logits[..., lo:lo + size], axis=-1)


@dataclasses.dataclass
class Sampled:
  """What the LM sampled for one task: tokens and logits (B, L[, V])."""
  tokens: jax.Array
  logits: jax.Array


def _tokenizer(config, name):
  return tokenizers.get(
      config.tokenizer,
      checkpoint_field=f"config.tasks.{name}.tokenizer.checkpoint")


class CodesTask:
  """A dense label as its tokenizer's code, one token per codeword."""

  def __init__(self, config, name, offset):
    self.tokenizer = _tokenizer(config, name)
    self.offset = offset
    self.vocab_size = self.tokenizer.num_codes
    self.seq_len = self.tokenizer.code_len
    self.aux_weight = config.get("aux_weight", 0.0)
    self.aux_tau = config.get("aux_tau", 1.0)

  def label_spec(self, batch_size):
    return self.tokenizer.label_spec(batch_size)

  def position_ranges(self):
    """(seq_len, 2): every position draws from the code slice."""
    lo = self.offset
    return np.tile([lo, lo + self.vocab_size], (self.seq_len, 1))

  def sequences(self, state, batch, rng):
    """{"targets", "inputs", "weights"}, each (B, seq_len)."""
    del rng
    tokens = self.tokenizer.encode(state, batch) + self.offset
    return {"targets": tokens, "inputs": tokens,
            "weights": jnp.ones(tokens.shape, jnp.float32)}

  def _probs(self, logits, tau):
    return _slice_probs(logits[:, :self.seq_len], self.offset,
                        self.vocab_size, tau)

  def aux_loss(self, state, logits, batch, sequences):
    """(B,) the tokenizer's task loss of the softly detokenized logits."""
    del sequences
    return self.tokenizer.aux_loss(state, self._probs(logits, self.aux_tau),
                                   batch)

  def predict(self, state, sampled, batch, soft_decode, tau):
    """The tokenizer's predictions of the sampled code (soft or hard)."""
    if soft_decode:
      probs = self._probs(sampled.logits, tau)
    else:
      probs = jax.nn.one_hot(sampled.tokens[:, :self.seq_len] - self.offset,
                             self.vocab_size)
    return self.tokenizer.decode(state, probs, batch)


class InstancesTask:
  """Objects as AiT token sequences; masks coded by a mask tokenizer."""

  def __init__(self, config, name, offset):
    self.tokenizer = _tokenizer(config, name)
    self.codec = instance_sequence.InstanceSequence(
        **config.get("sequence", {}), num_codes=self.tokenizer.num_codes,
        mask_len=self.tokenizer.code_len, offset=offset)
    self.offset = offset
    self.vocab_size = self.codec.vocab_size
    self.seq_len = self.codec.seq_len
    self.aux_weight = config.get("aux_weight", 0.0)
    self.aux_tau = config.get("aux_tau", 1.0)

  def label_spec(self, batch_size):
    """The pp op `instance_objects`' boxes, classes and box-cropped masks."""
    m = self.codec.max_instances
    return {"boxes": jax.ShapeDtypeStruct((batch_size, m, 4), jnp.float32),
            "classes": jax.ShapeDtypeStruct((batch_size, m), jnp.int32),
            "masks": jax.ShapeDtypeStruct(
                (batch_size, m, *self.tokenizer.label_size), jnp.float32)}

  def position_ranges(self):
    return np.asarray(self.codec.sampling_ranges())

  def _mask_codes(self, state, masks):
    """(B, M, S, S) masks -> (B, M, mask_len) codes of the mask tokenizer."""
    b, m = masks.shape[:2]
    codes = self.tokenizer.encode_labels(
        state, masks.reshape(b * m, *masks.shape[2:]))
    return codes.reshape(b, m, -1)

  def sequences(self, state, batch, rng):
    """`InstanceSequence.build`'s sequences of the batch's objects."""
    # Random noise boxes get the codes of an empty mask, as in AiT.
    empty = self.tokenizer.encode_labels(
        state, jnp.zeros((1, *self.tokenizer.label_size)))[0]
    return self.codec.build(rng, batch["boxes"], batch["classes"],
                            self._mask_codes(state, batch["masks"]),
                            noise_mask_codes=empty)

  def aux_loss(self, state, logits, batch, sequences):
    """(B,) AiT's dice + MSE of the softly detokenized masks.

    Per real object of the sequence, between the mask decoded from its
    teacher-forced mask-token probabilities and its ground-truth box crop;
    averaged over the example's real objects (0 without any).
    """
    b, n, k = logits.shape[0], self.codec.max_instances, self.codec.object_len
    mask_logits = logits[:, :self.seq_len].reshape(b, n, k, -1)[:, :, 5:]
    probs = _slice_probs(mask_logits, self.codec.mask_start,
                         self.codec.num_codes, self.aux_tau)
    pred = self.tokenizer.decode_labels(
        state, probs.reshape(b * n, *probs.shape[2:]))
    objects = sequences["objects"]
    real = objects >= 0
    gt = jnp.take_along_axis(batch["masks"],
                             jnp.maximum(objects, 0)[..., None, None], axis=1)
    gt = gt.reshape(pred.shape)
    everywhere = jnp.ones(pred.shape, bool)
    # Dice on the clipped masks, as AiT: unclipped, values beyond [0, 1]
    # would lower it (above 1 inside the mask, below 0 outside).
    per_object = (losses.dice(jnp.clip(pred, 0, 1)[..., None], gt[..., None],
                              everywhere)
                  + jnp.mean(jnp.square(pred - gt), axis=(1, 2)))
    per_object = per_object.reshape(b, n)
    return (jnp.sum(per_object * real, axis=1)
            / jnp.maximum(jnp.sum(real, axis=1), 1))

  def predict(self, state, sampled, batch, soft_decode, tau):
    """{"boxes" (pixels), "scores", "classes", "masks" (B, M, H, W) bool}."""
    parsed = self.codec.parse(sampled.tokens[:, :self.seq_len],
                              sampled.logits[:, :self.seq_len],
                              mask_temperature=tau)
    b, m = parsed["classes"].shape
    if soft_decode:
      probs = parsed["mask_probs"]
    else:  # The sampled codes, as CodesTask decodes its sampled tokens.
      probs = jax.nn.one_hot(parsed["mask_codes"], self.tokenizer.num_codes)
    crops = self.tokenizer.decode_labels(
        state, probs.reshape(b * m, *probs.shape[2:]))
    crops = jnp.clip(crops, 0, 1).reshape(b, m, *crops.shape[1:])
    size = batch["image"].shape[1:3]
    masks = instance_sequence.paste_masks(crops, parsed["boxes"], size) > 0.5
    boxes = parsed["boxes"] * jnp.array([size[0], size[1]] * 2, jnp.float32)
    return {"boxes": boxes, "scores": parsed["scores"],
            "classes": parsed["classes"], "masks": masks}


_TASK_TYPES = {"codes": CodesTask, "instances": InstancesTask}


class Trainer:
  """init / loss / predict_fns of the AiT LM."""

  def __init__(self, config):
    self.config = config
    self.names = sorted(config.tasks)
    offset = 1 + len(self.names)
    self.tasks = {}
    for name in self.names:
      task_config = config.tasks[name]
      kind = task_config.get("type")
      if kind not in _TASK_TYPES:
        raise ValueError(f"config.tasks.{name}.type is {kind!r}: use one of "
                         f"{sorted(_TASK_TYPES)}.")
      self.tasks[name] = _TASK_TYPES[kind](task_config, name, offset)
      offset += self.tasks[name].vocab_size
    # AiT-P replaces every input, the task token too, by the parallel token:
    # AiT uses it for one dense-token task (depth), not for sequences whose
    # objects depend on the earlier ones.
    if config.model.get("parallel") and (
        len(self.tasks) > 1 or
        any(isinstance(t, InstancesTask) for t in self.tasks.values())):
      raise ValueError(
          "config.model.parallel=True (AiT-P) needs a single 'codes' task: "
          "its inputs carry neither the task token nor earlier tokens; got "
          f"tasks {self.names}.")
    self.seq_len = max(t.seq_len for t in self.tasks.values())
    derived = {"vocab_size": offset, "seq_len": self.seq_len}
    for key, value in derived.items():
      if key in config.model and config.model[key] != value:
        raise ValueError(f"config.model.{key} is {config.model[key]}, but the "
                         f"tasks need {value}; leave it out (it is derived).")
    self.model = lm.Model(**{**config.model, **derived})
    mix = {n: config.tasks[n].get("mix", 1.0 / len(self.names))
           for n in self.names}
    if abs(sum(mix.values()) - 1) > 1e-6:
      raise ValueError(f"The tasks' mix fractions {mix} must sum to 1.")
    self.mix = [mix[n] for n in self.names]

  def input_spec(self, batch_size):
    spec = {"image": jax.ShapeDtypeStruct(
        (batch_size, *self.config.model.input_size, 3), jnp.float32)}
    for task in self.tasks.values():
      spec.update(task.label_spec(batch_size))
    return spec

  def task_ids(self, batch_size):
    """(B,) numpy: the task (index into `names`) of every training example."""
    ends = np.round(np.cumsum(self.mix) * batch_size).astype(int)
    return np.searchsorted(ends, np.arange(batch_size), side="right")

  def init(self, rng, batch):
    lm_rng, *task_rngs = jax.random.split(rng, 1 + len(self.names))
    tokens = jnp.zeros((batch["image"].shape[0], self.seq_len), jnp.int32)
    params = self.model.init(lm_rng, batch["image"], tokens)["params"]
    state = {name: self.tasks[name].tokenizer.init(r, batch)
             for name, r in zip(self.names, task_rngs)}
    return {"params": params, "state": state}

  def load_pretrained(self, variables):
    """The tokenizers' checkpoints into "state", a ViT into the encoder."""
    state = {name: self.tasks[name].tokenizer.load(variables["state"][name])
             for name in self.names}
    params = variables["params"]
    if self.config.get("encoder_init"):
      params = uvim_stage2.load_vit_encoder(self.config.encoder_init, params)
    return {"params": params, "state": state}

  def _pad(self, x):
    return jnp.pad(x, ((0, 0), (0, self.seq_len - x.shape[1])))

  def loss(self, params, state, batch, rng):
    batch_size = batch["image"].shape[0]
    task_ids = jnp.asarray(self.task_ids(batch_size))
    rows = [task_ids == i for i in range(len(self.names))]
    seq_rngs = jax.random.split(rng, len(self.names) + 1)
    sequences = {name: self.tasks[name].sequences(state[name], batch, r)
                 for name, r in zip(self.names, seq_rngs)}
    # Each example's sequences of the task it trains.
    targets, inputs, weights = (
        sum(jnp.where(rows[i][:, None], self._pad(sequences[name][key]), 0)
            for i, name in enumerate(self.names))
        for key in ("targets", "inputs", "weights"))
    logits = self.model.apply(
        {"params": params}, batch["image"], inputs, first_tokens=task_ids + 1,
        train=True, rngs={"dropout": seq_rngs[-1]})
    nll, correct = uvim_stage2.token_scores(logits, targets)
    loss = jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1e-6)
    measurements = {"xent": loss}
    for i, name in enumerate(self.names):
      task, w = self.tasks[name], weights * rows[i][:, None]
      total = jnp.maximum(jnp.sum(w), 1e-6)
      measurements[f"{name}_xent"] = jnp.sum(w * nll) / total
      measurements[f"{name}_token_accuracy"] = jnp.sum(w * correct) / total
      if task.aux_weight:
        aux = task.aux_loss(state[name], logits, batch, sequences[name])
        aux = jnp.sum(aux * rows[i]) / jnp.maximum(jnp.sum(rows[i]), 1)
        measurements[f"{name}_aux_loss"] = aux
        loss += task.aux_weight * aux
    return loss, (state, measurements)

  def sample(self, params, name, images, soft_tokens, **sampling):
    """Greedy or random tokens and logits of task `name` for every image."""
    index = self.names.index(name)
    ranges = np.zeros((self.seq_len, 2), np.int32)
    ranges[:, 1] = 1  # Past the task's own length: padding only.
    ranges[:self.tasks[name].seq_len] = self.tasks[name].position_ranges()
    tokens, _, logits = decode.sample(
        self.model, params, images, uvim_stage2.image_seeds(images),
        first_tokens=jnp.full(images.shape[:1], index + 1),
        position_ranges=ranges, soft_tokens=soft_tokens, with_logits=True,
        **sampling)
    return Sampled(tokens[:, 0], logits[:, 0])

  def predict_fns(self):
    fns = {}
    for name in self.names:
      sampling = dict(self.config.tasks[name].get("sampling", {}))
      options = dict(soft_tokens=sampling.pop("soft_tokens", False),
                     soft_decode=sampling.pop("soft_decode", False),
                     tau=sampling.pop("tau", 1.0))
      fns[name] = self._predict_fn(name, sampling, **options)
      if isinstance(self.tasks[name], CodesTask):
        fns[f"{name}_hard"] = self._predict_fn(
            name, sampling, soft_tokens=False, soft_decode=False, tau=1.0)
    return fns

  def _predict_fn(self, name, sampling, soft_tokens, soft_decode, tau):
    def predict(variables, batch):
      sampled = self.sample(variables["params"], name, batch["image"],
                            soft_tokens, **sampling)
      return self.tasks[name].predict(variables["state"][name], sampled,
                                      batch, soft_decode, tau)
    return predict
