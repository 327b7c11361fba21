"""The language setting's data: PCFG sentences for masked-LM pretraining, and the span tasks.

`source_task(config.data)` gives a `LanguageTask` whose `test` split is the fixed `evaluation`
sentences of the `Pcfg` TFDS dataset (`experiments.language.tfds_builder`) and whose `train` split
is either its stored `pretrain` sentences (a `SentenceDataset`, looped epoch after epoch) or, with
`config.data.stream = True`, fresh sentences drawn from the grammar for every step (a
`SentenceStream`: no sentence is seen twice, so a model cannot memorise its training data). Both
cut step-addressed batches: the batch of step `t` is a function of `(seed, t)`, so a resumed run
sees the batches of an uninterrupted one. Its `splits` also hold the downstream span tasks'
`task_{a,b,c}_{train,test}`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import ml_collections
import numpy as np

from experiments.core import config_utils, data_dirs
from experiments.core.config_utils import Field
from experiments.language import inside_outside, loss_gap, sampling
from experiments.language.grammar import Grammar
from experiments.language.tfds_builder import Pcfg, load_pcfg
from experiments.training import pipeline

DATASET = "pcfg"  # `config.data.name` of the language setting.
_STREAM = 7  # The stream's random stream, apart from those of the builder's splits.
DATA_SCHEMA = {
    "name": Field(str),
    "data_dir": Field((str, type(None)), None),  # None: the TFDS default data dir.
    "pcfg_config": Field(str, "default"),  # A `Pcfg.BUILDER_CONFIGS` name, e.g. "tiny".
    "stream": Field(bool, False),  # Fresh sentences every step instead of the `pretrain` split.
}
# Sentences a stream pretends to hold: it never runs out, and `batch_size <= num_examples` holds.
_UNBOUNDED = 2**62


@dataclasses.dataclass(frozen=True)
class SentenceDataset:
    """Padded sentences held in memory; a `objectives.BatchSource`.

    Attributes:
      tokens: `(num_examples, max_len)` int32 word ids, padded with the grammar's `pad_id`.
      lengths: `(num_examples,)` int32 sentence lengths.
      mask_id: the id of the mask token, passed on to the objective in every batch.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    mask_id: int

    @property
    def num_examples(self) -> int:
        return len(self.lengths)

    def batch_at(self, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
        """The raw batch of training step `step` (`tokens`, `lengths`, `mask_id`).

        The order is `experiments.training.pipeline`'s: a function of `(seed, step)` only.
        """
        indices = pipeline.batch_indices(self.num_examples, batch_size, seed, step)
        return {
            "tokens": self.tokens[indices],
            "lengths": self.lengths[indices],
            "mask_id": np.int32(self.mask_id),
        }


@dataclasses.dataclass(frozen=True)
class SentenceStream:
    """Fresh sentences of a grammar for every batch; a `objectives.BatchSource`.

    The batch of step `step` is sampled (`sampling.sample_tokens`) from a generator seeded by
    `(data_seed, seed, step)`: a function of the run's seed and the step only, and never the
    same sentences twice (up to the chance of drawing a sentence again).

    Attributes:
      grammar: the grammar.
      min_len: shortest sentence.
      max_len: longest sentence, the padded width of the tokens.
      data_seed: the dataset's seed, so that two datasets of one grammar stream differently.
    """

    grammar: Grammar
    min_len: int
    max_len: int
    data_seed: int

    @property
    def num_examples(self) -> int:
        """Unbounded: every step draws new sentences."""
        return _UNBOUNDED

    @property
    def mask_id(self) -> int:
        """The id of the mask token, passed on to the objective in every batch."""
        return self.grammar.mask_id

    def batch_at(self, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
        """The raw batch of training step `step` (`tokens`, `lengths`, `mask_id`)."""
        rng = np.random.default_rng([self.data_seed, seed, step, _STREAM])
        tokens, lengths = sampling.sample_tokens(
            self.grammar, batch_size, rng=rng, min_len=self.min_len, max_len=self.max_len
        )
        return {"tokens": tokens, "lengths": lengths, "mask_id": np.int32(self.mask_id)}


@dataclasses.dataclass(frozen=True)
class LanguageTask:
    """The masked-LM pretraining task of a PCFG dataset and its downstream span tasks.

    Attributes:
      name: e.g. `"pcfg/default"`.
      grammar: the grammar that generated the sentences.
      train: the `pretrain` split, or a stream of fresh sentences.
      test: the `evaluation` split, on which the exact gap is measured.
      splits: every split of the dataset (`{"tokens", "length", "span", "label"}` arrays), the
        downstream `task_{a,b,c}_{train,test}` included.
    """

    name: str
    grammar: Grammar
    train: SentenceDataset | SentenceStream
    test: SentenceDataset
    splits: Mapping[str, Mapping[str, np.ndarray]]
    _seen: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _conditionals: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Outputs of the masked-LM head: every token id (words, padding and mask)."""
        return self.grammar.model_vocab_size

    @property
    def input_shape(self) -> tuple[int]:
        """The shape of one input, `(max_len,)` token ids."""
        return (self.test.tokens.shape[1],)

    @property
    def input_vocab_size(self) -> int:
        """Token ids of the inputs: every word, padding and the mask."""
        return self.grammar.model_vocab_size

    @functools.cached_property
    def true_conditionals(self) -> np.ndarray:
        """`(num_evaluation, max_len, V)`: `p(w_i | w_{-i})` of every evaluation position."""
        return inside_outside.conditionals(self.grammar, self.test.tokens, self.test.lengths)

    @functools.cached_property
    def optimal_loss(self) -> loss_gap.LossEstimate:
        """The Bayes-optimal masked-LM loss on the evaluation split."""
        return loss_gap.optimal_masked_lm_loss(self.true_conditionals, self.test.lengths)

    def seen_sentences(self, seed: int, batch_size: int) -> SentenceDataset:
        """The first training sentences a run of `seed` and `batch_size` sees, as many as the
        evaluation split holds (the batches of its first steps, in order).

        A looped pool shows them to the run again every epoch; a stream, once. The gap on them
        beside the gap on the evaluation split shows whether a model memorises what it trained on.
        """
        key = (seed, batch_size)
        if key not in self._seen:
            count = self.test.num_examples
            batches = [
                self.train.batch_at(batch_size, seed, step)
                for step in range(-(-count // batch_size))
            ]
            tokens = np.concatenate([batch["tokens"] for batch in batches])[:count]
            lengths = np.concatenate([batch["lengths"] for batch in batches])[:count]
            self._seen[key] = SentenceDataset(tokens, lengths, self.grammar.mask_id)
        return self._seen[key]

    def seen_conditionals(self, seed: int, batch_size: int) -> np.ndarray:
        """`p(w_i | w_{-i})` of every position of `seen_sentences(seed, batch_size)`, cached."""
        key = (seed, batch_size)
        if key not in self._conditionals:
            seen = self.seen_sentences(seed, batch_size)
            self._conditionals[key] = inside_outside.conditionals(
                self.grammar, seen.tokens, seen.lengths
            )
        return self._conditionals[key]


@functools.lru_cache(maxsize=4)
def _load_task(data_dir: str | None, pcfg_config: str, stream: bool) -> LanguageTask:
    # Cached: the checkpoints of a run, and the runs of a study, share the data and its exact
    # conditionals (seconds of inside-outside for the default evaluation split).
    data = load_pcfg(data_dirs.resolve(data_dir), pcfg_config)

    def sentences(split: str) -> SentenceDataset:
        arrays = data.splits[split]
        return SentenceDataset(arrays["tokens"], arrays["length"], data.grammar.mask_id)

    config = data.config
    train = (
        SentenceStream(data.grammar, config.min_len, config.max_len, config.data_seed)
        if stream
        else sentences("pretrain")
    )
    return LanguageTask(
        f"{DATASET}/{pcfg_config}{'/stream' if stream else ''}",
        data.grammar,
        train,
        sentences("evaluation"),
        data.splits,
    )


def source_task(data_config: ml_collections.ConfigDict) -> LanguageTask:
    """The masked-LM pretraining task of `config.data` (built into the data dir on first use).

    Args:
      data_config: `config.data`: `name` (`"pcfg"`), `data_dir`, `pcfg_config` (the name of a
        `Pcfg` builder config, e.g. `"rooted"` or `"tiny"`) and `stream` (fresh sentences
        every step instead of the stored `pretrain` split).

    Returns:
      The `LanguageTask`.

    Raises:
      ConfigError: an unknown `pcfg_config` (the message lists the valid ones).
    """
    fields = config_utils.read_fields(data_config, DATA_SCHEMA, "config.data")
    config_utils.choose(fields["name"], dict.fromkeys((DATASET,)), "config.data.name")
    known = dict.fromkeys(config.name for config in Pcfg.BUILDER_CONFIGS)
    config_utils.choose(fields["pcfg_config"], known, "config.data.pcfg_config")
    return _load_task(fields["data_dir"], fields["pcfg_config"], fields["stream"])
