"""UViM stage I: the restricted oracle and the base model, joined by a VQ.

The oracle (`encode`) reads the label, optionally with the image
(`with_encoder_ctx`), and compresses it into `code_len` discrete codewords;
the base model (`decode`) reconstructs the label from that code, optionally
with the image (`with_decoder_ctx`). Both are ViTs over the same patch grid;
the bottleneck maps the grid to the code sequence and back, by learned
token-mixing matrices or by linear resizing of a square code grid.

Constructor arguments, parameter and state names follow big_vision's
`models/proj/uvim/vit.py`, so its stage-I checkpoints load by name
(`uvimx.checkpoint.load_big_vision_npz`). Inputs and outputs are dicts of
per-patch arrays (B, num_patches, *shape), e.g. one-hot labels
(B, num_patches, C, patch_pixels); the tasks in `uvimx/tasks` make them.

The VQ dictionary and counts live in the "state" collection: `init` needs a
"state" rng (or falls back to "params"), training calls need the "dropout"
(code dropout) and "vqvae" (codeword splitting) rngs and `mutable=["state"]`.
"""
from typing import Mapping, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uvimx.models import vit
from uvimx.models import vq

CODE_DROPOUT = ("none", "random", "prefix")


def code_dropout_mask(key, shape, mode, rate=1.0):
  """Which code positions the base model sees in a training step.

  As big_vision: position i of L has importance (L - i) / (L + 1), and each
  example keeps the positions whose importance exceeds a uniform threshold,
  i.e. a prefix of uniformly random length (on average half the code).
  "prefix" keeps that prefix, which orders the code coarse to fine; "random"
  keeps the same number of positions, shuffled independently per example.

  Args:
    key: PRNG key.
    shape: (batch, code_len).
    mode: "prefix" or "random".
    rate: the fraction of examples whose code is dropped out at all; the
      others keep every position (1.0, UViM's: all of them).

  Returns:
    A bool mask of `shape`, True where the codeword is kept.
  """
  batch, code_len = shape
  key_threshold, key_shuffle = jax.random.split(key)
  importance = jnp.linspace(1.0, 0.0, code_len + 2)[1:-1]
  threshold = jax.random.uniform(key_threshold, (batch,))
  mask = importance[None, :] > threshold[:, None]
  if mode == "random":
    mask = jax.random.permutation(key_shuffle, mask, axis=-1,
                                  independent=True)
  if rate < 1.0:
    # fold_in leaves the draws above as UViM's for rate 1.
    spared = jax.random.uniform(jax.random.fold_in(key, 1), (batch,)) >= rate
    mask = mask | spared[:, None]
  return mask


def _resize_tokens(x, src, dst):
  """Linear resize of (B, h*w, C) tokens from grid `src` to grid `dst`."""
  x = einops.rearrange(x, "b (h w) c -> b h w c", h=src[0], w=src[1])
  x = jax.image.resize(x, (x.shape[0], *dst, x.shape[-1]), method="linear")
  return einops.rearrange(x, "b h w c -> b (h w) c")


