"""UViM stage II: a language model that predicts the stage-I code from the image.

A frozen stage-I model (`config.oracle`) turns every training label into its
guiding code on the fly; the encoder-decoder LM (`uvimx/models/lm.py`) learns
it with teacher forcing. At evaluation the LM samples a code
(`uvimx/decode.py`) and the stage-I base model decodes it, with the image,
into the task's prediction. The config:

  config.oracle = dict(model=<stage-I model kwargs>,
                       checkpoint="S1_WORKDIR/checkpoints/N" or "x.npz")
  config.model = dict(patches=dict(size=...), input_size=..., num_layers=...,
                      emb_dim=..., seq_len=<code_len>,
                      vocab_size=<dict_size + 1>, autoregressive=True, ...)
  config.task = the stage-I task
  config.sampling = dict(temperature=0.0, top_k=0, top_p=0.0, num_samples=4)
  config.diversity_sampling = overrides of config.sampling for the
                              "sample_diversity" fn, whose temperature is
                              1.0 unless they give another
  config.encoder_init = optional big_vision ViT .npz for the LM's encoder (older
                        layouts fixed, position embeddings resampled)
  config.encoder_from_base_model = True: instead, start the LM's encoder as
                        the stage-I base model (its image stem and decoder
                        ViT, which must have the LM encoder's shapes): an
                        in-domain pre-trained encoder where no ImageNet ViT
                        is at hand

The frozen model lives in the model state ("state"/"oracle"), so a stage-II
checkpoint holds everything its predictions need. Code tokens are stage-I
indices + 1: token 0 is the LM's BOS/padding, as in big_vision.
"""
from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections

from uvimx import checkpoint
from uvimx import decode
from uvimx import tokenizers
from uvimx.models import lm
from uvimx.models import vit

# big_vision ViT checkpoint names -> the LM's encoder names.
_VIT_TO_LM = (("Transformer/", "encoder/"), ("embedding/", "EmbedPatches/"),
              ("pos_embedding", "pos_embedding_encoder"))
# Stage-I base model names -> the LM's encoder names. With a zero code the
# base model is a ViT over the image: patch stem, position embeddings, blocks.
_BASE_MODEL_TO_LM = (("decoder/", "encoder/"),
                     ("ctx_dec_embedding/", "EmbedPatches/"),
                     ("pos_embedding_decoder", "pos_embedding_encoder"))


def image_seeds(images):
  """(B,) int32 seeds from the images, so every example gets its own draw.

  As big_vision's predict fn: the seed depends only on the example, not on
  its batch or position in it.
  """
  return jax.lax.bitcast_convert_type(
      jnp.sum(images, axis=(1, 2, 3)), jnp.int32)


