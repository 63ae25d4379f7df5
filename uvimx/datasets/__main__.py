r"""Builds one of uvimx's TFDS datasets into a data dir.

  python -m uvimx.datasets nyuv2_labeled --manual_dir DIR --data_dir DATA_DIR
  python -m uvimx.datasets synthetic_scenes/128x128 --data_dir DATA_DIR

What `tfds build --imports uvimx.datasets NAME` would do, without the
apache_beam that TFDS 4.9.10's CLI imports.
"""
from absl import app
from absl import flags
import tensorflow_datasets as tfds

import uvimx.datasets  # pylint: disable=unused-import  (registers builders)

_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Manually downloaded files, for datasets that need "
    "them (see the builder's docstring).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("Give one dataset name, e.g. nyuv2_labeled.")
  builder = tfds.builder(argv[1], data_dir=_DATA_DIR.value)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=_MANUAL_DIR.value))
  print(f"Built {argv[1]} in {builder.data_dir}: "
        + ", ".join(f"{k} {v.num_examples}"
                    for k, v in builder.info.splits.items()))


if __name__ == "__main__":
  app.run(main)
