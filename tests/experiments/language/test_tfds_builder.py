"""Tests of the PCFG TFDS builder: the splits it serves, its configs and their names on disk."""

import pathlib

import numpy as np
import pytest

from experiments.language import paper_tasks
from experiments.language.grammar import random_grammar
from experiments.language.rooted_grammar import RootedGrammarSpec, root_pairs, rooted_grammar
from experiments.language.span_tasks import TASKS, downstream_task, span_labels
from experiments.language.tfds_builder import Pcfg, PcfgConfig, load_pcfg
from tests.experiments.language.test_rooted_grammar import SMALL


def test_tfds_builder_serves_the_splits(pcfg_data_dir):
    data = load_pcfg(pcfg_data_dir, "tiny")
    config = next(c for c in Pcfg.BUILDER_CONFIGS if c.name == "tiny")
    expected_splits = {"pretrain", "evaluation"} | {
        f"task_{t}_{s}" for t in TASKS for s in ("train", "test")
    }
    assert set(data.splits) == expected_splits
    pretrain = data.splits["pretrain"]
    assert pretrain["tokens"].shape == (config.num_pretrain, config.max_len)
    assert np.all(pretrain["label"] == -1)
    np.testing.assert_array_equal(pretrain["span"][:, 1], pretrain["length"])
    task = data.splits["task_b_test"]
    assert task["label"].shape == (config.num_task_test,)
    relabelled = span_labels(data.grammar, task["tokens"], task["length"], task["span"])
    np.testing.assert_array_equal(task["label"], relabelled)
    # Generation order is kept and the sampling is deterministic by seed.
    direct = downstream_task(
        data.grammar, "b", config.num_task_test, seed=(config.data_seed, 5), max_len=config.max_len
    )
    np.testing.assert_array_equal(task["tokens"], direct.tokens)
    with pytest.raises(ValueError, match=r"splits: .* unknown \['validation'\]"):
        load_pcfg(pathlib.Path(pcfg_data_dir), "tiny", splits=["validation"])
    reloaded = load_pcfg(pcfg_data_dir, "tiny", splits=["evaluation"])
    np.testing.assert_array_equal(
        reloaded.splits["evaluation"]["tokens"], data.splits["evaluation"]["tokens"]
    )


def test_small_config_is_the_tiny_grammar_with_many_sentences():
    # The grammar a tiny model can fit to 0.02 nats on a CPU (docs/pcfg_results.md); built lazily, so
    # only its parameters are checked here.
    configs = {c.name: c for c in Pcfg.BUILDER_CONFIGS}
    small, tiny = configs["small"], configs["tiny"]
    assert small.grammar == tiny.grammar and small.max_len == tiny.max_len == 8
    assert small.num_pretrain == 100_000 > tiny.num_pretrain
    grammar = random_grammar(small.grammar)
    assert grammar.emit.shape == (11, 20)


def test_tfds_custom_configs_are_keyed_by_their_parameters(tmp_path):
    first = PcfgConfig(data_seed=1, num_pretrain=10)
    second = PcfgConfig(data_seed=2, num_pretrain=10)
    assert first.name != second.name
    assert first.name == PcfgConfig(data_seed=1, num_pretrain=10).name
    with pytest.raises(ValueError, match="config"):
        load_pcfg(str(tmp_path), "no_such_config")
    with pytest.raises(ValueError, match="num_pretrain: expected a positive integer"):
        PcfgConfig(num_pretrain=0)


def test_rooted_configs_serve_the_paper_tasks(tmp_path):
    config = PcfgConfig(
        grammar=SMALL, min_len=5, max_len=8, num_pretrain=20, num_evaluation=10,
        num_task_train=30, num_task_test=20,
    )
    data = load_pcfg(tmp_path, config)
    assert data.config is config and data.grammar.num_nonterminals == SMALL.num_nonterminals
    for task in paper_tasks.TASKS:
        split = data.splits[f"task_{task}_test"]
        np.testing.assert_array_equal(
            split["span"], paper_tasks.task_spans(task, split["length"])
        )
        if task == "a":
            expected = paper_tasks.root_labels(data.grammar, split["tokens"], split["length"])
        else:
            prefix = paper_tasks.PREFIX_LENGTHS[task]
            expected = paper_tasks.prefix_labels(
                data.grammar, split["tokens"], split["length"], prefix
            )
        np.testing.assert_array_equal(split["label"], expected)


def test_rooted_config_is_the_paper_shaped_default():
    # The default study's grammar (configs/pcfg.py); built lazily, so only its parameters.
    rooted = {c.name: c for c in Pcfg.BUILDER_CONFIGS}["rooted"]
    assert isinstance(rooted.grammar, RootedGrammarSpec)
    assert (rooted.min_len, rooted.max_len) == (8, 8)
    grammar = rooted_grammar(rooted.grammar)
    assert grammar.emit.shape == (31, 50) and len(root_pairs(grammar)) == 9
