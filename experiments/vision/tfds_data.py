"""TFDS image-classification datasets as in-memory numpy arrays, without TensorFlow.

Every dataset goes through one path: `tfds.builder(name, data_dir=...)`, then
`builder.as_data_source(split)`, which reads ARRAY_RECORD files and decodes images with PIL. The
embedded `digits` dataset (see `experiments.vision.digits`) is prepared on first use, offline; every
other dataset (`mnist`, `fashion_mnist`, `cifar10`, ...) must already be prepared in ARRAY_RECORD
format in the data directory: nothing is ever downloaded from here, so runs never stall on the
network and fail fast, with instructions, where the data is missing.

The datasets used here are small, so each split is read once and kept in memory as arrays.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import numpy as np
import tensorflow_datasets as tfds

from experiments.core import config_utils, data_dirs
from experiments.training import pipeline
from experiments.vision import digits

# Datasets that this package can prepare offline; every other name must be prepared beforehand.
EMBEDDED_DATASETS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {"digits": digits.Digits}
_EXAMPLE_NAMES = ("digits", "mnist", "fashion_mnist", "cifar10")


class UnknownDatasetError(config_utils.ConfigError):
    """A dataset name (`config.data.name`) that neither this package nor TFDS knows."""


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset that is not prepared (in ARRAY_RECORD format) in the data directory."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
      images: float32 array of shape `(num_examples, height, width, channels)`.
      labels: int32 array of shape `(num_examples,)`, values in `[0, num_classes)`.
      num_classes: number of classes the labels range over.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.float32:
            raise ValueError(
                "`images` must be a float32 array of shape (N, H, W, C); got "
                f"{self.images.dtype} {self.images.shape}."
            )
        if self.labels.shape != self.images.shape[:1] or self.labels.dtype != np.int32:
            raise ValueError(
                f"`labels` must be an int32 array of shape {self.images.shape[:1]}; got "
                f"{self.labels.dtype} {self.labels.shape}."
            )

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def batch_at(self, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
        """The training batch of step `step` (`images` NHWC float32, `labels`), a function of
        `(seed, step)` only (`experiments.training.pipeline`)."""
        indices = pipeline.batch_indices(self.num_examples, batch_size, seed, step)
        return {"images": self.images[indices], "labels": self.labels[indices]}

    def take(self, indices: np.ndarray) -> ImageDataset:
        """Returns the examples at `indices`, in that order, with the same `num_classes`."""
        return ImageDataset(self.images[indices], self.labels[indices], self.num_classes)


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = sorted(set(tfds.core.registered.list_imported_builders()) | set(EMBEDDED_DATASETS))
        close = difflib.get_close_matches(name, known, n=3)
        raise UnknownDatasetError(
            f"Unknown dataset {name!r} (config.data.name). Expected the embedded dataset "
            f"{sorted(EMBEDDED_DATASETS)} or a TFDS image-classification dataset such as "
            f"{list(_EXAMPLE_NAMES[1:])}." + (f" Did you mean {close}?" if close else "")
        ) from None


def _not_prepared(name: str, data_dir: str, reason: str) -> DatasetNotPreparedError:
    return DatasetNotPreparedError(
        f"TFDS dataset {name!r} {reason} in data dir {data_dir!r}, and it is never downloaded "
        "from here. On a machine with internet access, run\n"
        f"    tfds build {name} --file_format=array_record --data_dir=DIR\n"
        f"then copy DIR/{name} into {data_dir!r} (or pass --config.data.data_dir=DIR)."
    )


@functools.lru_cache(maxsize=16)
def _load_split(name: str, split: str, data_dir: str) -> ImageDataset:
    builder = _builder(name, data_dir)
    if name in EMBEDDED_DATASETS and not builder.is_prepared():
        builder.download_and_prepare(file_format="array_record")
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir, "is not prepared")
    if split not in builder.info.splits:
        raise ValueError(
            f"Dataset {name!r} has no split {split!r}; "
            f"expected one of {sorted(builder.info.splits)}."
        )
    try:
        source = builder.as_data_source(split=split, file_format="array_record")
    except (NotImplementedError, ValueError) as error:
        reason = "is prepared, but not in ARRAY_RECORD format,"
        raise _not_prepared(name, data_dir, reason) from error
    image_key, label_key = builder.info.supervised_keys
    examples = source.__getitems__(range(len(source)))
    images = np.stack([example[image_key] for example in examples])
    if not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"Dataset {name!r}: expected integer images; got {images.dtype}.")
    # Integer images are scaled to [0, 1] by their dtype's range (255 for uint8).
    images = images.astype(np.float32) / np.iinfo(images.dtype).max
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray([example[label_key] for example in examples], dtype=np.int32)
    dataset = ImageDataset(images, labels, builder.info.features[label_key].num_classes)
    # The cache hands the same arrays to every caller, so they must not be modified in place.
    dataset.images.flags.writeable = False
    dataset.labels.flags.writeable = False
    return dataset


def load_split(name: str, split: str, data_dir: str | None = None) -> ImageDataset:
    """Loads one split of a TFDS image-classification dataset into memory.

    Args:
      name: TFDS name, e.g. `"digits"` (embedded, prepared offline on first use), `"mnist"`.
      split: split name, e.g. `"train"` or `"test"`.
      data_dir: TFDS data directory; `None` uses the TFDS default (`~/tensorflow_datasets` or
        `$TFDS_DATA_DIR`).

    Returns:
      An `ImageDataset` with images scaled to `[0, 1]`, in the order TFDS stores them. The arrays
      are cached and read-only.

    Raises:
      UnknownDatasetError: `name` is not a known dataset.
      DatasetNotPreparedError: the dataset is not prepared in ARRAY_RECORD format in `data_dir`.
    """
    return _load_split(name, split, data_dirs.resolve(data_dir))