class Trainer:
  """init / loss / predict_fns of the stage-II LM."""

  def __init__(self, config):
    self.config = config
    self.oracle = tokenizers.Uvim(
        ml_collections.ConfigDict({**config.oracle, "task": config.task}),
        checkpoint_field="config.oracle.checkpoint")
    self.model = lm.Model(**config.model)
    if config.get("encoder_init") and config.get("encoder_from_base_model"):
      raise ValueError("Set config.encoder_init or "
                       "config.encoder_from_base_model, not both.")
    expected = {"seq_len": self.oracle.code_len,
                "vocab_size": self.oracle.num_codes + 1}
    for key, value in expected.items():
      if config.model[key] != value:
        raise ValueError(
            f"config.model.{key} is {config.model[key]}, but the stage-I "
            f"model (config.oracle.model) needs {value}.")
    self.sampling = dict(config.get("sampling", {}))
    self.num_samples = self.sampling.pop("num_samples", 4)
    # Diversity is measured at T=1 (the paper's samples), not at the T=0 of
    # the metrics, where every sample would be the same.
    self.diversity_sampling = {"temperature": 1.0,
                               **config.get("diversity_sampling", {})}

  def input_spec(self, batch_size):
    return self.oracle.label_spec(batch_size)

  def init(self, rng, batch):
    lm_rng, oracle_rng = jax.random.split(rng)
    oracle = self.oracle.init(oracle_rng, batch)
    tokens = jnp.zeros((batch["image"].shape[0], self.config.model.seq_len),
                       jnp.int32)
    params = self.model.init(lm_rng, batch["image"], tokens)["params"]
    return {"params": params, "state": {"oracle": oracle}}

  def load_pretrained(self, variables):
    """The stage-I checkpoint into "state", a ViT into the LM's encoder."""
    oracle = self.oracle.load(variables["state"]["oracle"])
    params = variables["params"]
    if self.config.get("encoder_init"):
      params = load_vit_encoder(self.config.encoder_init, params)
    if self.config.get("encoder_from_base_model"):
      params = base_model_as_encoder(self.oracle.model, oracle, params)
    if not (self.config.get("encoder_init")
            or self.config.get("encoder_from_base_model")):
      # UViM's LMs start from an ImageNet-21k ViT; a missing flag should not
      # pass as a run of the paper's config.
      logging.warning("The LM's encoder starts from random weights: neither "
                      "config.encoder_init nor "
                      "config.encoder_from_base_model is set.")
    return {"params": params, "state": {"oracle": oracle}}

  def _codes(self, state, batch):
    """The frozen stage-I code of every label, as LM tokens (index + 1)."""
    return jax.lax.stop_gradient(self.oracle.encode(state["oracle"], batch)) + 1

  def loss(self, params, state, batch, rng):
    tokens = self._codes(state, batch)
    logits = self.model.apply({"params": params}, batch["image"], tokens,
                              train=True, rngs={"dropout": rng})
    nll, correct = token_scores(logits, tokens)
    return jnp.mean(nll), (state, {"token_accuracy": jnp.mean(correct)})

  def sample_codes(self, params, images, num_samples, seeds=None,
                   **sampling):
    """LM tokens (B, N, L): `num_samples` codes sampled for every image.

    Args:
      params: the LM's params.
      images: (B, H, W, 3), the model's input images.
      num_samples: N.
      seeds: (B,) per-example seeds; by default derived from the images, so
        an image gets the same draws whatever batch it is in.
      **sampling: overrides of config.sampling (temperature, top_k, top_p).

    Returns:
      int32 tokens in [1, vocab_size): stage-I indices + 1.
    """
    if seeds is None:
      seeds = image_seeds(images)
    codes, _ = decode.sample(self.model, params, images, seeds,
                             num_samples=num_samples,
                             **{**self.sampling, **sampling})
    # A trained LM does not predict the BOS token 0; should an untrained
    # one, it decodes as codeword 0 rather than out of range.
    return jnp.maximum(codes, 1)

  def _decode_labels(self, state, tokens, images):
    """Stage-I base model: LM tokens (B, L) + images -> task prediction."""
    return self.oracle.decode(state["oracle"], tokens - 1, {"image": images})

  def predict_fns(self):
    def predict(variables, batch):
      """The task prediction from one sampled code (config.sampling)."""
      codes = self.sample_codes(variables["params"], batch["image"], 1)[:, 0]
      return self._decode_labels(variables["state"], codes, batch["image"])

    def sample_diversity(variables, batch):
      """{"diversity": (B,)}: mean pairwise RMS distance between samples.

      Over `num_samples` codes per image sampled with
      config.diversity_sampling, decoded to the task's first prediction (e.g.
      the colours); 0 when all samples agree.
      """
      images = batch["image"]
      codes = self.sample_codes(variables["params"], images, self.num_samples,
                                **self.diversity_sampling)
      decoded = jax.vmap(
          lambda c: self._decode_labels(variables["state"], c, images),
          in_axes=1, out_axes=1)(codes)
      x = next(iter(decoded.values())).astype(jnp.float32)
      x = x.reshape(x.shape[:2] + (-1,))
      rms = jnp.sqrt(jnp.mean(
          jnp.square(x[:, :, None] - x[:, None, :]), axis=-1))
      n = self.num_samples
      return {"diversity": jnp.sum(rms, axis=(1, 2)) / max(n * (n - 1), 1)}

    def code_loss(variables, batch):
      """{"xent", "token_accuracy"}: per-example teacher-forced scores."""
      tokens = self._codes(variables["state"], batch)
      logits = self.model.apply({"params": variables["params"]},
                                batch["image"], tokens)
      nll, correct = token_scores(logits, tokens)
      return {"xent": jnp.mean(nll, axis=1),
              "token_accuracy": jnp.mean(correct, axis=1)}

    return {"predict": predict, "sample_diversity": sample_diversity,
            "code_loss": code_loss}


