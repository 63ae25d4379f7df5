"""TFDS -> pp -> batch -> prefetch, for training and for evaluation.

Data is described by a config dict, as in big_vision:

  config.input.data = dict(name="synthetic_scenes/64x64", split="train",
                           data_dir=None)   # None: $TFDS_DATA_DIR or ~/...
  config.input.pp = "decode|resize(64)|value_range(-1, 1)|keep('image')"
  config.input.batch_size = 64              # global, over all processes
  config.input.shuffle_buffer_size = 10_000
  config.input.cache_raw = False            # cache decoded TFDS records
  config.input.skip_decode = ("image",)     # left encoded for the `decode` op

Every process reads its own 1/process_count of the split (multi-host), so
batch sizes here are global and each process yields `batch_size //
process_count` examples per batch. Both entry points return a `tf.data`
pipeline of host-local batches; iterate `ds.as_numpy_iterator()` to get dicts
of numpy arrays. TensorFlow is only used here and in `pp/`: models and train
steps never import it.
"""
import math
import os

from absl import logging
import jax
import tensorflow as tf
import tensorflow_datasets as tfds

import pp.builder
import pp.utils
import uvimx.datasets  # pylint: disable=unused-import  (registers builders)

# TF must not grab accelerator memory: JAX owns the devices, TF only feeds it.
# (tensorflow-cpu sees no GPU anyway; this matters with a full TF install.)
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices: too late to hide.
  logging.warning("TensorFlow initialised its GPUs before uvimx.input_pipeline"
                  " was imported; it may hold accelerator memory JAX needs.")


def get_builder(name, data_dir=None):
  """Returns a prepared TFDS builder, building uvimx's own datasets on demand.

  Args:
    name: TFDS name with optional config, e.g. "synthetic_scenes/tiny".
    data_dir: TFDS data dir; None means $TFDS_DATA_DIR, else TFDS' default.

  Raises:
    ValueError: the name is not a TFDS dataset.
    FileNotFoundError: the dataset needs data that is not in `data_dir`.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"Unknown TFDS dataset {name!r} (config.input.data.name). uvimx's "
        "own are 'synthetic_scenes' (configs 64x64, 128x128, tiny) and "
        f"'nyuv2_labeled'; TFDS said: {str(e).splitlines()[0]}") from None
  except AssertionError as e:  # TFDS' word for a version it does not have.
    raise ValueError(f"TFDS dataset {name!r}: {e}") from None
  if builder.is_prepared():
    return builder
  # uvimx's rendered datasets download nothing: building them on first use
  # keeps "train on synthetic_scenes" a single command. Those made from
  # manually downloaded files (nyuv2_labeled) are built once by the user.
  ours = type(builder).__module__.startswith("uvimx.datasets")
  if ours and not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    logging.info("Building %s in %s (first use).", name, builder.data_dir)
    try:
      builder.download_and_prepare()
    except FileExistsError:
      # Another process (a host of this job, or another run) built it at the
      # same time and moved its copy into place first: use that one.
      builder = tfds.builder(name, data_dir=data_dir)
      if not builder.is_prepared():
        raise
    return builder
  root = str(builder.data_dir_root)  # A path object's repr is no path.
  if ours:
    how = (f"`python -m uvimx.datasets {name} --data_dir={root} "
           "--manual_dir=MANUAL_DIR` (laid out as below)")
    layout = f"\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
  else:
    how = (f"`tfds.builder({name!r}, data_dir={root!r})"
           ".download_and_prepare()` (on a machine with internet access or "
           "the raw data; manual downloads go to "
           f"{os.path.join(root, 'downloads', 'manual')!r})")
    layout = ""
  raise FileNotFoundError(
      f"Dataset {name!r} is not prepared in the TFDS data dir {root!r}. "
      f"Build it once with {how}, or point "
      "config.input.data.data_dir (or $TFDS_DATA_DIR) to a dir that holds "
      f"it.{layout}")


def _process_split(builder, split, process_index, process_count):
  """This process's even share of `split` and its number of examples."""
  shards = tfds.even_splits(split, n=process_count)
  try:
    sizes = [builder.info.splits[s].num_examples for s in shards]
  except (KeyError, ValueError) as e:
    raise ValueError(
        f"Bad split {split!r} for {builder.info.full_name} (config "
        f"...data.split); its splits are {sorted(builder.info.splits)}. "
        f"TFDS said: {e}") from None
  if min(sizes) == 0:
    raise ValueError(
        f"Split {split!r} of {builder.info.full_name} has too few examples "
        f"({sum(sizes)}) for {process_count} processes: every process needs "
        "at least one.")
  return shards[process_index], sizes


def _read(data, *, process_index, process_count, shuffle_files, skip_decode,
          seed=None):
  """Reads this process's shard of a split; returns (dataset, all sizes)."""
  builder = get_builder(data["name"], data.get("data_dir"))
  split, sizes = _process_split(
      builder, data["split"], process_index, process_count)
  decoders = {k: tfds.decode.SkipDecoding()
              for k in skip_decode if k in builder.info.features}
  ds = builder.as_dataset(
      split=split, shuffle_files=shuffle_files, decoders=decoders,
      read_config=tfds.ReadConfig(shuffle_seed=seed,
                                  skip_prefetch=True))
  return ds, sizes


