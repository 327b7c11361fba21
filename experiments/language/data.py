"""The language setting's data: PCFG sentences for masked-LM pretraining, and the span tasks.

`source_task(config.data)` gives a `LanguageTask` whose `train` split is the `pretrain` sentences
of the `Pcfg` TFDS dataset (`experiments.language.tfds_builder`) and whose `test` split is the fixed
`evaluation` sentences, as `SentenceDataset`s that cut their own step-addressed batches; its
`splits` also hold the downstream span tasks' `task_{a,b,c}_{train,test}`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import ml_collections
import numpy as np

from experiments.core import config_utils, data_dirs
from experiments.core.config_utils import Field
from experiments.language import inside_outside, loss_gap
from experiments.language.grammar import Grammar
from experiments.language.tfds_builder import Pcfg, load_pcfg
from experiments.training import pipeline

DATASET = "pcfg"  # `config.data.name` of the language setting.
DATA_SCHEMA = {
    "name": Field(str),
    "data_dir": Field((str, type(None)), None),  # None: the TFDS default data dir.
    "pcfg_config": Field(str, "default"),  # A `Pcfg.BUILDER_CONFIGS` name, e.g. "tiny".
}


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
class LanguageTask:
    """The masked-LM pretraining task of a PCFG dataset and its downstream span tasks.

    Attributes:
      name: e.g. `"pcfg/default"`.
      grammar: the grammar that generated the sentences.
      train: the `pretrain` split.
      test: the `evaluation` split, on which the exact gap is measured.
      splits: every split of the dataset (`{"tokens", "length", "span", "label"}` arrays), the
        downstream `task_{a,b,c}_{train,test}` included.
    """

    name: str
    grammar: Grammar
    train: SentenceDataset
    test: SentenceDataset
    splits: Mapping[str, Mapping[str, np.ndarray]]

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


@functools.lru_cache(maxsize=4)
def _load_task(data_dir: str | None, pcfg_config: str) -> LanguageTask:
    # Cached: the checkpoints of a run, and the runs of a study, share the data and its exact
    # conditionals (seconds of inside-outside for the default evaluation split).
    data = load_pcfg(data_dirs.resolve(data_dir), pcfg_config)

    def sentences(split: str) -> SentenceDataset:
        arrays = data.splits[split]
        return SentenceDataset(arrays["tokens"], arrays["length"], data.grammar.mask_id)

    return LanguageTask(
        f"{DATASET}/{pcfg_config}",
        data.grammar,
        sentences("pretrain"),
        sentences("evaluation"),
        data.splits,
    )


def source_task(data_config: ml_collections.ConfigDict) -> LanguageTask:
    """The masked-LM pretraining task of `config.data` (built into the data dir on first use).

    Args:
      data_config: `config.data`: `name` (`"pcfg"`), `data_dir`, `pcfg_config` (the name of a
        `Pcfg` builder config: `"default"` or `"tiny"`).

    Returns:
      The `LanguageTask`.

    Raises:
      ConfigError: an unknown `pcfg_config` (the message lists the valid ones).
    """
    fields = config_utils.read_fields(data_config, DATA_SCHEMA, "config.data")
    config_utils.choose(fields["name"], dict.fromkeys((DATASET,)), "config.data.name")
    known = dict.fromkeys(config.name for config in Pcfg.BUILDER_CONFIGS)
    config_utils.choose(fields["pcfg_config"], known, "config.data.pcfg_config")
    return _load_task(fields["data_dir"], fields["pcfg_config"])
