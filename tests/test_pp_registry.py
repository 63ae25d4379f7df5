"""Tests of the pp registry, builder and key/inkey/outkey decorator."""
import inspect

import numpy as np
import pytest
import tensorflow as tf

from pp import builder
from pp import registry
from pp import utils


def test_split_pipe_keeps_strings_and_brackets_whole():
  pipe = """a("x|y", 'p,q')|b((1, 2), k={"|": "\\"|"})|c|"""
  assert builder.split_pipe(pipe) == [
      'a("x|y", \'p,q\')', 'b((1, 2), k={"|": "\\"|"})', "c", ""]


def test_parse():
  assert registry.parse(" keep ") == ("keep", (), {})
  assert registry.parse('resize((4, 6), method="nearest", antialias=True)') == (
      "resize", ((4, 6),), {"method": "nearest", "antialias": True})
  assert registry.parse("f(-1, None, [1.5], {'a': 'b|c'})") == (
      "f", (-1, None, [1.5], {"a": "b|c"}), {})


@pytest.mark.parametrize("piece", [
    "resize(4", "resize(size)", "resize(4, key=image)", "os.system('ls')",
    "keep(**{'a': 1})", "keep(*['a'])", "1+2", "resize(4) junk",
])
def test_malformed_piece_is_quoted(piece):
  with pytest.raises(ValueError, match="Malformed pp op") as err:
    builder.get_preprocess_fn(f"decode|{piece}")
  assert repr(piece) in str(err.value)


def test_unknown_op_suggests_close_names():
  with pytest.raises(ValueError, match=r"Unknown pp op 'resise'.*'resize'"):
    builder.get_preprocess_fn("decode|resise(4)")
  with pytest.raises(ValueError, match="registered ops: .*value_range"):
    builder.get_preprocess_fn("zzzzzz")


def test_wrong_arguments_name_op_and_argument():
  with pytest.raises(ValueError, match="'resize' has no argument 'sise'"):
    builder.get_preprocess_fn("resize(sise=4)")
  with pytest.raises(ValueError, match="'onehot'.*'depth'"):
    builder.get_preprocess_fn("onehot()")
  with pytest.raises(ValueError, match="'copy'.*too many positional"):
    builder.get_preprocess_fn("copy('a', 'b', 'c')")


def test_factory_errors_quote_the_piece():
  with pytest.raises(ValueError, match="cast\\('floaty', key='x'\\)"):
    builder.get_preprocess_fn("cast('floaty', key='x')")
  with pytest.raises(ValueError, match="either key= or inkey="):
    builder.get_preprocess_fn("resize(4, key='a', inkey='b')")
  with pytest.raises(ValueError, match="needs key="):
    builder.get_preprocess_fn("cast('int32')")


def test_argument_type_errors_at_tracing_name_the_op():
  data = {"labels": np.zeros((2, 2), np.int32)}
  with pytest.raises(ValueError, match="pp op \"onehot\\('10'"):
    builder.get_preprocess_fn("onehot('10', key='labels')")(data)


def test_missing_key_names_op_key_and_keys_present():
  fn = builder.get_preprocess_fn("copy('a', 'b')|resize(2)")
  with pytest.raises(
      ValueError, match=r"'resize\(2\)' needs key 'image', but the data has "
      r"keys \['a', 'b'\]"):
    fn({"a": np.zeros((4, 4, 1))})


def test_empty_pieces_are_skipped():
  data = {"a": np.int32(1), "b": np.int32(2)}
  assert set(builder.get_preprocess_fn("|keep('a')||")(data)) == {"a"}
  assert set(builder.get_preprocess_fn("")(data)) == {"a", "b"}
  assert set(builder.get_preprocess_fn(None)(data)) == {"a", "b"}


def test_caller_dict_is_not_modified():
  data = {"a": np.int32(1)}
  out = builder.get_preprocess_fn("copy('a', 'b')|drop('a')")(data)
  assert list(data) == ["a"] and list(out) == ["b"]


