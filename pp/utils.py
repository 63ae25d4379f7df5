"""Helpers shared by the pp ops: the key/inkey/outkey decorator and decoding."""
import functools
import inspect
import zlib

import tensorflow as tf


def maybe_repeat(arg, n):
  """Returns `arg` as a tuple of `n` values, repeating a scalar."""
  if isinstance(arg, (tuple, list)):
    if len(arg) != n:
      raise ValueError(f"Expected a scalar or {n} values, got {arg!r}.")
    return tuple(arg)
  return (arg,) * n


def inkey_outkey(indefault="image", outdefault="image", with_data=False):
  """Turns a factory of `fn(tensor) -> tensor` into a factory of pp ops.

  The decorated factory takes three more keyword-only arguments:
    key: read `data[key]` and write the result back to it (in place);
    inkey, outkey: read `data[inkey]`, write `data[outkey]` (defaults:
      `indefault`, `outdefault`).
  `key` excludes `inkey`/`outkey`. With a default of None the op has no
  natural key (e.g. `cast`) and the caller must name one.

  Args:
    indefault: the default `inkey`.
    outdefault: the default `outkey`.
    with_data: if True, `fn` is called as `fn(tensor, data)` so that it can
      read other entries, e.g. the crop box shared by several keys.

  Returns:
    The decorator.
  """
  def decorator(get_fn):
    @functools.wraps(get_fn)
    def get_dict_fn(*args, key=None, inkey=None, outkey=None, **kw):
      if key is not None and (inkey is not None or outkey is not None):
        raise ValueError("Give either key= or inkey=/outkey=, not both.")
      inkey = key or inkey or indefault
      outkey = key or outkey or outdefault
      if inkey is None or outkey is None:
        raise ValueError("This op needs key= (or inkey= and outkey=).")
      fn = get_fn(*args, **kw)

      def _pp(data):
        x = data[inkey]
        data[outkey] = fn(x, data) if with_data else fn(x)
        return data
      return _pp

    # `functools.wraps` makes `inspect.signature` report `get_fn`'s own
    # signature; the builder checks pipe arguments against it, so add the
    # three key arguments (before any **kwargs, as Python requires).
    params = list(inspect.signature(get_fn).parameters.values())
    keys = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None)
            for k in ("key", "inkey", "outkey")]
    has_var_kw = params and params[-1].kind == inspect.Parameter.VAR_KEYWORD
    at = len(params) - 1 if has_var_kw else len(params)
    get_dict_fn.__signature__ = inspect.Signature(
        params[:at] + keys + params[at:])
    return get_dict_fn
  return decorator


# Key of the per-example stateless RNG seed (int (2,)): the training input
# pipeline adds one to every example before preprocessing; elsewhere the
# preprocess fn draws one per call (`pp.builder.get_preprocess_fn`).
SEED_KEY = "_seed"


def op_seed(data, name):
  """The stateless RNG seed of random op `name` on this example.

  Random ops draw from `tf.random.stateless_*` with a seed derived from the
  example's `data[SEED_KEY]` and the op's name, so an augmentation is a
  function of (run seed, position of the example in the stream): a resumed
  training run sees exactly the augmentations of an uninterrupted one, however
  many threads preprocess in parallel.

  Args:
    data: the example dict.
    name: tells apart the random ops of one pipe, e.g. "randu/fliplr".

  Returns:
    An int32 (2,) seed.
  """
  salt = zlib.crc32(name.encode()) & 0x7FFFFFFF
  return tf.random.experimental.stateless_fold_in(data[SEED_KEY], salt)


def with_channel_axis(x):
  """Returns an HxW tensor as HxWx1; leaves an HxWxC tensor as it is."""
  if x.shape.rank == 2:
    return x[..., None]
  if x.shape.rank != 3:
    raise ValueError(f"Expected an HxW or HxWxC tensor, got shape {x.shape}.")
  return x


def decode_or_check(x, dtype, channels):
  """Decodes image bytes to HxWxC `dtype`, or checks a decoded tensor.

  TFDS returns Image features decoded unless the reader skips decoding, so the
  ops that decode accept both: a scalar string (PNG, JPEG, ... bytes) or an
  HxW / HxWxC tensor of `dtype`, which is passed through.

  Args:
    x: encoded bytes or decoded image.
    dtype: the pixel dtype (tf.uint8 or tf.uint16).
    channels: the number of channels; 0 keeps the encoded number.

  Returns:
    An HxWxC tensor of `dtype`.
  """
  if x.dtype == tf.string:
    return tf.io.decode_image(
        x, channels=channels, dtype=dtype, expand_animations=False)
  if x.dtype != dtype:
    raise ValueError(f"Expected encoded bytes or a decoded {dtype.name} "
                     f"image, got a {x.dtype.name} tensor.")
  x = with_channel_axis(x)
  if channels and x.shape[-1] not in (None, channels):
    raise ValueError(
        f"Expected {channels} channels, got a tensor of shape {x.shape}.")
  return x
