"""General pp ops on the data dict: select, copy, rename, combine, convert.

Ops that name keys are strict: a key that is not in the data raises a
KeyError (reported by the builder with the keys present), rather than being
skipped, so that a typo in a config fails at the first example.
"""
import tensorflow as tf

from pp import registry
from pp import utils


@registry.register("keep")
def get_keep(*keys):
  """Keeps only `keys` (and the example's RNG seed, for later random ops)."""
  def _keep(data):
    kept = {k: data[k] for k in keys}
    if utils.SEED_KEY in data:
      kept[utils.SEED_KEY] = data[utils.SEED_KEY]
    return kept
  return _keep


@registry.register("drop")
def get_drop(*keys):
  """Removes `keys`."""
  def _drop(data):
    for k in keys:
      del data[k]
    return data
  return _drop


@registry.register("copy")
def get_copy(inkey, outkey):
  """Copies `data[inkey]` (a tensor or nested dict of tensors) to `outkey`."""
  def _copy(data):
    # Copy the Python structure only: tensors are immutable, but a nested
    # dict shared by two keys would be changed through both.
    data[outkey] = tf.nest.map_structure(lambda x: x, data[inkey])
    return data
  return _copy


@registry.register("rename")
def get_rename(inkey, outkey):
  """Moves `data[inkey]` to `outkey` (replacing any value there).

  Same argument order as `copy(inkey, outkey)`; the keys are strings, so any
  key can be renamed (a `rename(new="old")` form would only allow identifiers).

  Args:
    inkey: the key to rename.
    outkey: its new name.

  Returns:
    The op.
  """
  def _rename(data):
    data[outkey] = data.pop(inkey)
    return data
  return _rename


@registry.register("concat")
def get_concat(inkeys, outkey, axis=-1):
  """Concatenates `data[k] for k in inkeys` along `axis` into `outkey`."""
  def _concat(data):
    data[outkey] = tf.concat([data[k] for k in inkeys], axis)
    return data
  return _concat


@registry.register("onehot")
@utils.inkey_outkey(indefault="labels", outdefault="labels")
def get_onehot(depth, on=1.0, off=0.0):
  """One-hot encodes integer labels into a new last axis of size `depth`.

  Labels outside [0, depth), e.g. -1 for void, give an all-`off` vector.

  Args:
    depth: the number of classes.
    on: the value at the label's index.
    off: the value elsewhere.

  Returns:
    A float32 tensor of shape `labels.shape + (depth,)`.
  """
  def _onehot(labels):
    return tf.one_hot(tf.cast(labels, tf.int32), depth,
                      on_value=float(on), off_value=float(off))
  return _onehot


@registry.register("squeeze")
@utils.inkey_outkey(indefault=None, outdefault=None)
def get_squeeze(axis=-1):
  """Removes the size-1 `axis` (e.g. HxWx1 -> HxW); needs `key=`."""
  def _squeeze(x):
    return tf.squeeze(x, axis=axis)
  return _squeeze


@registry.register("cast")
@utils.inkey_outkey(indefault=None, outdefault=None)
def get_cast(dtype):
  """Casts to `dtype`, a name such as "float32"; needs `key=`."""
  dtype = tf.as_dtype(dtype)

  def _cast(x):
    return tf.cast(x, dtype)
  return _cast