def test_register_twice_raises():
  with pytest.raises(ValueError, match="'keep' is registered twice"):
    registry.register("keep")(lambda: None)


@utils.inkey_outkey(indefault="x", outdefault="y")
def _get_add(n):
  return lambda t: t + n


@utils.inkey_outkey(indefault="x", outdefault="x", with_data=True)
def _get_add_other(other):
  return lambda t, data: t + data[other]


def test_inkey_outkey():
  data = {"x": tf.constant(1), "z": tf.constant(10)}
  assert _get_add(2)(dict(data))["y"] == 3  # Default inkey -> outkey.
  out = _get_add(2, key="z")(dict(data))
  assert (out["x"], out["z"]) == (1, 12)  # In place.
  out = _get_add(2, inkey="z", outkey="w")(dict(data))
  assert (out["z"], out["w"]) == (10, 12)
  assert _get_add_other("z")(dict(data))["x"] == 11
  assert list(inspect.signature(_get_add).parameters) == [
      "n", "key", "inkey", "outkey"]


def _full_pipe_example():
  """A 6x8 example with every kind of input, encoded as a TFDS reader would."""
  rng = np.random.RandomState(0)
  image = rng.randint(0, 256, (6, 8, 3)).astype(np.uint8)
  depth = rng.randint(1, 5000, (6, 8, 1)).astype(np.uint16)
  panoptic = np.zeros((6, 8, 3), np.uint8)
  panoptic[:3, :4, 0], panoptic[3:, 4:, 1] = 7, 1  # Ids 7 and 256.
  return {
      "image": tf.io.encode_png(image),
      "depth": tf.io.encode_png(depth),
      "normals": tf.io.encode_png(
          np.full((6, 8, 3), [128, 128, 255], np.uint8)),
      "panoptic_image": panoptic,
      "panoptic_objects": {"id": np.array([256, 7]), "label": np.array([4, 2])},
  }


def test_whole_pipe_eager_equals_tf_data():
  pipe = ("decode|decode_depth_png|decode_normals_png|coco_panoptic|"
          "make_canonical|central_crop((4, 6), key='semantics')|"
          "resize((4, 6), method='nearest', key='instances')|"
          "value_range(-1, 1)|rename('depth', 'labels')|"
          "concat(['semantics', 'instances'], 'panoptic')|"
          "squeeze(key='labels')|cast('float32', key='panoptic')|"
          "onehot(3, key='instances')|drop('panoptic_image')|"
          "keep('image', 'labels', 'normals', 'panoptic', 'instances')")
  fn = builder.get_preprocess_fn(pipe)
  data = _full_pipe_example()
  eager = fn(data)
  graph = tf.data.Dataset.from_tensors(data).map(fn).get_single_element()
  assert set(eager) == set(graph) == {
      "image", "labels", "normals", "panoptic", "instances"}
  for k in eager:
    np.testing.assert_array_equal(eager[k], graph[k])
  assert graph["panoptic"].shape == (4, 6, 2)
  assert graph["instances"].shape == (4, 6, 1, 3)
  assert graph["labels"].shape == (6, 8)


def test_random_augmentations_act_identically_on_all_keys():
  pipe = ("decode|copy('image', 'twin')|inception_box(area=(0.2, 0.6))|"
          "crop_box(key='image')|crop_box(key='twin')|randu('fliplr')|"
          "det_fliplr(key='image')|det_fliplr(key='twin')|"
          "random_crop(2, key='image')")
  fn = builder.get_preprocess_fn(pipe)
  ds = tf.data.Dataset.from_tensors(_full_pipe_example()).repeat(8).map(fn)
  for ex in ds:
    assert ex["image"].shape == (2, 2, 3)
    assert 0 <= ex["fliplr"] < 1
    np.testing.assert_array_equal(ex["box"][2:] > 0, True)
    twin = ex["twin"].numpy()
    windows = np.lib.stride_tricks.sliding_window_view(twin, (2, 2, 3))
    assert (windows == ex["image"].numpy()).all(axis=(-3, -2, -1)).any()