class Model(nn.Module):
  """Stage-I VQ model: label (+ image) -> code -> label.

  Attributes:
    inputs: {name: trailing shape} of the oracle's per-patch inputs; each gets
      a DenseGeneral `embedding_{name}` over its trailing axes.
    outputs: {name: trailing shape} of the per-patch logits, one
      DenseGeneral `head_{name}` each.
    input_size: (H, W) of the image and labels.
    patch_size: (hp, wp); the token grid is input_size // patch_size.
    code_len: codewords per example; a square if `bottleneck_resize`.
    width: token width of both ViTs.
    enc_depth: oracle transformer blocks.
    dec_depth: base model transformer blocks.
    mlp_dim: MLP hidden width (None: 4 * width).
    num_heads: attention heads.
    posemb: "learn" or "sincos2d".
    dropout: dropout rate in the oracle's blocks (as big_vision, the base
      model runs without dropout: in training only its code is dropped).
    head_zeroinit: zero-initialised head kernels.
    dict_size: codewords in the dictionary.
    codeword_dim: codeword size (None: width).
    dict_momentum: EMA discount of the dictionary learning.
    quantize: False skips the quantisation (the code is still computed).
    min_count: discounted count below which a codeword is re-seeded.
    with_encoder_ctx: the oracle also sees the image (a patch-conv stem).
    with_decoder_ctx: the base model also sees the image.
    code_dropout: "none", "random" or "prefix", see `code_dropout_mask`.
    code_dropout_rate: the fraction of training examples whose code is
      dropped out (the others keep all of it); 1.0 as UViM.
    bottleneck_resize: linear resizing between the token grid and a
      sqrt(code_len)^2 code grid instead of learned token-mixing matrices.
    zero_decoder_seq: the base model gets an all-zero code (it then sees only
      the image: the "base model only" ablation).
  """
  inputs: Mapping[str, Sequence[int]]
  outputs: Mapping[str, Sequence[int]]
  input_size: Sequence[int] = (256, 256)
  patch_size: Sequence[int] = (8, 8)
  code_len: int = 256
  width: int = 768
  enc_depth: int = 6
  dec_depth: int = 6
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  posemb: str = "learn"
  dropout: float = 0.0
  head_zeroinit: bool = True
  dict_size: int = 512
  codeword_dim: Optional[int] = None
  dict_momentum: float = 0.995
  quantize: bool = True
  min_count: float = 0.1
  with_encoder_ctx: bool = False
  with_decoder_ctx: bool = False
  code_dropout: str = "none"
  code_dropout_rate: float = 1.0
  bottleneck_resize: bool = False
  zero_decoder_seq: bool = False

  def setup(self):
    self._check_config()
    self.grid = tuple(np.array(self.input_size) // np.array(self.patch_size))
    num_tokens = int(np.prod(self.grid))
    side = int(round(self.code_len ** 0.5))
    self.code_grid = (side, side)

    self.embeddings = {
        k: nn.DenseGeneral(self.width, axis=tuple(range(-len(shape), 0)),
                           name=f"embedding_{k}")
        for k, shape in self.inputs.items()}
    kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
    self.heads = {k: nn.DenseGeneral(tuple(shape), name=f"head_{k}", **kw)
                  for k, shape in self.outputs.items()}
    conv = lambda name: nn.Conv(self.width, tuple(self.patch_size),
                                strides=tuple(self.patch_size),
                                padding="VALID", name=name)
    if self.with_encoder_ctx:
      self.ctx_enc = conv("ctx_enc_embedding")
    if self.with_decoder_ctx:
      self.ctx_dec = conv("ctx_dec_embedding")

    vit_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                  dropout=self.dropout)
    self.pos_embedding_encoder = vit.get_posemb(
        self, self.posemb, self.grid, self.width, "pos_embedding_encoder")
    self.encoder = vit.Encoder(depth=self.enc_depth, **vit_kw)
    self.pos_embedding_decoder = vit.get_posemb(
        self, self.posemb, self.grid, self.width, "pos_embedding_decoder")
    self.decoder = vit.Encoder(depth=self.dec_depth, **vit_kw)
    if not self.bottleneck_resize:
      init = nn.initializers.xavier_uniform()
      self.bottleneck_downsample = self.param(
          "bottleneck_downsample", init, (num_tokens, self.code_len))
      self.bottleneck_upsample = self.param(
          "bottleneck_upsample", init, (self.code_len, num_tokens))
    self.encoder_head = nn.Dense(self.codeword_size)
    self.decoder_stem = nn.Dense(self.width)

    # A random unit-scale start; counts of 1 make it the initial codebook.
    normal = nn.initializers.normal(stddev=1 / np.sqrt(self.dict_size))
    self.dictionary = self.variable(
        "state", "dictionary",
        lambda: normal(self.make_rng("state"),
                       (self.dict_size, self.codeword_size)))
    self.counts = self.variable("state", "counts", jnp.ones,
                                (self.dict_size,))

  @property
  def codeword_size(self):
    """The codewords' dimension (`codeword_dim`, or None: `width`)."""
    return self.codeword_dim or self.width

  def _check_config(self):
    """Raises on argument combinations big_vision would silently misread."""
    if self.code_dropout not in CODE_DROPOUT:
      raise ValueError(f"Unknown code_dropout {self.code_dropout!r}: use one "
                       f"of {CODE_DROPOUT}.")
    if not self.min_count > 0:
      raise ValueError(
          f"min_count must be > 0, got {self.min_count}: an unused "
          "codeword's discounted count would decay to 0, and the codeword, "
          "its sums over its count, to 0/0 = NaN. A small value (e.g. 1e-6) "
          "makes LBG splitting rare.")
    if not 0 <= self.code_dropout_rate <= 1:
      raise ValueError(f"code_dropout_rate is a fraction of the examples, "
                       f"in [0, 1]; got {self.code_dropout_rate}.")
    if np.any(np.array(self.input_size) % np.array(self.patch_size)):
      raise ValueError(f"input_size {tuple(self.input_size)} is not a "
                       f"multiple of patch_size {tuple(self.patch_size)}.")
    if (self.bottleneck_resize and
        int(round(self.code_len ** 0.5)) ** 2 != self.code_len):
      raise ValueError(f"bottleneck_resize needs a square code_len (a "
                       f"square code grid), got {self.code_len}.")

  def _ctx_tokens(self, conv, ctx, flag):
    """The image as (B, num_patches, width) tokens."""
    if ctx is None:
      raise ValueError(f"The model has {flag}=True: pass the image as ctx=.")
    return einops.rearrange(conv(ctx), "b h w c -> b (h w) c")

  def get_codewords(self):
    """The (dict_size, codeword_dim) codebook, unit-norm rows."""
    return vq.codewords(self.dictionary.value, self.counts.value)

  def encode(self, x, *, ctx=None, train=False, update_dict=True):
    """Label (+ image) -> quantised bottleneck (B, code_len, codeword_dim).

    Args:
      x: {name: (B, num_patches, *inputs[name])}.
      ctx: (B, H, W, 3) image, if `with_encoder_ctx`.
      train: enables dropout and, with `update_dict`, dictionary learning.
      update_dict: in training, update the dictionary (EMA + splitting).

    Returns:
      (bottleneck, out): the quantised vectors (straight-through) or, with
      `quantize=False`, the unquantised ones; `out` holds "stem" (the
      per-input embeddings), "bottleneck" (standardised, pre-quantisation),
      "bottleneck_q", "code" (B, code_len) int32 indices, and the batch's
      codebook usage "codebook_max_ratio" and "codebook_zeros_ratio".
    """
    missing = sorted(set(self.inputs) - set(x))
    if missing:
      raise ValueError(f"The oracle's inputs lack {missing} (model inputs: "
                       f"{sorted(self.inputs)}).")
    out = {"stem": {k: self.embeddings[k](x[k]) for k in self.inputs}}
    x = sum(out["stem"].values())
    if self.with_encoder_ctx:
      x = x + self._ctx_tokens(self.ctx_enc, ctx, "with_encoder_ctx")
    x = self.encoder(x + self.pos_embedding_encoder, deterministic=not train)

    if self.bottleneck_resize:
      x = _resize_tokens(x, self.grid, self.code_grid)
    else:
      x = jnp.einsum("btc,tn->bnc", x, self.bottleneck_downsample)
    # Standardised vectors have the scale of the unit-norm codewords
    # (times sqrt(D)), whatever the encoder's output scale.
    x = out["bottleneck"] = jax.nn.standardize(self.encoder_head(x), axis=-1)
    x_q, out["code"] = vq.quantize(x, self.get_codewords())
    out["bottleneck_q"] = x_q

    counts, sums = vq.assignment_stats(out["code"], x, self.dict_size)
    out.update(vq.codebook_stats(counts))
    if train and update_dict:
      dictionary, total = vq.ema_update(
          self.dictionary.value, self.counts.value, counts, sums,
          self.dict_momentum)
      self.dictionary.value, self.counts.value = vq.split_unused(
          dictionary, total, self.make_rng("vqvae"), self.min_count)

    if not self.quantize:
      x_q = out["bottleneck_q"] = x
    return x_q, out

  def decode(self, x, *, ctx=None, discrete_input=False, train=False):
    """Code (+ image) -> logits.

    Args:
      x: (B, code_len, codeword_dim) vectors, or (B, code_len) int codeword
        indices with `discrete_input`.
      ctx: (B, H, W, 3) image, if `with_decoder_ctx`.
      discrete_input: `x` holds indices into the codebook.
      train: enables code dropout.

    Returns:
      (logits, out): logits {name: (B, num_patches, *outputs[name])}, and
      out = {"logits": logits}.
    """
    if discrete_input:
      x = self.get_codewords()[x]
    if self.zero_decoder_seq:
      x = jnp.zeros_like(x)
    if train and self.code_dropout != "none":
      mask = code_dropout_mask(self.make_rng("dropout"), x.shape[:2],
                               self.code_dropout, self.code_dropout_rate)
      x = x * mask[:, :, None]

    x = self.code_tokens(x)
    if self.with_decoder_ctx:
      x = x + self._ctx_tokens(self.ctx_dec, ctx, "with_decoder_ctx")
    x = self.decoder(x + self.pos_embedding_decoder)

    logits = {k: self.heads[k](x) for k in self.outputs}
    return logits, {"logits": logits}

  def code_tokens(self, x):
    """Code vectors (B, code_len, codeword_dim) -> (B, num_patches, width).

    The decoder's tokens from the code, to which it adds the image's patch
    embeddings (`with_decoder_ctx`) and the position embeddings.
    """
    x = self.decoder_stem(x)
    if self.bottleneck_resize:
      return _resize_tokens(x, self.code_grid, self.grid)
    return jnp.einsum("bnc,nt->btc", x, self.bottleneck_upsample)

  def zero_code_tokens(self):
    """(1, num_patches, width): all the decoder adds to the image's tokens
    when the whole code is zero (dropped by code dropout, or
    `zero_decoder_seq`): the code tokens of zero vectors plus the position
    embeddings."""
    zeros = jnp.zeros((1, self.code_len, self.codeword_size))
    return self.code_tokens(zeros) + self.pos_embedding_decoder

  def __call__(self, x, *, ctx=None, train=False, update_dict=True):
    """encode, then decode the (straight-through) quantised bottleneck."""
    x, out_enc = self.encode(x, ctx=ctx, train=train, update_dict=update_dict)
    logits, out_dec = self.decode(x, ctx=ctx, train=train)
    return logits, {**out_enc, **out_dec}
