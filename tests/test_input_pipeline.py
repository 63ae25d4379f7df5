"""Tests for uvimx.input_pipeline on synthetic_scenes/tiny."""
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from uvimx import input_pipeline

TINY = "synthetic_scenes/tiny"
NUM_VAL = 24  # tiny's validation split.
IDS_PP = "decode|keep('image', 'image/id')"


def _input_config(data_dir, **overrides):
  return {"data": dict(name=TINY, split="train", data_dir=data_dir),
          "pp": IDS_PP, "batch_size": 8, "shuffle_buffer_size": 16,
          **overrides}


def _train_ids(ds, num_batches):
  batches = itertools.islice(ds.as_numpy_iterator(), num_batches)
  return np.concatenate([b["image/id"] for b in batches])


def test_training_batches_shapes_and_dtypes(tfds_data_dir):
  ds, num_examples = input_pipeline.training(_input_config(tfds_data_dir))
  batch = next(ds.as_numpy_iterator())
  assert num_examples == 48
  assert set(batch) == {"image", "image/id"}
  assert batch["image"].shape == (8, 64, 64, 3)
  assert batch["image"].dtype == np.uint8


def test_training_repeats_and_visits_every_example_each_epoch(tfds_data_dir):
  # With a buffer as large as the split, each epoch is a permutation.
  ds, _ = input_pipeline.training(
      _input_config(tfds_data_dir, shuffle_buffer_size=48))
  ids = _train_ids(ds, 12)  # two epochs of 48 at batch 8.
  assert sorted(ids[:48]) == sorted(ids[48:]) == sorted(set(ids))
  assert len(set(ids)) == 48


def test_training_order_is_seeded(tfds_data_dir):
  config = _input_config(tfds_data_dir)
  first = _train_ids(input_pipeline.training(config, seed=3)[0], 4)
  again = _train_ids(input_pipeline.training(config, seed=3)[0], 4)
  other = _train_ids(input_pipeline.training(config, seed=4)[0], 4)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_training_shards_split_over_processes(tfds_data_dir):
  config = _input_config(tfds_data_dir, shuffle_buffer_size=24)
  shards = []
  for index in range(2):
    ds, _ = input_pipeline.training(config, process_index=index,
                                    process_count=2)
    ids = _train_ids(ds, 6)  # one epoch of a 24-example shard at batch 4.
    assert len(ids) == 24 and len(set(ids)) == 24
    shards.append(set(ids))
  assert not shards[0] & shards[1]
  assert len(shards[0] | shards[1]) == 48


def test_training_rejects_indivisible_batch(tfds_data_dir):
  with pytest.raises(ValueError, match="not divisible"):
    input_pipeline.training(_input_config(tfds_data_dir, batch_size=9),
                            process_index=0, process_count=2)


def _eval_batches(data_dir, batch_size, **kwargs):
  data = dict(name=TINY, split="validation", data_dir=data_dir)
  ds, num_batches = input_pipeline.evaluation(data, IDS_PP, batch_size,
                                              **kwargs)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == num_batches
  return batches