def _options():
  options = tf.data.Options()
  # pp ops are small: parallelism across examples beats parallelism inside one.
  options.threading.max_intra_op_parallelism = 1
  options.deterministic = True
  return options


def _local_batch_size(batch_size, process_count):
  if batch_size % process_count:
    raise ValueError(
        f"Global batch size {batch_size} is not divisible by the number of "
        f"processes ({process_count}).")
  return batch_size // process_count


def training(input_config, *, seed=0, start_step=0, process_index=None,
             process_count=None):
  """The training pipeline: shuffled, repeated, preprocessed, batched.

  The stream is a function of `seed` alone: the shuffles are seeded, and every
  example gets its own stateless RNG seed (`pp.utils.SEED_KEY`) for the
  random pp ops. So `start_step=s` yields exactly the batches s, s+1, ... of
  a fresh pipeline, which is how a resumed run sees the data an uninterrupted
  one would; the skipped examples are not preprocessed.

  Args:
    input_config: `config.input` (see module docstring).
    seed: seeds the shuffles and the augmentations.
    start_step: the number of batches to skip.
    process_index: this process (default `jax.process_index()`).
    process_count: all processes (default `jax.process_count()`).

  Returns:
    (dataset of host-local batches that drops the remainder, number of
    examples in the whole split).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch = _local_batch_size(input_config["batch_size"], process_count)
  ds, sizes = _read(
      input_config["data"], process_index=process_index,
      process_count=process_count, shuffle_files=True, seed=seed,
      skip_decode=input_config.get("skip_decode", ("image",)))
  if input_config.get("cache_raw", False):
    ds = ds.cache()
  # Shuffling before repeating keeps epochs apart: every example is seen once
  # per epoch, in a new order each epoch.
  ds = ds.shuffle(input_config.get("shuffle_buffer_size", 10_000), seed=seed)
  ds = ds.repeat()
  # The process index is folded in: with the run's seed alone, the k-th
  # example of every process would get the same flips and crops.
  example_seeds = tf.data.Dataset.random(seed=seed).batch(2).map(
      lambda s: tf.random.experimental.stateless_fold_in(s, process_index))
  ds = tf.data.Dataset.zip(ds, example_seeds)
  ds = ds.skip(start_step * local_batch)
  preprocess = pp.builder.get_preprocess_fn(input_config["pp"])

  def _preprocess(example, example_seed):
    return preprocess({**example, pp.utils.SEED_KEY: example_seed})
  ds = ds.map(_preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(input_config.get("prefetch", 2))
  return ds.with_options(_options()), sum(sizes)


# Evaluators cache their preprocessed split in host memory when it fits in
# this: a small split is then read and preprocessed once per run, while e.g.
# 4096 COCO images at 512x512 in float32 (24 GiB) are streamed, as big_vision
# does by default.
MAX_EVAL_CACHE_BYTES = 2 << 30


def _example_bytes(element_spec):
  """Bytes of one example of fixed shape; None when a shape is not fixed."""
  specs = tf.nest.flatten(element_spec)
  if not all(s.shape.is_fully_defined() for s in specs):
    return None
  return sum(s.shape.num_elements() * s.dtype.size for s in specs)


def evaluation(data, pp_str, batch_size, *, cache=False,
               max_cache_bytes=MAX_EVAL_CACHE_BYTES, skip_decode=("image",),
               process_index=None, process_count=None):
  """The evaluation pipeline: every example of the split exactly once.

  Each process reads its shard in order. All processes yield the same number
  of batches (collectives need that), so shards are padded with all-zero
  examples up to `num_batches * local_batch`; the boolean key `_mask` is True
  for real examples and False for padding.

  Args:
    data: dict(name=..., split=..., data_dir=...).
    pp_str: the pp pipe string; it must give fixed shapes (they are batched).
    batch_size: global batch size.
    cache: cache preprocessed examples (for evaluators that run often) if
      this process's share takes at most `max_cache_bytes`.
    max_cache_bytes: see `cache`.
    skip_decode: features left encoded for the pp `decode` op.
    process_index: this process (default `jax.process_index()`).
    process_count: all processes (default `jax.process_count()`).

  Returns:
    (dataset of host-local batches, number of batches per process).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch = _local_batch_size(batch_size, process_count)
  ds, sizes = _read(data, process_index=process_index,
                    process_count=process_count, shuffle_files=False,
                    skip_decode=skip_decode)
  num_batches = math.ceil(max(sizes) / local_batch)
  preprocess = pp.builder.get_preprocess_fn(pp_str)
  ds = ds.map(lambda x: {**preprocess(x), "_mask": tf.constant(True)},
              num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    example_bytes = _example_bytes(ds.element_spec)
    cache_bytes = example_bytes and example_bytes * max(sizes)
    if cache_bytes and cache_bytes <= max_cache_bytes:
      ds = ds.cache()
    else:
      logging.info("Not caching %s %s: its preprocessed examples would take "
                   "%s bytes, more than %d.", data["name"], data["split"],
                   cache_bytes or "unknown", max_cache_bytes)
  padding = ds.take(1).map(
      lambda x: tf.nest.map_structure(tf.zeros_like, x)).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  ds = ds.batch(local_batch).prefetch(2)
  return ds.with_options(_options()), num_batches
