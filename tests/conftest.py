"""Shared pytest fixtures."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Eight CPU devices for the whole session, so sharded train steps (data=8,
# data=2 x fsdp=4) run on a machine without accelerators. Must be set before
# JAX initialises its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import pytest


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
  """A TFDS data dir holding a freshly built synthetic_scenes/tiny."""
  import tensorflow_datasets as tfds
  import uvimx.datasets  # pylint: disable=unused-import  (registers builders)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("synthetic_scenes/tiny", data_dir=data_dir).download_and_prepare()
  return data_dir
