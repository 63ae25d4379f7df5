"""Shared pytest fixtures."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Eight CPU devices for the whole session, so sharded train steps (data=8,
# data=2 x fsdp=4) run on a machine without accelerators. Must be set before
# JAX initialises its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
# JAX's persistent compilation cache, fresh for each session: many tests (and
# the train.py subprocesses, which inherit the variable) compile the same
# smoke-sized programs, and compiling dominates their time (a PolyMaX smoke
# run: 80 s cold, 24 s warm under load).
_JAX_CACHE = tempfile.mkdtemp(prefix="uvimx_test_jax_cache_")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE

import pytest


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
  """A TFDS data dir holding a freshly built synthetic_scenes/tiny."""
  import tensorflow_datasets as tfds
  import uvimx.datasets  # pylint: disable=unused-import  (registers builders)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("synthetic_scenes/tiny", data_dir=data_dir).download_and_prepare()
  return data_dir
