"""Tests of the data layer: the digits builder, TFDS loading, tasks and the numpy pipeline."""

import io
import pathlib
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from etils import epath
from sklearn import datasets as sklearn_datasets

from experiments.training import pipeline
from experiments.vision import digits, tasks, tfds_data
from experiments.vision import images as image_ops
from experiments.vision.tfds_data import ImageDataset
from tests._subprocess import HANG_GUARD_SECONDS

REPO = pathlib.Path(__file__).resolve().parents[2]


class TinyColors(tfds.core.GeneratorBasedBuilder):
    """A non-embedded RGB image dataset, prepared explicitly like `tfds build` would."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(4, 4, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

    def _generate_examples(self, count):
        for index in range(count):
            image = np.full((4, 4, 3), 0, np.uint8)
            image[..., index % 3] = 255
            buffer = io.BytesIO()
            PIL.Image.fromarray(image).save(buffer, format="PNG")
            yield index, {"image": buffer.getvalue(), "label": index % 3}


def _read_raw(data_dir: str) -> dict[str, list]:
    builder = tfds.builder("digits", data_dir=data_dir)
    sources = builder.as_data_source()
    return {
        split: [(example["image"], int(example["label"])) for example in sources[split]]
        for split in ("train", "test")
    }


def test_digits_builder_is_deterministic_and_matches_sklearn(tmp_path, digits_data_dir):
    # The second build runs in a fresh process, which must never import TensorFlow.
    build = (
        "import sys; from experiments.vision import tfds_data; "
        f"dataset = tfds_data.load_split('digits', 'test', {str(tmp_path)!r}); "
        "print(dataset.num_examples, 'tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["360", "False"]
    first, second = _read_raw(digits_data_dir), _read_raw(str(tmp_path))
    assert [len(first[s]) for s in ("train", "test")] == [1437, 360]
    for split in ("train", "test"):
        assert all(
            np.array_equal(a, b) and la == lb
            for (a, la), (b, lb) in zip(first[split], second[split], strict=True)
        )
    # The stored images are sklearn's, grey levels 0..16 mapped to 0..255.
    sk = sklearn_datasets.load_digits()
    indices = digits.split_indices()["test"]
    expected = {
        (int(t), np.round(img * 255 / 16).astype(np.uint8).tobytes())
        for img, t in zip(sk.images[indices], sk.target[indices], strict=True)
    }
    stored = {(label, image[..., 0].tobytes()) for image, label in first["test"]}
    assert stored == expected


def test_split_is_fixed_and_disjoint():
    splits = digits.split_indices()
    assert len(np.intersect1d(splits["train"], splits["test"])) == 0
    assert len(splits["train"]) + len(splits["test"]) == 1797
    np.testing.assert_array_equal(splits["test"][:5], digits.split_indices()["test"][:5])


def test_load_split_returns_normalized_arrays(digits_data_dir):
    train = tfds_data.load_split("digits", "train", digits_data_dir)
    assert train.images.shape == (1437, 8, 8, 1) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int32 and set(np.unique(train.labels)) == set(range(10))
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    assert len(np.unique(train.images)) == 17
    with pytest.raises(ValueError, match="read-only"):
        train.images[0, 0, 0, 0] = 1.0


def test_a_prepared_tfds_dataset_loads_through_the_same_path(tmp_path):
    TinyColors(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
    train = tfds_data.load_split("tiny_colors", "train", str(tmp_path))
    assert train.images.shape == (6, 4, 4, 3) and train.num_classes == 3
    np.testing.assert_array_equal(train.images[np.arange(6), 0, 0, train.labels], 1.0)
    assert train.images.sum() == 6 * 16


def test_dataset_pair_target_task(tmp_path):
    TinyColors(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
    data_config = ml_collections.ConfigDict(
        {"name": "digits", "data_dir": str(tmp_path), "target_dataset": "tiny_colors"}
    )
    assert tasks.target_task_names(data_config) == ("other_dataset",)
    source = tasks.source_task(data_config)
    target = tasks.target_task(data_config, "other_dataset", k_shot=1, seed=0)
    assert source.num_classes == 10 and source.train.num_examples == 1437
    assert target.num_classes == 3 and target.input_shape == (4, 4, 3)
    np.testing.assert_array_equal(target.train.labels, [0, 1, 2])
    assert target.test.num_examples == 3


def test_missing_dataset_is_a_clear_error_without_download(tmp_path, monkeypatch):
    attempts = []  # Every network connection tried; each also fails, so none can hang.

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"the test forbids network access (to {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(tfds_data.DatasetNotPreparedError) as error:
        tfds_data.load_split("mnist", "train", str(tmp_path))
    message = str(error.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "tfds build mnist --file_format=array_record" in message
    assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or written.
    assert attempts == []  # Nor was the network tried.


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(tfds_data.UnknownDatasetError, match=r"\['digits'\].*Did you mean.*mnist"):
        tfds_data.load_split("mnistt", "train", str(tmp_path))


def test_class_split_tasks(smoke_config):
    source = tasks.source_task(smoke_config.data)
    target = tasks.target_task(smoke_config.data, "held_out_classes")
    full = tfds_data.load_split("digits", "train", smoke_config.data.data_dir)
    assert source.num_classes == target.num_classes == 5
    assert source.train.num_examples == np.isin(full.labels, range(5)).sum()
    # Target labels 5..9 become 0..4, in order, and the images are those of digits 5..9.
    np.testing.assert_array_equal(target.train.labels, full.labels[full.labels >= 5] - 5)
    # Both are standardized with the statistics of the full train split.
    mean, std = image_ops.channel_statistics(full.images)
    np.testing.assert_allclose(target.train.images, (full.images[full.labels >= 5] - mean) / std, rtol=1e-6)


def test_k_shot_is_deterministic_and_balanced(smoke_config):
    first = tasks.target_task(smoke_config.data, "held_out_classes", k_shot=3, seed=1)
    again = tasks.target_task(smoke_config.data, "held_out_classes", k_shot=3, seed=1)
    other = tasks.target_task(smoke_config.data, "held_out_classes", k_shot=3, seed=2)
    np.testing.assert_array_equal(first.train.labels, np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(first.train.images, again.train.images)
    assert not np.array_equal(first.train.images, other.train.images)
    assert (
        first.test.num_examples == tasks.target_task(smoke_config.data, "held_out_classes").test.num_examples
    )
    with pytest.raises(ValueError, match="`k` must be in"):
        tasks.k_shot_subset(first.train, 4, seed=0)


def test_unknown_target_task_lists_valid_ones(smoke_config):
    with pytest.raises(ValueError, match=r"'other_dataset'.*\['held_out_classes'\]"):
        tasks.target_task(smoke_config.data, "other_dataset")


def test_batches_depend_only_on_seed_and_step():
    num_examples, batch_size = 50, 8  # 6 batches per epoch, 2 examples dropped.
    epoch = [pipeline.batch_indices(num_examples, batch_size, 3, step) for step in range(6)]
    flat = np.concatenate(epoch)
    assert len(np.unique(flat)) == 48  # One epoch visits distinct examples.
    np.testing.assert_array_equal(flat, pipeline.epoch_permutation(num_examples, 3, 0)[:48])
    np.testing.assert_array_equal(epoch[4], pipeline.batch_indices(num_examples, batch_size, 3, 4))
    next_epoch = pipeline.batch_indices(num_examples, batch_size, 3, 6)
    assert not np.array_equal(next_epoch, epoch[0])
    assert not np.array_equal(pipeline.batch_indices(num_examples, batch_size, 4, 0), epoch[0])


def test_random_shift_is_a_seeded_crop_of_the_padded_image():
    images = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5, 1)
    shifted = image_ops.random_shift(images, np.random.default_rng(0), 2)
    again = image_ops.random_shift(images, np.random.default_rng(0), 2)
    np.testing.assert_array_equal(shifted, again)
    for image, result in zip(images, shifted, strict=True):
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
        crops = [padded[i : i + 5, j : j + 5] for i in range(5) for j in range(5)]
        assert any(np.array_equal(result, crop) for crop in crops)
    assert image_ops.random_shift(images, np.random.default_rng(0), 0) is images


def test_gaussian_noise_is_seeded():
    images = np.zeros((1000, 2, 2, 1), np.float32)
    noisy = image_ops.gaussian_noise(images, pipeline.augmentation_rng(0, 5), 0.5)
    np.testing.assert_array_equal(
        noisy, image_ops.gaussian_noise(images, pipeline.augmentation_rng(0, 5), 0.5)
    )
    assert noisy.dtype == np.float32 and abs(noisy.std() - 0.5) < 0.02


def test_image_dataset_checks_dtypes():
    with pytest.raises(ValueError, match="`labels` must be an int32"):
        ImageDataset(np.zeros((2, 1, 1, 1), np.float32), np.zeros(2, np.int64), 2)