def token_scores(logits, tokens):
  """(B, L) negative log-likelihoods of `tokens` and whether argmax hits."""
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
  return nll, jnp.argmax(logits, axis=-1) == tokens


def _with_encoder(source, renames, params, what):
  """The LM params with the encoder taken from `source` params.

  Args:
    source: nested params holding an image ViT.
    renames: (source prefix, LM prefix) pairs.
    params: the LM's params.
    what: names the source in errors.

  Returns:
    `params` with every encoder leaf (`EmbedPatches`, `encoder`,
    `pos_embedding_encoder`) replaced; learned position embeddings of
    another grid size are resampled to the LM's (`vit.resample_posemb`).
  """
  flat = {}
  for name, value in traverse_util.flatten_dict(source, sep="/").items():
    for old, new in renames:
      if name.startswith(old):
        flat[new + name[len(old):]] = value
  lm_flat = traverse_util.flatten_dict(params, sep="/")
  posemb = "pos_embedding_encoder"
  if posemb in flat and posemb in lm_flat:
    flat[posemb] = vit.resample_posemb(flat[posemb], lm_flat[posemb].shape[1])
  missing = sorted(k for k in lm_flat
                   if k.startswith(("encoder/", "EmbedPatches/",
                                    "pos_embedding_encoder"))
                   and k not in flat)
  wrong = sorted(k for k, v in flat.items()
                 if k in lm_flat and v.shape != lm_flat[k].shape)
  # E.g. the blocks of a deeper ViT: the LM would silently keep a part of it.
  unexpected = sorted(k for k in flat if k not in lm_flat)
  if missing or wrong or unexpected:
    raise ValueError(f"{what} does not fit the LM encoder: missing {missing}, "
                     f"wrong shapes {wrong}, not in the LM {unexpected} (is "
                     f"config.model.num_layers the source's depth?).")
  return traverse_util.unflatten_dict({**lm_flat, **flat}, sep="/")


def load_vit_encoder(path, params):
  """The LM params with the encoder taken from a big_vision ViT .npz.

  The file may be a big_vision training checkpoint ("params/..." keys) or a
  bare ViT (as the "How to train your ViT" .npz files), of older layouts
  too (`vit.fix_old_checkpoint`); position embeddings of another grid size
  are resampled to the LM's (`vit.resample_posemb`).
  """
  tree = checkpoint.load_big_vision_npz(path)
  vit_params = vit.fix_old_checkpoint(tree.get("params", tree))
  return _with_encoder(vit_params, _VIT_TO_LM, params,
                       f"ViT checkpoint {path!r}")


def base_model_as_encoder(stage1_model, stage1_variables, params):
  """The LM params with the encoder taken from the stage-I base model.

  The base model (`uvimx/models/uvim.py`, `with_decoder_ctx`) adds the
  image's patch embeddings (`ctx_dec_embedding`) to the code's tokens and
  runs the decoder ViT; code dropout trains it on images whose whole code
  is zero, too. Its image stem and decoder blocks become the LM's
  `EmbedPatches` and `encoder`, and the zero code's tokens plus its position
  embeddings the LM's learned `pos_embedding_encoder`, so that the LM's
  encoder computes the base model's zero-code features.

  Args:
    stage1_model: the stage-I `uvimx.models.uvim.Model`.
    stage1_variables: its variables ("params" and "state").
    params: the LM's params.

  Returns:
    `params` with the encoder replaced.
  """
  if not stage1_model.with_decoder_ctx:
    raise ValueError("config.encoder_from_base_model needs a stage-I model "
                     "with with_decoder_ctx=True (its image stem).")
  if "pos_embedding_encoder" not in params:
    raise ValueError("config.encoder_from_base_model needs the LM's learned "
                     "encoder position embeddings: set "
                     "config.model.posemb_type='learn'.")
  # Copies: the train step donates params and state, which may not share
  # buffers.
  source = jax.tree.map(jnp.array, dict(stage1_variables["params"]))
  source["pos_embedding_decoder"] = stage1_model.apply(
      stage1_variables, method=stage1_model.zero_code_tokens)
  return _with_encoder(source, _BASE_MODEL_TO_LM, params,
                       "The stage-I base model")
