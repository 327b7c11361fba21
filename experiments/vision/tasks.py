"""Source (pretraining) and target (transfer) tasks, built from `config.data`.

Two ways to set up transfer, both read from `config.data`:
  * by class split, the default for digits: pretrain on `source_classes` of dataset `name` and
    transfer to its `target_classes` (digits: 0-4 -> 5-9, so the target classes are never seen
    during pretraining, while the image statistics are shared);
  * by dataset pair: pretrain on dataset `name` (`source_classes=()`: all classes) and transfer to
    dataset `target_dataset`.

Target tasks are addressed by name (`target_task_names`): `"held_out_classes"` (needs
`target_classes`) and `"other_dataset"` (needs `target_dataset`). Labels of a class subset are
renumbered `0..len(classes)-1` in the order listed. Images are standardized per channel with the
statistics of the full train split of their dataset, so source and target images of one dataset
are normalized identically. Everything here is deterministic; only k-shot sampling takes a seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np

from experiments.core import config_utils
from experiments.core.config_utils import Field, IntTuple
from experiments.vision import images, tfds_data
from experiments.vision.tfds_data import ImageDataset

DATA_SCHEMA = {
    "name": Field(str),
    "data_dir": Field((str, type(None)), None),
    "source_classes": Field(IntTuple, ()),
    "target_classes": Field(IntTuple, ()),
    "target_dataset": Field(str, ""),
}
HELD_OUT_CLASSES = "held_out_classes"
OTHER_DATASET = "other_dataset"


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: standardized train and test splits.

    Attributes:
      name: a readable description, e.g. `"digits[5, 6, 7, 8, 9]"`.
      train: the training examples.
      test: the test examples.
    """

    name: str
    train: ImageDataset
    test: ImageDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def input_vocab_size(self) -> int:
        """Images are not tokens."""
        return 0


def class_subset(dataset: ImageDataset, classes: Sequence[int]) -> ImageDataset:
    """Keeps the examples of `classes` and renumbers their labels `0..len(classes)-1`.

    Args:
      dataset: the dataset to filter.
      classes: distinct class ids of `dataset`, in the order that defines the new labels.

    Returns:
      The filtered dataset, examples in their original order, with `len(classes)` classes.
    """
    classes = list(classes)
    if len(set(classes)) != len(classes) or not all(0 <= c < dataset.num_classes for c in classes):
        raise ValueError(
            f"`classes` must be distinct ids in [0, {dataset.num_classes}); got {classes}."
        )
    new_label = np.full(dataset.num_classes, -1, dtype=np.int32)
    new_label[classes] = np.arange(len(classes), dtype=np.int32)
    keep = np.flatnonzero(new_label[dataset.labels] >= 0)
    subset = dataset.take(keep)
    return ImageDataset(subset.images, new_label[subset.labels], len(classes))


def k_shot_subset(dataset: ImageDataset, k: int, seed: int) -> ImageDataset:
    """Draws `k` examples of every class, without replacement; a function of `(dataset, k, seed)`.

    Args:
      dataset: the dataset to draw from.
      k: examples per class.
      seed: the sampling seed.

    Returns:
      `k * num_classes` examples, grouped by class in increasing class order.
    """
    counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
    if k < 1 or k > counts.min():
        raise ValueError(
            f"`k` must be in [1, {counts.min()}] (the size of the smallest class); got {k}."
        )
    rng = np.random.default_rng(seed)
    chosen = [
        np.sort(rng.choice(np.flatnonzero(dataset.labels == label), size=k, replace=False))
        for label in range(dataset.num_classes)
    ]
    return dataset.take(np.concatenate(chosen))


def _task(name: str, classes: Sequence[int], data_dir: str | None) -> Task:
    train = tfds_data.load_split(name, "train", data_dir)
    test = tfds_data.load_split(name, "test", data_dir)
    mean, std = images.channel_statistics(train.images)
    train, test = (images.standardize(split, mean, std) for split in (train, test))
    if classes:
        train, test = class_subset(train, classes), class_subset(test, classes)
        name = f"{name}{list(classes)}"
    return Task(name, train, test)


def source_task(data_config: ml_collections.ConfigDict) -> Task:
    """The pretraining task: dataset `name`, restricted to `source_classes` when given.

    Args:
      data_config: `config.data`.

    Returns:
      The standardized source task.
    """
    fields = config_utils.read_fields(data_config, DATA_SCHEMA, "config.data")
    return _task(fields["name"], fields["source_classes"], fields["data_dir"])


def target_task_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The target task names that `data_config` defines (see the module docstring)."""
    fields = config_utils.read_fields(data_config, DATA_SCHEMA, "config.data")
    names = []
    if fields["target_classes"]:
        names.append(HELD_OUT_CLASSES)
    if fields["target_dataset"]:
        names.append(OTHER_DATASET)
    return tuple(names)


def target_task(
    data_config: ml_collections.ConfigDict,
    name: str,
    *,
    k_shot: int | None = None,
    seed: int = 0,
) -> Task:
    """A transfer task, optionally with a k-shot training split.

    Args:
      data_config: `config.data`.
      name: one of `target_task_names(data_config)`.
      k_shot: if given, the training split keeps `k_shot` examples per class (the test split is
        always complete).
      seed: seed of the k-shot sample.

    Returns:
      The standardized target task.

    Raises:
      ValueError: `name` is not a target task of this config; the message lists the valid ones.
    """
    valid = target_task_names(data_config)
    if name not in valid:
        raise ValueError(
            f"Unknown target task {name!r}; this config.data defines {list(valid)} "
            f"({HELD_OUT_CLASSES!r} needs config.data.target_classes, {OTHER_DATASET!r} needs "
            "config.data.target_dataset)."
        )
    fields = config_utils.read_fields(data_config, DATA_SCHEMA, "config.data")
    if name == HELD_OUT_CLASSES:
        task = _task(fields["name"], fields["target_classes"], fields["data_dir"])
    else:
        task = _task(fields["target_dataset"], (), fields["data_dir"])
    if k_shot is None:
        return task
    train = k_shot_subset(task.train, k_shot, seed)
    return Task(f"{task.name}/{k_shot}-shot/seed{seed}", train, task.test)
