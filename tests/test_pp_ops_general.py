"""Tests of the general pp ops against hand-written expected tensors."""
import numpy as np
import pytest
import tensorflow as tf

from pp import builder


def _run(pipe, **data):
  return builder.get_preprocess_fn(pipe)(data)


def test_keep_and_drop():
  data = {"a": 1, "b": 2, "c": 3}
  assert set(_run("keep('a', 'c')", **data)) == {"a", "c"}
  assert set(_run("drop('a', 'c')", **data)) == {"b"}


@pytest.mark.parametrize("pipe", ["keep('a', 'x')", "drop('x')"])
def test_keep_and_drop_are_strict(pipe):
  with pytest.raises(ValueError, match="needs key 'x'"):
    _run(pipe, a=1)


def test_keep_carries_the_example_seed_to_later_random_ops():
  pipe = builder.get_preprocess_fn("keep('a')|randu('u')")
  seed = np.array([3, 4], np.int64)
  first, again = (pipe({"a": 1, "b": 2, "_seed": seed})["u"] for _ in "12")
  assert first == again
  assert set(pipe({"a": 1, "_seed": seed})) == {"a", "u"}


def test_copy_copies_nested_structure():
  out = _run("copy('objs', 'objs2')", objs={"id": [1, 2]})
  assert out["objs2"] is not out["objs"]
  np.testing.assert_array_equal(out["objs2"]["id"], [1, 2])


def test_rename():
  out = _run("rename('semantics', 'labels')", semantics=[1, 2], image=0)
  assert set(out) == {"labels", "image"}
  np.testing.assert_array_equal(out["labels"], [1, 2])


def test_concat():
  out = _run("concat(['a', 'b'], 'ab')|concat(('a', 'b'), 'v', axis=0)",
             a=[[1], [2]], b=[[3], [4]])
  np.testing.assert_array_equal(out["ab"], [[1, 3], [2, 4]])
  np.testing.assert_array_equal(out["v"], [[1], [2], [3], [4]])


def test_onehot_of_a_label_map():
  labels = np.array([[0, 1, 2, -1],
                     [2, 2, 0, 1],
                     [1, 0, -1, 2]], np.int32)
  out = _run("onehot(3, key='labels', on=5, off=-1)", labels=labels)
  expected = np.full((3, 4, 3), -1.0, np.float32)
  for (y, x), c in np.ndenumerate(labels):
    if c >= 0:  # Void (-1) stays all off.
      expected[y, x, c] = 5.0
  assert out["labels"].dtype == tf.float32
  np.testing.assert_array_equal(out["labels"], expected)
  np.testing.assert_array_equal(
      _run("onehot(2, inkey='l', outkey='h')", l=[1, 0])["h"], [[0, 1], [1, 0]])


def test_squeeze():
  out = _run("squeeze(key='x')|squeeze(axis=0, inkey='y', outkey='z')",
             x=np.zeros((3, 4, 1)), y=np.zeros((1, 2)))
  assert out["x"].shape == (3, 4) and out["z"].shape == (2,)


def test_cast():
  out = _run("cast('int32', key='x')", x=np.array([1.7, -2.2], np.float32))
  assert out["x"].dtype == tf.int32
  np.testing.assert_array_equal(out["x"], [1, -2])
