"""`config.sweep.arms`: a study of several products of the sweep's axes, each its own length."""

import ml_collections
import pytest

from experiments.configs import pcfg as pcfg_config
from experiments.core import config_utils
from experiments.sweep import arms, study
from tests.experiments.test_language import TINY_OVERRIDES


@pytest.fixture
def config(pcfg_data_dir) -> ml_collections.ConfigDict:
    config = pcfg_config.get_config()
    config.data.data_dir = pcfg_data_dir
    for path, value in TINY_OVERRIDES.items():
        section, name = path.split(".")
        config[section][name] = value
    config.sweep.seeds = (0, 1)
    config.sweep.widths, config.sweep.depths = (16,), (1,)
    return config


def _runs(configs):
    return [(c.objective, c.width, c.seed, c.steps) for c in configs]


def test_without_arms_the_sweep_is_one_product(config):
    config.sweep.widths = (16, 32)
    assert _runs(study.configurations(config)) == [
        ("adamw", width, seed, (0, 3, 6)) for width in (16, 32) for seed in (0, 1)
    ]


def test_arms_run_the_union_of_their_products_once_each(config):
    config.sweep.arms = (
        dict(name="continued", objectives=("adamw",), widths=(16,), steps=8, checkpoint_steps=(2, 4)),
        dict(name="algorithm", objectives=("adamw", "adversarial"), widths=(16,), steps=8,
             checkpoint_steps=(2, 4)),
        dict(name="size", widths=(32,), steps=4, checkpoint_steps=(2,)),
    )
    configs = study.configurations(config)
    assert _runs(configs) == [
        ("adamw", 16, 0, (2, 4, 8)),
        ("adamw", 16, 1, (2, 4, 8)),
        ("adversarial", 16, 0, (2, 4, 8)),
        ("adversarial", 16, 1, (2, 4, 8)),
        ("adamw", 32, 0, (2, 4)),
        ("adamw", 32, 1, (2, 4)),
    ]
    assert configs[-1].config.pretrain.steps == 4 and configs[-1].config.model.width == 32
    assert config.pretrain.steps == 6  # The study's config is not changed.


def test_a_run_shared_by_two_arms_must_be_trained_alike(config):
    config.sweep.arms = (
        dict(name="long", steps=8),
        dict(name="short", steps=4),
    )
    with pytest.raises(config_utils.ConfigError, match="long and short both run objective adamw"):
        study.configurations(config)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("adamw", r"config\.sweep\.arms\[0\] must be a dict"),
        (dict(width=(16,)), r"config\.sweep\.arms\[0\] has unknown fields \['width'\]"),
        (dict(widths=()), r"config\.sweep\.arms\[0\]\.widths must list at least one value"),
        (dict(steps="8"), r"config\.sweep\.arms\[0\]\.steps must be int"),
    ],
)
def test_bad_arms_are_named(config, entry, message):
    config.sweep.arms = (entry,)
    with pytest.raises(config_utils.ConfigError, match=message):
        study.configurations(config)


def test_an_arm_defaults_to_the_sweep_and_pretrain_fields(config):
    sweep = config_utils.read_fields(config.sweep, study.SWEEP_SCHEMA, "config.sweep")
    (arm,) = arms.read_arms(config, {**sweep, "arms": (dict(name="only"),)})
    assert arm == arms.Arm("only", ("adamw",), (16,), (1,), 6, (0, 3), "warmup_constant")


def test_an_arm_of_budgets_runs_each_budget_once_with_its_last_checkpoint(config):
    config.sweep.arms = (
        dict(name="continued", steps=8, checkpoint_steps=(2, 4)),
        dict(name="protocol", schedule="warmup_linear", budgets=(4, 8)),
    )
    configs = study.configurations(config)
    assert [(c.schedule, c.seed, c.steps, c.budget) for c in configs] == [
        ("warmup_constant", 0, (2, 4, 8), 0),
        ("warmup_constant", 1, (2, 4, 8), 0),
        ("warmup_linear", 0, (4,), 4),
        ("warmup_linear", 1, (4,), 4),
        ("warmup_linear", 0, (8,), 8),
        ("warmup_linear", 1, (8,), 8),
    ]
    assert configs[4].config.pretrain.schedule == "warmup_linear"
    assert configs[4].config.pretrain.steps == 8 and list(configs[4].config.pretrain.checkpoint_steps) == []
    # The config's own schedule keeps its directory; every other run gets its own.
    assert configs[0].parts == ("text_transformer_w16_d1", "adamw", "seed0")
    assert configs[2].parts == ("text_transformer_w16_d1", "adamw_warmup_linear_4", "seed0")
    assert len({c.parts for c in configs}) == len(configs)


@pytest.mark.parametrize(
    "entry, message",
    [
        (dict(budgets=(4, 8), steps=8), r"arms\[1\] has budgets, so steps does not apply"),
        (dict(budgets=(8, 4)), r"arms\[1\]\.budgets must be distinct positive step counts, ascending"),
        (dict(budgets=(0, 4)), r"arms\[1\]\.budgets must be distinct positive"),
        (dict(budgets=(4, 8), schedule="warmup_constant"), r"an arm of budgets and another arm both run"),
    ],
)
def test_bad_budgets_are_named(config, entry, message):
    config.sweep.arms = (dict(name="continued", steps=8, checkpoint_steps=(2, 4)), entry)
    with pytest.raises(config_utils.ConfigError, match=message):
        study.configurations(config)
