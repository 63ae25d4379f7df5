"""Preprocessing: pipe strings of registered TensorFlow ops, run in tf.data.

`pp.builder.get_preprocess_fn("decode|resize(64)|value_range(-1, 1)")` turns
a pipe string into a function on dicts of tensors; importing `pp.builder`
registers every op of `ops_general`, `ops_image` and `ops_dense`.
"""
