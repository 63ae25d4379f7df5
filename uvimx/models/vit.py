"""ViT building blocks: pre-LN transformer encoder and position embeddings.

Module and parameter names follow big_vision's `big_vision/models/vit.py`
(`encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
MlpBlock_0/{Dense_0, Dense_1}}`, `encoder_norm`), so big_vision checkpoints,
e.g. UViM's, load into these modules by name.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage


def posemb_sincos_2d(h, w, width, temperature=10_000.0, dtype=jnp.float32):
  """Fixed 2D sine-cosine position embeddings, (1, h * w, width).

  As big_vision (MoCo v3): a quarter of the channels each holds sin(x),
  cos(x), sin(y), cos(y) at `width // 4` geometrically spaced frequencies
  from 1 down to 1 / temperature; tokens are in raster order.

  Args:
    h: grid height in tokens.
    w: grid width in tokens.
    width: embedding size, a multiple of 4.
    temperature: the longest wavelength (in tokens) is 2 pi temperature.
    dtype: of the result.

  Returns:
    The (1, h * w, width) embeddings.
  """
  if width % 4 or width < 8:
    raise ValueError(f"sincos2d position embeddings need a width that is a "
                     f"multiple of 4 and at least 8, got {width}.")
  n = width // 4
  omega = 1.0 / temperature ** (np.arange(n) / (n - 1))
  y, x = np.mgrid[:h, :w]
  y = y.reshape(-1, 1) * omega[None]
  x = x.reshape(-1, 1) * omega[None]
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe[None], dtype)


def get_posemb(module, typ, seqshape, width, name, dtype=jnp.float32):
  """Position embeddings (1, prod(seqshape), width) of type `typ`.

  Args:
    module: the module that owns the parameter for `typ="learn"`.
    typ: "learn" (a parameter, initialised as big_vision with a normal of
      stddev 1/sqrt(width), so that it has the scale of a LayerNorm'ed token
      divided by sqrt(width)) or "sincos2d" (fixed, see `posemb_sincos_2d`).
    seqshape: the token grid (h, w).
    width: embedding size.
    name: parameter name, e.g. "pos_embedding".
    dtype: of the embeddings.

  Returns:
    The embeddings, to be added to (B, prod(seqshape), width) tokens.
  """
  if typ == "learn":
    return module.param(name, nn.initializers.normal(stddev=1 / np.sqrt(width)),
                        (1, int(np.prod(seqshape)), width), dtype)
  if typ == "sincos2d":
    return posemb_sincos_2d(*seqshape, width, dtype=dtype)
  raise ValueError(f"Unknown posemb type {typ!r}: use 'learn' or 'sincos2d'.")


def resample_posemb(old, num_tokens):
  """Learned position embeddings (1, N, D) of a square grid -> (1, M, D).

  big_vision's "high-res fine-tuning": the sqrt(N) x sqrt(N) grid resized to
  sqrt(M) x sqrt(M) by linear interpolation with aligned corners
  (scipy.ndimage.zoom, order 1), so a pre-trained ViT fits another image or
  patch size.
  """
  old = np.asarray(old)
  side_old, side_new = (int(round(np.sqrt(n))) for n in (old.shape[1],
                                                          num_tokens))
  if side_old ** 2 != old.shape[1] or side_new ** 2 != num_tokens:
    raise ValueError(f"Position embeddings resample between square grids; "
                     f"got {old.shape[1]} -> {num_tokens} tokens.")
  if side_old == side_new:
    return old
  grid = old.reshape(side_old, side_old, -1)
  zoom = side_new / side_old
  grid = scipy.ndimage.zoom(grid, (zoom, zoom, 1), order=1)
  return grid.reshape(1, num_tokens, -1)


def fix_old_checkpoint(params):
  """A ViT checkpoint of older big_vision / vision_transformer layouts, fixed.

  As big_vision's `fix_old_checkpoints`, less the pre-linen module numbers,
  which `checkpoint.load_big_vision_npz` fixes: position embeddings stored
  under `Transformer/posembed_input` or `Transformer` moved to the top; and
  a class token's embedding stored as the first of N^2 + 1 position
  embeddings split off (added to `cls` where there is one).
  """
  params = dict(params)
  transformer = dict(params.get("Transformer", {}))
  if "posembed_input" in transformer:
    params["pos_embedding"] = transformer.pop("posembed_input")["pos_embedding"]
  if "pos_embedding" in transformer:
    params["pos_embedding"] = transformer.pop("pos_embedding")
  if "Transformer" in params:
    params["Transformer"] = transformer
  posemb = params.get("pos_embedding")
  if posemb is not None:
    n = posemb.shape[1]
    if int(np.sqrt(n)) ** 2 + 1 == n:
      if "cls" in params:
        params["cls"] = params["cls"] + posemb[:, :1]
      params["pos_embedding"] = posemb[:, 1:]
  return params


def attend(q, k, v, mask=None, dropout=None):
  """softmax(q k^T / sqrt(D)) v for heads-first q (..., Q, D), k, v (..., K, D).

  The weighted sum comes before the normalisation: the (..., Q, D) result is
  divided by the softmax's denominators instead of the (..., Q, K) weights,
  the same arithmetic up to rounding. XLA:CPU runs it 2.6x faster than
  flax's `dot_product_attention` (on flax's (B, L, H, D) layout instead of
  heads-first, 1.5x slower again); benchmarks/decode.py's encoder at batch
  32 went from 225-270 to 188-203 ms (README, Results).

  Args:
    q: queries.
    k: keys.
    v: values.
    mask: None, or broadcastable to (..., Q, K), True where allowed.
    dropout: None, or a function applied to the unnormalised weights (the
      same as applying it to the normalised ones).

  Returns:
    The (..., Q, D) attention output.
  """
  q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  w = jnp.einsum("...qd,...kd->...qk", q, k)
  if mask is not None:
    w = jnp.where(mask, w, jnp.finfo(w.dtype).min)
  # Subtracting the maximum changes no output, so it needs no gradient.
  e = jnp.exp(w - jax.lax.stop_gradient(jnp.max(w, axis=-1, keepdims=True)))
  out = jnp.einsum("...qk,...kd->...qd", e if dropout is None else dropout(e),
                   v)
  return out / jnp.sum(e, axis=-1, keepdims=True)


def _attention_fn(query, key, value, mask=None):
  """`attend` as flax's MultiHeadDotProductAttention calls it: (B, L, H, D)."""
  q, k, v = (jnp.swapaxes(t, -3, -2) for t in (query, key, value))
  return jnp.swapaxes(attend(q, k, v, mask), -3, -2)


class MlpBlock(nn.Module):
  """Transformer feed-forward block: Dense, GELU, dropout, Dense."""
  mlp_dim: Optional[int] = None  # None: 4x the input width.
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic=True):
    # big_vision's init: xavier kernels, tiny random biases.
    inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6))
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim or 4 * d, **inits)(x)
    x = nn.gelu(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return nn.Dense(d, **inits)(x)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: Optional[int] = None  # None: 4x the input width.
  num_heads: int = 12
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic=True):
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        kernel_init=nn.initializers.xavier_uniform(),
        attention_fn=_attention_fn,
        deterministic=deterministic)(y, y)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = x + y

    y = nn.LayerNorm()(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout)(y, deterministic)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    return x + y


class Encoder(nn.Module):
  """A stack of `depth` pre-LN blocks and a final LayerNorm, on (B, L, D)."""
  depth: int
  mlp_dim: Optional[int] = None  # None: 4x the input width.
  num_heads: int = 12
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic=True):
    for i in range(self.depth):
      x = Encoder1DBlock(
          mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
          name=f"encoderblock_{i}")(x, deterministic)
    # Pre-LN blocks leave the residual stream unnormalised: normalise once.
    return nn.LayerNorm(name="encoder_norm")(x)
