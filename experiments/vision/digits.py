"""An embedded TFDS dataset: scikit-learn's bundled handwritten digits.

`sklearn.datasets.load_digits` ships 1,797 real 8x8 grayscale images of the digits 0-9 (pixel
values 0-16) inside the scikit-learn package, so this builder prepares a complete TFDS dataset
offline, in about a second, without downloading anything. Importing this module registers the
builder with TFDS under the name `digits`, after which `tfds.builder("digits", data_dir=...)` and
`tfds.data_source("digits", ...)` work like for any other dataset.

Storage choices, made so that the embedded dataset is read through exactly the code path of
`mnist`, `fashion_mnist` or `cifar10`:
    * images are a `tfds.features.Image` (PNG-encoded uint8); the 17 grey levels 0..16 are mapped
        to 0..255 by `round(v * 255 / 16)`, which is lossless (the levels stay distinct);
    * examples are written as ARRAY_RECORD files, which `builder.as_data_source` reads without
        TensorFlow.

The split is fixed: a permutation of the 1,797 examples drawn from `numpy.random.default_rng(0)`;
its first `NUM_TEST_EXAMPLES` = 360 (20%) examples are `test`, the remaining 1,437 are `train`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath
from sklearn import datasets as sklearn_datasets

NUM_TEST_EXAMPLES = 360
SPLIT_SEED = 0
_MAX_PIXEL_VALUE = 16


def _png_bytes(image: np.ndarray) -> bytes:
    # Encoding with PIL (not TFDS's own encoder, which needs TensorFlow) keeps the build TF-free.
    buffer = io.BytesIO()
    PIL.Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def split_indices() -> dict[str, np.ndarray]:
    """Returns the indices into `load_digits()` that make up each split.

    Returns:
        A dict mapping `"train"` and `"test"` to sorted int arrays of example indices.
    """
    num_examples = len(sklearn_datasets.load_digits().target)
    order = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    return {
        "train": np.sort(order[NUM_TEST_EXAMPLES:]),
        "test": np.sort(order[:NUM_TEST_EXAMPLES]),
    }


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits as a TFDS dataset (10 classes, 1,437/360 examples)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: fixed seeded 1,437/360 train/test split."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default lookup of the module file needs the `importlib_resources` backport,
        # which is not among our dependencies; the answer is simply this file.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly rather than with `dataset_info_from_configs`, which looks for metadata
        # files next to the module that an embedded builder does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # Everything is bundled with scikit-learn.
        return {name: self._generate_examples(indices) for name, indices in split_indices().items()}

    def _generate_examples(self, indices: np.ndarray) -> Iterator[tuple[int, dict]]:
        digits = sklearn_datasets.load_digits()
        images = np.round(digits.images * (255 / _MAX_PIXEL_VALUE)).astype(np.uint8)[..., None]
        for index in indices:
            yield (
                int(index),
                {"image": _png_bytes(images[index]), "label": int(digits.target[index])},
            )
