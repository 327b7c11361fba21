"""Where TFDS datasets live: the data dir of `config.data.data_dir`."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds


def resolve(data_dir: str | None) -> str:
    """The TFDS data directory used for `data_dir` (`None`: the TFDS default)."""
    return os.path.expanduser(data_dir) if data_dir else tfds.core.constants.DATA_DIR