def test_evaluation_covers_split_once_and_masks_padding(tfds_data_dir):
  batches = _eval_batches(tfds_data_dir, 10)
  assert len(batches) == 3  # ceil(24 / 10)
  assert all(b["image"].shape == (10, 64, 64, 3) for b in batches)
  mask = np.concatenate([b["_mask"] for b in batches])
  ids = np.concatenate([b["image/id"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])
  np.testing.assert_array_equal(mask, [True] * NUM_VAL + [False] * 6)
  assert len(set(ids[mask])) == NUM_VAL
  assert not images[~mask].any() and not ids[~mask].any()
  # Evaluation order is the split's order: a second pass is identical.
  again = np.concatenate([b["image/id"] for b in _eval_batches(
      tfds_data_dir, 10)])
  np.testing.assert_array_equal(ids, again)


def test_evaluation_shards_pad_to_the_same_number_of_batches(tfds_data_dir):
  per_process = [
      _eval_batches(tfds_data_dir, 10, process_index=i, process_count=2)
      for i in range(2)]
  real = []
  for batches in per_process:
    assert len(batches) == 3  # ceil(12 / 5) on both processes.
    mask = np.concatenate([b["_mask"] for b in batches])
    assert mask.sum() == 12
    real.append(set(np.concatenate([b["image/id"] for b in batches])[mask]))
  assert not real[0] & real[1]
  assert len(real[0] | real[1]) == NUM_VAL


@pytest.mark.parametrize("max_cache_bytes, cached", [(120, True),
                                                      (119, False)])
def test_evaluation_caches_only_what_fits(tfds_data_dir, max_cache_bytes,
                                          cached):
  # An example is a float32 draw and a bool mask, 5 bytes; 24 take 120.
  # Uncached, every pass preprocesses again: new draws.
  ds, _ = input_pipeline.evaluation(
      dict(name=TINY, split="validation", data_dir=tfds_data_dir),
      "randu('u')|keep('u')", 8, cache=True, max_cache_bytes=max_cache_bytes)
  first, second = ([b["u"] for b in ds.as_numpy_iterator()] for _ in "12")
  assert np.array_equal(first, second) == cached


def test_unknown_dataset_names_the_dataset(tmp_path):
  with pytest.raises(ValueError, match="no_such_dataset.*synthetic_scenes"):
    input_pipeline.get_builder("no_such_dataset", data_dir=str(tmp_path))


def test_unprepared_dataset_says_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    input_pipeline.get_builder("mnist", data_dir=str(tmp_path))
  message = str(e.value)
  assert "'mnist'" in message
  assert str(tmp_path) in message
  # A command that can be pasted: the path as a string, not a path object.
  assert (f"tfds.builder('mnist', data_dir='{tmp_path}').download_and_prepare()"
          in message)


def test_unknown_split_lists_the_splits(tfds_data_dir):
  data = dict(name=TINY, split="trian", data_dir=tfds_data_dir)
  with pytest.raises(ValueError, match="trian.*validation"):
    input_pipeline.evaluation(data, IDS_PP, 8)


def test_training_augments_each_process_differently(tfds_data_dir):
  config = _input_config(tfds_data_dir, pp="decode|randu('u')|keep('u')")
  draws = [next(input_pipeline.training(
      config, process_index=index, process_count=2)[0].as_numpy_iterator())
           ["u"] for index in range(2)]
  assert draws[0].shape == (4,)
  assert not np.isin(draws[0], draws[1]).any()


def test_synthetic_scenes_is_built_on_first_use(tmp_path):
  builder = input_pipeline.get_builder(TINY, data_dir=str(tmp_path))
  assert builder.is_prepared()
  assert builder.info.splits["validation"].num_examples == NUM_VAL


def test_a_build_another_process_finished_first_is_used(tmp_path,
                                                        monkeypatch):
  # Two hosts build on first use into one data dir: the second to finish
  # cannot move its copy into place (TFDS raises FileExistsError).
  builder_class = type(tfds.builder(TINY, data_dir=str(tmp_path)))
  build = builder_class.download_and_prepare

  def build_second(self, *args, **kwargs):
    build(self, *args, **kwargs)  # The other host's build.
    raise FileExistsError("Cannot rename: destination already exists.")

  monkeypatch.setattr(builder_class, "download_and_prepare", build_second)
  builder = input_pipeline.get_builder(TINY, data_dir=str(tmp_path))
  assert builder.info.splits["validation"].num_examples == NUM_VAL
  with pytest.raises(ValueError, match="synthetic_scenes/tiny:9.9.9"):
    input_pipeline.get_builder(TINY + ":9.9.9", data_dir=str(tmp_path))


def test_start_step_resumes_the_exact_stream_with_augmentations(
    tfds_data_dir):
  config = _input_config(
      tfds_data_dir,
      pp="decode|inception_box|crop_box(key='image')|randu('fliplr')|"
         "det_fliplr(key='image')|resize(16)|keep('image', 'image/id')")
  fresh = itertools.islice(
      input_pipeline.training(config, seed=5)[0].as_numpy_iterator(), 9)
  fresh = list(fresh)[7:]
  resumed = list(itertools.islice(input_pipeline.training(
      config, seed=5, start_step=7)[0].as_numpy_iterator(), 2))
  for a, b in zip(fresh, resumed):
    np.testing.assert_array_equal(a["image/id"], b["image/id"])
    np.testing.assert_array_equal(a["image"], b["image"])
