"""TFDS builder for the PCFG language setting: pretraining sentences and span-task examples.

The dataset is generated offline from seeds (:mod:`experiments.language.grammar` does the sampling
and :mod:`experiments.language.span_tasks` the exact labelling), written as ``array_record`` files
and read back with ``builder.as_data_source()``, so no TensorFlow is needed. Every split has the
same features:

* ``tokens``: ``[max_len]`` int32 word ids, padded with the grammar's ``pad_id``;
* ``length``: int32 sentence length;
* ``span``: ``[2]`` int32 (start, end) of the span a task asks about;
* ``label``: int32 task label in ``[0, grammar.num_labels)``.

Splits: ``pretrain`` (masked-LM training sentences), ``evaluation`` (a fixed set on which the exact
loss gap is measured with :func:`experiments.language.inside_outside.conditionals`), and
``task_{a,b,c}_train`` / ``task_{a,b,c}_test`` for the tasks of
:data:`experiments.language.span_tasks.TASKS` (grammars of a ``GrammarSpec``) or of
:data:`experiments.language.paper_tasks.TASKS` (grammars of a ``RootedGrammarSpec``). Sentences of
the ``pretrain`` and ``evaluation`` splits carry no task: their ``span`` is the whole sentence and
their ``label`` is -1. Examples keep their generation order. Splits are drawn independently, so a
short sentence may occur in more than one split.

Example::

  data = load_pcfg("/tmp/tfds", "tiny")
  train = data.splits["task_a_train"]  # {"tokens": [n, 8], "length": [n], "span", "label"}
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from experiments.language import paper_tasks, span_tasks
from experiments.language.grammar import Grammar, GrammarSpec, random_grammar, sample_sentences
from experiments.language.rooted_grammar import RootedGrammarSpec, rooted_grammar

# Independent random streams of one data seed, one per split.
_PRETRAIN_STREAM, _EVALUATION_STREAM, _FIRST_TASK_STREAM = 0, 1, 2


@dataclasses.dataclass(eq=False)
class PcfgConfig(tfds.core.BuilderConfig):
    """Grammar, sentence lengths and split sizes of one PCFG dataset.

    The configuration's ``name`` keys the files on disk; left empty, it is derived from a digest of
    every other field, so different parameters never share a cache.

    A grammar of the rooted family (`RootedGrammarSpec`, the shape of Liu et al.'s) comes with the
    paper's tasks (`experiments.language.paper_tasks`); a `GrammarSpec` grammar with the
    posterior-decoded span tasks of `experiments.language.span_tasks`.

    Attributes:
      grammar: sizes and seed of the random grammar.
      data_seed: seed of every split's sentences.
      min_len: shortest sentence.
      max_len: longest sentence, and the padded width of ``tokens``.
      num_pretrain: sentences in the ``pretrain`` split.
      num_evaluation: sentences in the ``evaluation`` split.
      num_task_train: examples in each ``task_*_train`` split.
      num_task_test: examples in each ``task_*_test`` split.
    """

    name: str = ""
    grammar: GrammarSpec | RootedGrammarSpec = GrammarSpec()
    data_seed: int = 0
    min_len: int = 4
    max_len: int = 16
    num_pretrain: int = 20_000
    num_evaluation: int = 1_000
    num_task_train: int = 2_000
    num_task_test: int = 1_000

    def __post_init__(self) -> None:
        for field in ("num_pretrain", "num_evaluation", "num_task_train", "num_task_test"):
            value = getattr(self, field)
            # TFDS cannot write an empty split.
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}: expected a positive integer, got {value!r}")
        if isinstance(self.grammar, RootedGrammarSpec):
            self.grammar.check()
            shortest = max(paper_tasks.PREFIX_LENGTHS.values())
            if self.min_len < shortest:
                raise ValueError(
                    f"min_len: task b asks about the first {shortest} words, so it is undefined "
                    f"for shorter sentences; expected min_len >= {shortest}, got {self.min_len}"
                )
            if self.grammar.max_sentence_length // 2 < shortest:
                raise ValueError(
                    f"grammar.num_levels: the level-1 symbols of {self.grammar.num_levels} levels "
                    f"yield at most {self.grammar.max_sentence_length // 2} words, so no phrase "
                    f"spans task b's first {shortest}; expected num_levels >= 3"
                )
        if not self.name:
            fields = (
                self.grammar,
                self.data_seed,
                self.min_len,
                self.max_len,
                self.num_pretrain,
                self.num_evaluation,
                self.num_task_train,
                self.num_task_test,
            )
            self.name = "custom_" + hashlib.sha256(repr(fields).encode()).hexdigest()[:12]


# 20 words, 11 non-terminals, sentences of 4 to 8 words.
_TINY_GRAMMAR = GrammarSpec(
    vocab_size=20,
    num_levels=2,
    nonterminals_per_level=3,
    num_preterminals=4,
    rules_per_nonterminal=2,
    words_per_nonterminal=5,
)


# The paper's grammar in proportion (9 roots on fixed pairs, 10 non-terminals a level, 20 rules each,
# every preterminal emitting half the vocabulary), with 3 levels of 50 words instead of 4 of about
# 200, and no word emitted above the preterminals, so every sentence has 8 words: a width-32 model
# gets within 0.02 nats of the optimum in 3,000 steps (docs/pcfg_results.md, 2026-12-02).
_ROOTED_GRAMMAR = RootedGrammarSpec(
    num_roots=9,
    num_levels=3,
    nonterminals_per_level=10,
    rules_per_nonterminal=20,
    words_per_preterminal=25,
    vocab_size=50,
    emission_prob=0.0,
)


def grammar_of(config: PcfgConfig) -> Grammar:
    """The grammar of a configuration, drawn from its spec."""
    if isinstance(config.grammar, RootedGrammarSpec):
        return rooted_grammar(config.grammar)
    return random_grammar(config.grammar)


def task_module(config: PcfgConfig) -> Any:
    """The module defining a configuration's tasks (`TASKS`, `task_spans`, `downstream_task`)."""
    return paper_tasks if isinstance(config.grammar, RootedGrammarSpec) else span_tasks


class Pcfg(tfds.core.GeneratorBasedBuilder):
    """Sentences of a random PCFG and span classification tasks labelled by exact parsing."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Pretraining, evaluation and task A/B/C splits."}
    BUILDER_CONFIGS = [
        PcfgConfig(
            name="default", description="The default grammar (31 non-terminals, 100 words)."
        ),
        PcfgConfig(
            name="small",
            description=(
                "The tiny grammar with 100,000 pretraining sentences: small enough for a tiny model "
                "to reach the optimal loss on a CPU (docs/pcfg_results.md)."
            ),
            grammar=_TINY_GRAMMAR,
            max_len=8,
            num_pretrain=100_000,
            num_evaluation=500,
        ),
        PcfgConfig(
            name="rooted",
            description=(
                "A grammar shaped like the paper's (9 roots, 3 levels of 10 non-terminals, 20 "
                "rules each, 50 words shared by the preterminals), 8-word sentences, the paper's "
                "tasks A/B/C (docs/pcfg_results.md)."
            ),
            grammar=_ROOTED_GRAMMAR,
            min_len=8,
            max_len=8,
            num_evaluation=500,
        ),
        PcfgConfig(
            name="tiny",
            description="A small grammar and few examples, for tests and smoke runs.",
            grammar=_TINY_GRAMMAR,
            max_len=8,
            num_pretrain=200,
            num_evaluation=50,
            num_task_train=60,
            num_task_test=40,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. (TFDS's default locates it with ``importlib_resources``, not installed.)"""
        return epath.Path(__file__)

    @property
    def grammar(self) -> Grammar:
        """The grammar that generated this configuration's sentences."""
        return grammar_of(self.builder_config)

    def _info(self) -> tfds.core.DatasetInfo:
        max_len = self.builder_config.max_len
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "tokens": tfds.features.Tensor(shape=(max_len,), dtype=np.int32),
                    "length": tfds.features.Scalar(dtype=np.int32),
                    "span": tfds.features.Tensor(shape=(2,), dtype=np.int32),
                    "label": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            disable_shuffling=True,
            citation=(
                "@inproceedings{liu2023same, title={Same Pre-training Loss, Better Downstream: "
                "Implicit Bias Matters for Language Models}, author={Liu, Hong and Xie, Sang "
                "Michael and Li, Zhiyuan and Ma, Tengyu}, booktitle={ICML}, year={2023}}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        config = self.builder_config
        splits = {
            "pretrain": self._generate_examples(None, _PRETRAIN_STREAM, config.num_pretrain),
            "evaluation": self._generate_examples(None, _EVALUATION_STREAM, config.num_evaluation),
        }
        for index, task in enumerate(sorted(task_module(config).TASKS)):
            stream = _FIRST_TASK_STREAM + 2 * index
            splits[f"task_{task}_train"] = self._generate_examples(
                task, stream, config.num_task_train
            )
            splits[f"task_{task}_test"] = self._generate_examples(
                task, stream + 1, config.num_task_test
            )
        return splits

    def _generate_examples(
        self, task: str | None, stream: int, num: int
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        config = self.builder_config
        seed = (config.data_seed, stream)
        length_bounds = {"min_len": config.min_len, "max_len": config.max_len}
        if task is None:
            sentences = sample_sentences(self.grammar, num, seed=seed, **length_bounds)
            tokens, lengths = sentences.tokens, sentences.lengths
            spans = np.stack([np.zeros_like(lengths), lengths], axis=1)
            labels = np.full(num, -1, dtype=np.int32)
        else:
            tokens, lengths, spans, labels = task_module(config).downstream_task(
                self.grammar, task, num, seed=seed, **length_bounds
            )
        for index in range(num):
            yield (
                index,
                {
                    "tokens": tokens[index],
                    "length": lengths[index],
                    "span": spans[index].astype(np.int32),
                    "label": labels[index],
                },
            )


class PcfgData(NamedTuple):
    """A built PCFG dataset as numpy arrays.

    Attributes:
      grammar: the grammar that generated it (for exact conditionals and losses).
      splits: split name -> ``{"tokens", "length", "span", "label"}`` arrays, in generation order.
      config: its configuration (the sentence lengths, for sampling more sentences).
    """

    grammar: Grammar
    splits: dict[str, dict[str, np.ndarray]]
    config: PcfgConfig


def load_pcfg(
    data_dir: str | os.PathLike,
    config: PcfgConfig | str = "default",
    splits: Sequence[str] | None = None,
) -> PcfgData:
    """Builds the dataset into ``data_dir`` if it is not there yet, and returns it as arrays.

    Args:
      data_dir: TFDS data directory.
      config: a :class:`PcfgConfig`, or the name of one of ``Pcfg.BUILDER_CONFIGS``.
      splits: splits to load; all of them by default.

    Returns:
      :class:`PcfgData`.

    Raises:
      ValueError: if ``config`` names no known configuration or ``splits`` an unknown split.
    """
    known = {c.name for c in Pcfg.BUILDER_CONFIGS}
    if isinstance(config, str) and config not in known:
        raise ValueError(f"config: expected a PcfgConfig or one of {sorted(known)}, got {config!r}")
    builder = Pcfg(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare()
    available = sorted(builder.info.splits)
    chosen = available if splits is None else list(splits)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"splits: expected names among {available}, got unknown {unknown}")
    arrays = {}
    for split in chosen:
        source = builder.as_data_source(split=split)
        records = source.__getitems__(range(len(source)))  # one batched read
        arrays[split] = {
            key: np.stack([record[key] for record in records]).astype(np.int32)
            for key in builder.info.features
        }
    return PcfgData(builder.grammar, arrays, builder.builder_config)
