r"""Single-core generation speed of synthetic_scenes.

Prints images/s for the numpy renderer alone (`render.generate`: sampling, ray
casting, labels) and for renderer + TFDS feature encoding (PNG compression and
tf.Example-ready dicts), at 64x64 and 128x128:

  python -m benchmarks.dataset_generation --num 300

The process pins itself to one CPU and limits BLAS / OpenMP / TensorFlow to one
thread, so numbers are per core; `download_and_prepare` runs one such process.
"""
import os

# Before numpy / TensorFlow are imported, which read these at start-up.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ[_var] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import functools  # pylint: disable=g-import-not-at-top,g-bad-import-order
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf
import tensorflow_datasets as tfds

from uvimx.datasets.synthetic_scenes import render
from uvimx.datasets.synthetic_scenes import synthetic_scenes

_NUM = flags.DEFINE_integer("num", 300, "Images per measurement.")


_SEED = synthetic_scenes.SPLIT_SEEDS["train"]


def images_per_second(fn, num):
  fn(0)  # Warm-up (TensorFlow initialisation, caches).
  start = time.perf_counter()
  for index in range(num):
    fn(index)
  return num / (time.perf_counter() - start)


def render_only(size, index):
  return render.generate((_SEED, index), size, size)


def render_and_encode(size, features, index):
  example = render.generate((_SEED, index), size, size)
  return features.encode_example(dict(example, **{"image/id": index}))


def main(argv):
  del argv
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  print(f"{'resolution':>10} | {'renderer img/s':>14} | "
        f"{'+ TFDS encode img/s':>19}")
  for size in (64, 128):
    features = tfds.builder(f"synthetic_scenes/{size}x{size}",
                            data_dir=tempfile.mkdtemp()).info.features
    rendered = images_per_second(functools.partial(render_only, size),
                                 _NUM.value)
    encoded = images_per_second(
        functools.partial(render_and_encode, size, features), _NUM.value)
    print(f"{f'{size}x{size}':>10} | {rendered:>14.1f} | {encoded:>19.1f}")


if __name__ == "__main__":
  app.run(main)
