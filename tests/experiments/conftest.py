"""Shared fixtures of the experiment tests: the embedded digits, the tiny PCFG dataset and a
finished smoke pretraining run, each made once per session."""

import ml_collections
import pytest

from experiments.configs import smoke
from experiments.language.tfds_builder import load_pcfg
from experiments.training import train
from experiments.vision import tfds_data


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data dir holding the prepared embedded digits dataset."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds_data.load_split("digits", "train", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def pcfg_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data dir holding the prepared tiny PCFG dataset (`Pcfg` config "tiny")."""
    data_dir = str(tmp_path_factory.mktemp("tfds_pcfg"))
    load_pcfg(data_dir, "tiny")
    return data_dir


@pytest.fixture
def smoke_config(digits_data_dir: str) -> ml_collections.ConfigDict:
    """The smoke config, reading the digits from the session's data dir."""
    config = smoke.get_config()
    config.data.data_dir = digits_data_dir
    return config


@pytest.fixture(scope="session")
def smoke_run(
    digits_data_dir: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ml_collections.ConfigDict, object]:
    """A finished smoke pretraining run (cross-entropy): `(config, workdir)`.

    Shared: tests may add job results of their own stage to its workdir, never change its run.
    """
    config = smoke.get_config()
    config.data.data_dir = digits_data_dir
    workdir = tmp_path_factory.mktemp("smoke_run")
    train.pretrain(config, workdir)
    return config, workdir
