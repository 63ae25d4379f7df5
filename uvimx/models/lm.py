"""UViM stage II: an encoder-decoder LM that predicts the guiding code.

As big_vision's `big_vision/models/proj/uvim/vtt.py` `Model`, with the same
constructor arguments and parameter names (`EmbedPatches`, `encoder`,
`pos_embedding_encoder`, `pos_embedding_decoder`, `decoder/EncDecBlock{i}/
{LayerNorm1, SelfAttn, LayerNorm2, CrossAttn, LayerNorm3, MLP}`,
`decoder/{EmbedTargets, LayerNorm, LogitsDense}`), so its stage-II
checkpoints load by name. The image encoder is a ViT over patches; the
decoder is a pre-LN transformer with causal self-attention over the code and
cross-attention to the encoded image. Token 0 is BOS/padding: code tokens are
the stage-I codeword indices + 1.

Decoding uses an explicit KV cache (`init_cache`, `decode_step`): the
cross-attention keys and values of the image are projected once per image,
not at every step, and are shared by all samples of that image.

`autoregressive=False` is the paper's "no Autoreg." ablation: the decoder
sees only the position embeddings (no target tokens, no causal mask) and
predicts every code position in one pass. `parallel=True` is AiT-P (Ning et
al., 2023, Sec. 3.4): every position's input is one learned token
(`ParallelToken`) plus its position embedding, under the causal mask; as no
input depends on an output, one pass decodes the whole code too.

Inputs to the decoder are token ids, or, for AiT's soft tokens, probability
vectors over the vocabulary: their input embedding is the probability-
weighted mean of the token embeddings. The first input is token 0 (BOS)
unless the caller gives another, e.g. a task token.

Dimensions: B images, N samples per image, R = B * N sequences (image-major),
P image patches, L code length (`seq_len`), E width, H heads, D = E / H,
V vocabulary.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uvimx.models import vit
from uvimx.models import vq


def shift_right(x, first_tokens=None):
  """Teacher forcing input: (R, L) tokens -> first token, then x[:, :-1].

  The first token is BOS (0), or `first_tokens` (R,) (e.g. a task token).
  """
  if first_tokens is None:
    first_tokens = jnp.zeros(x.shape[:1], x.dtype)
  return jnp.concatenate([first_tokens[:, None].astype(x.dtype), x[:, :-1]],
                         axis=1)


class Attention(nn.Module):
  """Multi-head dot-product attention without biases.

  Parameters `query`, `key`, `value` (E, H, D) and `out` (H, D, E), as flax's
  `MultiHeadDotProductAttention(use_bias=False)` that big_vision uses. Keys
  and values are projected by `kv` so that a caller can cache them.
  """
  num_heads: int
  width: int
  dropout_rate: float = 0.0

  def setup(self):
    heads = (self.num_heads, self.width // self.num_heads)
    self.query = nn.DenseGeneral(heads, use_bias=False)
    self.key = nn.DenseGeneral(heads, use_bias=False)
    self.value = nn.DenseGeneral(heads, use_bias=False)
    self.out = nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False)
    self.dropout = nn.Dropout(self.dropout_rate)

  def kv(self, x):
    """(B, K, E) -> keys and values, each (B, H, K, D)."""
    # Heads before positions: the layout of the attention matmuls' batch
    # dimensions, which XLA:CPU then need not transpose at every step.
    return (jnp.swapaxes(self.key(x), 1, 2),
            jnp.swapaxes(self.value(x), 1, 2))

  def __call__(self, x, k, v, mask=None, deterministic=True):
    """Attends from x (B, Q, E) to k, v; mask (Q, K) True where allowed.

    k and v are (B, H, K, D), or (B * H, K, D) with the heads folded into the
    batch: the layout of the decoding cache (see `EncoderDecoderBlock`).
    """
    q = jnp.swapaxes(self.query(x), 1, 2)
    b, h, length, d = q.shape
    if k.ndim == 3:
      q = q.reshape(b * h, length, d)
    out = vit.attend(q, k, v, mask,
                     lambda w: self.dropout(w, deterministic=deterministic))
    out = out.reshape(b, h, length, d)
    return self.out(jnp.swapaxes(out, 1, 2))


class EncoderDecoderBlock(nn.Module):
  """Pre-LN decoder block: causal self-attention, cross-attention, MLP."""
  width: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0

  def setup(self):
    attn = dict(num_heads=self.num_heads, width=self.width,
                dropout_rate=self.dropout_rate)
    self.LayerNorm1 = nn.LayerNorm()
    self.SelfAttn = Attention(**attn)
    self.LayerNorm2 = nn.LayerNorm()
    self.CrossAttn = Attention(**attn)
    self.LayerNorm3 = nn.LayerNorm()
    self.MLP = vit.MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout_rate)
    self.dropout = nn.Dropout(self.dropout_rate)

  def cross_kv(self, encoded):
    """Cross-attention keys and values of the encoded image (B, P, E)."""
    return self.CrossAttn.kv(encoded)

  def __call__(self, x, cross_kv, self_kv, index, mask, deterministic=True):
    """Applies the block to x (R, Q, E), the tokens at index..index+Q-1.

    Args:
      x: token activations.
      cross_kv: `cross_kv(encoded)` of the B = R / N images.
      self_kv: None, or the (R * H, L, D) key and value cache, into which
        this call writes x's keys and values at `index`; attention then spans
        the whole cache (the mask hides slots not yet written).
      index: position of x's first token.
      mask: (Q, K) self-attention mask, or None.
      deterministic: no dropout.

    Returns:
      The block's output and the self-attention keys and values it attended.
    """
    drop = lambda y: self.dropout(y, deterministic=deterministic)
    y = self.LayerNorm1(x)
    k, v = self.SelfAttn.kv(y)
    if self_kv is not None:
      # The cache holds the heads folded into the batch, so that the updated
      # cache and the attention's matmuls see one shape. With (R, H, L, D) and
      # R = 1, XLA:CPU gave the matmuls a bitcast without the unit dim and
      # then duplicated the update for it: 33 cache copies per step, and
      # 1.34x the time per code at batch 1 (benchmarks/decode.py).
      fold = lambda t: t.reshape((-1,) + t.shape[2:])
      k = jax.lax.dynamic_update_slice_in_dim(self_kv[0], fold(k), index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(self_kv[1], fold(v), index, 1)
    x = x + drop(self.SelfAttn(y, k, v, mask, deterministic))

    # Samples of one image share its keys: fold them into the query axis.
    r, q, e = x.shape
    b = cross_kv[0].shape[0]
    y = self.LayerNorm2(x).reshape(b, r // b * q, e)
    y = self.CrossAttn(y, *cross_kv, deterministic=deterministic)
    x = x + drop(y.reshape(r, q, e))

    # No dropout on the MLP's output, as big_vision's vtt block (the MLP
    # drops out inside).
    y = self.MLP(self.LayerNorm3(x), deterministic=deterministic)
    return x + y, (k, v)


class Decoder(nn.Module):
  """Token embedding, `num_layers` EncDecBlocks, LayerNorm, logits."""
  emb_dim: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  dropout_rate: float = 0.0
  output_vocab_size: int = 32000
  zero_decoder_seq: bool = False
  autoregressive: bool = True
  parallel: bool = False

  def setup(self):
    if self.parallel:
      self.ParallelToken = self.param(
          "ParallelToken", nn.initializers.normal(stddev=1.0),
          (1, 1, self.emb_dim))
    elif self.autoregressive:
      self.EmbedTargets = nn.Embed(
          self.output_vocab_size, self.emb_dim,
          embedding_init=nn.initializers.normal(stddev=1.0))
    self.blocks = [
        EncoderDecoderBlock(
            width=self.emb_dim, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            dropout_rate=self.dropout_rate, name=f"EncDecBlock{i}")
        for i in range(self.num_layers)]
    self.LayerNorm = nn.LayerNorm()
    # Zero logits at init: the LM starts from the uniform distribution.
    self.LogitsDense = nn.Dense(self.output_vocab_size,
                                kernel_init=nn.initializers.zeros)
    self.dropout = nn.Dropout(self.dropout_rate)

  def cross_kv(self, encoded):
    """Per layer, the cross-attention keys and values of `encoded`."""
    return [block.cross_kv(encoded) for block in self.blocks]

  def embed(self, tokens, pos_emb):
    """Inputs and their (1, Q, E) position embeddings -> (R, Q, E).

    Args:
      tokens: (R, Q) token ids, or (R, Q, V) probabilities (soft tokens),
        whose embedding is sum_k p_k E_k. Ignored by the parallel decoder,
        whose every input is the `ParallelToken`.
      pos_emb: the position embeddings of those Q positions.
    """
    if self.parallel:
      return jnp.broadcast_to(self.ParallelToken + pos_emb,
                              tokens.shape[:2] + (self.emb_dim,))
    if jnp.issubdtype(tokens.dtype, jnp.floating):
      x = vq.soft_codewords(tokens, self.EmbedTargets.embedding)
    else:
      x = self.EmbedTargets(tokens)
    if self.zero_decoder_seq:
      x = jnp.zeros_like(x)
    return x + pos_emb

  def __call__(self, x, cross_kv, self_kv, index, mask, deterministic=True):
    """Logits (R, Q, V) for the positions index..index+Q-1.

    Args:
      x: (R, Q, E) embedded inputs of those positions.
      cross_kv: `cross_kv(encoded)`.
      self_kv: None or the per-layer self-attention caches.
      index: position of the first input.
      mask: (Q, K) self-attention mask, or None.
      deterministic: no dropout.

    Returns:
      The logits and the per-layer self-attention keys and values.
    """
    x = self.dropout(x, deterministic=deterministic)
    new_kv = []
    for block, layer_cross, layer_self in zip(
        self.blocks, cross_kv, self_kv or [None] * self.num_layers):
      x, kv = block(x, layer_cross, layer_self, index, mask, deterministic)
      new_kv.append(kv)
    return self.LogitsDense(self.LayerNorm(x)), new_kv


class Model(nn.Module):
  """Stage-II LM: ViT image encoder and code decoder (big_vision's vtt).

  Attributes:
    patches: {"size": (ph, pw)} (a dict or ConfigDict), the patch size.
    num_heads, num_layers, mlp_dim, dropout_rate: of both encoder and decoder.
    emb_dim: width of both.
    vocab_size: code tokens, stage-I dict_size + 1 (0 = BOS/padding).
    seq_len: code length L.
    input_size: image (H, W).
    posemb_type: "sincos2d" or "learn", for encoder and decoder.
    zero_decoder_seq: zero the target token embeddings (big_vision's
      ablation: the decoder still runs causally).
    autoregressive: False predicts all positions in one pass from position
      embeddings only (the paper's "no Autoreg." LM); it has no
      `EmbedTargets`.
    parallel: AiT-P: the inputs are a learned parallel token plus position
      embeddings, under the causal mask; no `EmbedTargets` either.
  """
  patches: Any
  num_heads: int = 8
  num_layers: int = 6
  mlp_dim: int = 2048
  dropout_rate: float = 0.0
  emb_dim: int = 512
  vocab_size: int = 32000
  seq_len: int = 256
  input_size: Sequence[int] = (256, 256)
  posemb_type: str = "sincos2d"
  zero_decoder_seq: bool = False
  autoregressive: bool = True
  parallel: bool = False

  def setup(self):
    if self.parallel and not self.autoregressive:
      raise ValueError("lm.Model: parallel (AiT-P) keeps the causal decoder; "
                       "it cannot be combined with autoregressive=False.")
    patch = tuple(self.patches["size"])
    grid = tuple(np.array(self.input_size) // np.array(patch))
    self.pos_emb_for_encoder = vit.get_posemb(
        self, self.posemb_type, grid, self.emb_dim, "pos_embedding_encoder")
    self.pos_emb_for_decoder = vit.get_posemb(
        self, self.posemb_type, (1, self.seq_len), self.emb_dim,
        "pos_embedding_decoder")
    self.conv = nn.Conv(self.emb_dim, patch, strides=patch, padding="VALID",
                        name="EmbedPatches")
    self.encoder = vit.Encoder(
        depth=self.num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout_rate)
    self.decoder = Decoder(
        emb_dim=self.emb_dim, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        num_layers=self.num_layers, dropout_rate=self.dropout_rate,
        output_vocab_size=self.vocab_size,
        zero_decoder_seq=self.zero_decoder_seq,
        autoregressive=self.autoregressive, parallel=self.parallel)

  def encode(self, image, *, train=False):
    """(B, H, W, C) images -> (B, P, E) encoded patches."""
    if tuple(image.shape[1:3]) != tuple(self.input_size):
      raise ValueError(
          f"The LM takes images of size {tuple(self.input_size)} (its "
          f"input_size), got an image batch of shape {image.shape}: resize "
          "the images or change the model's input_size.")
    x = self.conv(image)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return self.encoder(x + self.pos_emb_for_encoder, deterministic=not train)

  def decode(self, encoded, targets=None, *, first_tokens=None, train=False):
    """Logits (R, L, V) of all code positions, in one pass.

    Args:
      encoded: (B, P, E) from `encode`.
      targets: (R, L) codes, R = B * N (N sequences per image, image-major),
        teacher-forced: logits[:, t] predicts position t from the first
        token and targets[:, :t]. Unused by the non-autoregressive model
        (which then returns (B, L, V)); the parallel model reads only their
        shape.
      first_tokens: (R,) the first input of every sequence (default 0, BOS).
      train: apply dropout.

    Returns:
      The logits.
    """
    cross_kv = self.decoder.cross_kv(encoded)
    pos_emb = self.pos_emb_for_decoder
    if not self.autoregressive:
      x = jnp.broadcast_to(pos_emb, (encoded.shape[0],) + pos_emb.shape[1:])
      return self.decoder(x, cross_kv, None, 0, None, not train)[0]
    if (targets is None or targets.shape[1] != self.seq_len
        or targets.shape[0] % encoded.shape[0]):
      raise ValueError(
          f"The autoregressive LM needs (N * {encoded.shape[0]}, "
          f"{self.seq_len}) targets for {encoded.shape[0]} images, got "
          f"{getattr(targets, 'shape', None)}.")
    x = self.decoder.embed(shift_right(targets, first_tokens), pos_emb)
    causal = jnp.tril(jnp.ones((self.seq_len, self.seq_len), bool))
    return self.decoder(x, cross_kv, None, 0, causal, not train)[0]

  def __call__(self, image, targets=None, *, first_tokens=None, train=False):
    """Logits (R, L, V) of `targets` given the images; see `decode`."""
    return self.decode(self.encode(image, train=train), targets,
                       first_tokens=first_tokens, train=train)

  def init_cache(self, encoded, num_samples=1):
    """The decoding cache for `num_samples` sequences per encoded image.

    Args:
      encoded: (B, P, E) from `encode`.
      num_samples: N.

    Returns:
      {"cross": per layer (k, v) (B, H, P, D) of the image, "self": per layer
      (k, v) (R * H, L, D) zeros, filled by `decode_step`}.
    """
    b, _, e = encoded.shape
    shape = (b * num_samples * self.num_heads, self.seq_len,
             e // self.num_heads)
    zeros = jnp.zeros(shape, encoded.dtype)
    return {"cross": self.decoder.cross_kv(encoded),
            "self": [(zeros, zeros)] * self.num_layers}

  def decode_step(self, cache, tokens, index):
    """Next-token logits (R, V) given the token at `index` - 1.

    Args:
      cache: from `init_cache` or the previous `decode_step`.
      tokens: (R,) the codes at position index - 1 (for index 0 the first
        token: 0, BOS, or e.g. a task token), or (R, V) probabilities of
        them (soft tokens).
      index: the position whose logits are computed (a scalar, traceable).

    Returns:
      The logits and the updated cache.
    """
    pos_emb = jax.lax.dynamic_slice_in_dim(
        self.pos_emb_for_decoder, index, 1, axis=1)
    x = self.decoder.embed(tokens[:, None], pos_emb)
    mask = (jnp.arange(self.seq_len) <= index)[None]
    logits, self_kv = self.decoder(x, cache["cross"], cache["self"], index,
                                   mask)
    return logits[:, 0], {"cross": cache["cross"], "self": self_kv}
