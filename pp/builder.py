"""Builds a preprocessing function from a pipe string.

The mini-language is `op1|op2(arg, k=v)|...`: the ops are applied left to
right to a dict of tensors, as in big_vision. Arguments are Python literals.
Empty pieces (`"a||b"`, a trailing `|`) are skipped, so that configs can join
optional fragments, e.g. `f"{decode}|{augment}|keep('image')"` with an empty
`augment`.
"""
import tensorflow as tf

from pp import ops_dense  # pylint: disable=unused-import  (registers ops)
from pp import ops_general  # pylint: disable=unused-import
from pp import ops_image  # pylint: disable=unused-import
from pp import registry
from pp import utils


def split_pipe(pipe):
  """Splits `pipe` on the `|` that are outside string literals and brackets."""
  pieces, start, depth, quote, escaped = [], 0, 0, None, False
  for i, c in enumerate(pipe):
    if quote:
      if escaped:
        escaped = False
      elif c == "\\":
        escaped = True
      elif c == quote:
        quote = None
    elif c in "'\"":
      quote = c
    elif c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
    elif c == "|" and depth == 0:
      pieces.append(pipe[start:i])
      start = i + 1
  pieces.append(pipe[start:])
  return pieces


def _build_op(piece):
  """Parses, checks and instantiates the op of one pipe piece."""
  name, args, kwargs = registry.parse(piece)
  registry.check_arguments(name, args, kwargs)
  try:
    return registry.lookup(name)(*args, **kwargs)
  except (ValueError, TypeError) as err:
    raise ValueError(f"pp op {piece!r}: {err}") from err


def get_preprocess_fn(pipe):
  """Returns the function `data -> data` described by the pipe string `pipe`.

  All parsing and argument errors are raised here, before any data is seen.
  The returned function works eagerly and inside `tf.data.Dataset.map`; it
  converts the input's non-tensor leaves (e.g. numpy arrays, when called
  eagerly) to tensors in a new dict, leaving the caller's dict unchanged.

  Args:
    pipe: e.g. `'decode|resize(64)|value_range(-1, 1)|keep("image")'`. An
      empty or None pipe gives the identity.

  Returns:
    The preprocessing function.

  Raises:
    ValueError: for an unknown op, a malformed piece or wrong arguments; the
      returned function raises ValueError naming the op for a missing key.
  """
  pieces = [p.strip() for p in split_pipe(pipe or "") if p.strip()]
  ops = [(piece, _build_op(piece)) for piece in pieces]

  def _preprocess(data):
    data = tf.nest.map_structure(
        lambda x: x if tf.is_tensor(x) else tf.convert_to_tensor(x), dict(data))
    if utils.SEED_KEY not in data:
      # One seed for all random ops of this call, so that e.g. two keys'
      # `random_crop`s agree; the training pipeline passes seeds instead, to
      # make augmentations a function of the run's seed.
      data[utils.SEED_KEY] = tf.random.uniform(
          [2], maxval=tf.int64.max, dtype=tf.int64)
    for piece, op in ops:
      keys = sorted(k for k in data if k != utils.SEED_KEY)
      # Name the op in errors raised while tracing it: the traceback of a
      # tf.data map function alone does not say which pipe piece failed.
      try:
        data = op(data)
      except KeyError as err:
        # A ValueError: KeyError would print this message as a quoted repr.
        raise ValueError(f"pp op {piece!r} needs key {err.args[0]!r}, but "
                         f"the data has keys {keys}.") from err
      except (ValueError, TypeError) as err:
        raise ValueError(f"pp op {piece!r}: {err}") from err
    data.pop(utils.SEED_KEY, None)
    return data

  return _preprocess
