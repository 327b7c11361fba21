r"""The language setting: masked-LM pretraining on PCFG sentences, with the exact loss gap.

What the shared pretraining code (`experiments.train`) needs to pretrain a masked language model
on the sentences of `experiments.language.tfds_builder` (Liu et al., 2023):

  * the data: `source_task(config.data)` gives a `LanguageTask` whose `train` split is the
    `pretrain` sentences and whose `test` split is the fixed `evaluation` sentences, as
    `SentenceDataset`s that cut their own step-addressed batches;
  * the objectives (`OBJECTIVES`, the training algorithms of the study's `objective` axis):
    `"adamw"`, the plain masked-LM loss (the standard algorithm, trained with the configured
    optimizer, AdamW in `configs/pcfg.py`), and `"adversarial"`, the same loss minus a multiple of
    a downstream probe's validation loss (`Adversary`);
  * the evaluation: `masked_lm_gap`, the model's masked-LM loss minus the Bayes-optimal loss on
    the evaluation split, computed with the grammar's true conditionals. `train.pretrain` logs it
    at every checkpoint and the study calls it per checkpoint.

Masking scheme (the one the exact optimum assumes, see `experiments.language.loss_gap`): in every
sentence exactly one position, uniform over the sentence, is replaced by the mask token, and the
loss is the cross-entropy of the original word there. The prepared batch's `"inputs"` are
`models.TokensAt(masked tokens, masked position)`, so the model computes its last block at the
masked position only (the loss reads nothing else). The model (`text_transformer`) predicts
over all `V + 2` ids; ids past the words (padding, mask) count as wrong predictions in the gap.

The adversarial algorithm. With :math:`L_{MLM}` the masked-LM loss of the batch,
:math:`\phi_\theta(x)` the encoder's features mean-pooled over the span of a downstream task
(task C by default: the root's left child, span = the whole sentence) and :math:`(W, b)` a ridge
least-squares probe fitted to those features on one half of the task's training split, the
training loss is

.. math::

  L_{MLM}(\theta) - \lambda \min\big(\mathrm{MSE}_{val}(W, b; \phi_\theta),\;
  \mathrm{MSE}_{prior}\big),

where :math:`\mathrm{MSE}_{val}` is the probe's squared error against one-hot labels on a
minibatch of the other half (drawn per step, like the masked-LM batch), and
:math:`\mathrm{MSE}_{prior}` that of always predicting the label frequencies. The probe is
refitted in closed form every `adversary_refit_every` steps, so the encoder is pushed to hide the
task from the best linear reader of its current features, not from one stale head. Choices, and why:

  * least squares rather than logistic regression: the fit is closed form (one `width x width`
    solve), so a refit costs one forward pass of the fitting sentences and depends only on the
    current parameters; its validation loss is bounded, unlike a cross-entropy that the encoder
    could drive to infinity by making a fixed head confidently wrong;
  * the cap at :math:`\mathrm{MSE}_{prior}`: the adversary stops pushing once the probe is no
    better than guessing from label frequencies, so the loss is bounded below and the masked-LM
    term decides everything else;
  * :math:`\lambda = 1` (`adversary_weight`): the two terms are of the same order (the masked-LM
    loss is about 1.5 nats at the optimum of the `small` grammar and 2.4 at that of the `default`
    one, the probe's squared error below 1), so neither is negligible; the capped penalty moves
    the loss by at most :math:`\lambda\,\mathrm{MSE}_{prior} < 1` nat;
  * every 25 steps (`adversary_refit_every`): a refit costs about one training step, and in 25
    AdamW steps the features move little, so the probe stays close to the best one;
  * the validation minibatch (`adversary_batch_size`, 64 sentences) is a quarter of the masked-LM
    batch of `configs/pcfg.py`: its features are needed at every position of the task's span,
    so a sentence of it costs more than a masked-LM sentence, whose last block runs at one
    position (`models.TokensAt`).

The study stops an adversarial run where its pretraining loss matches the standard run's:
`matching_step` picks that checkpoint.

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
  J. Devlin, M.-W. Chang, K. Lee and K. Toutanova, "BERT: Pre-training of Deep Bidirectional
  Transformers for Language Understanding", NAACL 2019.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import config_utils, models, objectives
from experiments.config_utils import Field
from experiments.data import pipeline, tfds_data
from experiments.language import inside_outside, loss_gap, span_tasks
from experiments.language.grammar import Grammar
from experiments.language.tfds_builder import Pcfg, load_pcfg

DATASET = "pcfg"  # `config.data.name` of the language setting.
DATA_SCHEMA = {
    "name": Field(str),
    "data_dir": Field((str, type(None)), None),  # None: the TFDS default data dir.
    "pcfg_config": Field(str, "default"),  # A `Pcfg.BUILDER_CONFIGS` name, e.g. "tiny".
}
ADVERSARY_SCHEMA = {
    "adversary_weight": Field(float, 1.0),
    "adversary_refit_every": Field(int, 25),
    "adversary_task": Field(str, "c"),
    "adversary_batch_size": Field(int, 64),
    "adversary_ridge": Field(float, 1e-2),
}
# Sentences per forward pass when every position of the evaluation split is masked in turn.
_GAP_CHUNK = 250


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

        The order is `experiments.data.pipeline`'s: a function of `(seed, step)` only.
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
    def image_shape(self) -> tuple[int]:
        """The shape of one input, `(max_len,)` (named as for image tasks, see `train.Run`)."""
        return (self.test.tokens.shape[1],)

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
    data = load_pcfg(tfds_data.resolve_data_dir(data_dir), pcfg_config)

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
    known = dict.fromkeys(config.name for config in Pcfg.BUILDER_CONFIGS)
    config_utils.choose(fields["pcfg_config"], known, "config.data.pcfg_config")
    return _load_task(fields["data_dir"], fields["pcfg_config"])


def _mask_one_position(batch: objectives.Batch, rng: np.random.Generator) -> dict[str, np.ndarray]:
    tokens, lengths = batch["tokens"], batch["lengths"]
    rows = np.arange(len(lengths))
    positions = rng.integers(0, lengths).astype(np.int32)  # Uniform over each sentence.
    inputs = tokens.copy()
    inputs[rows, positions] = batch["mask_id"]
    return {
        "inputs": models.TokensAt(inputs, positions[:, None]),
        "targets": tokens[rows, positions],
    }


def _masked_lm_loss(logits: jax.Array, batch: objectives.Batch) -> jax.Array:
    # `logits` is `(batch, 1, V')`: the model's outputs at the masked positions (`TokensAt`).
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, 0], batch["targets"]).mean()


def _vocabulary(num_classes: int, image_shape: tuple[int, ...]) -> int:
    del image_shape
    return num_classes


def _masked_lm_objective(name: str) -> objectives.Objective:
    return objectives.Objective(name, "linear", _vocabulary, _mask_one_position, _masked_lm_loss)


def masked_lm(options: ml_collections.ConfigDict) -> objectives.Objective:
    """The single-position masked-LM loss (see the module docstring), registered as `"adamw"`."""
    del options
    return _masked_lm_objective("adamw")


def adversarial(options: ml_collections.ConfigDict) -> objectives.Objective:
    """The masked-LM loss; `train` adds the `Adversary`'s penalty (see the module docstring)."""
    read_adversary_settings(options)  # Fails early on a bad knob.
    return _masked_lm_objective("adversarial")


OBJECTIVES: dict[str, Callable[[ml_collections.ConfigDict], objectives.Objective]] = {
    "adamw": masked_lm,
    "adversarial": adversarial,
}


def read_adversary_settings(pretrain_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `config.pretrain.adversary_*` knobs, checked (see `ADVERSARY_SCHEMA`)."""
    fields = config_utils.read_fields(pretrain_config, ADVERSARY_SCHEMA, "config.pretrain")
    config_utils.choose(fields["adversary_task"], span_tasks.TASKS, "config.pretrain.adversary_task")
    for name in ("adversary_refit_every", "adversary_batch_size"):
        if fields[name] < 1:
            raise config_utils.ConfigError(
                f"config.pretrain.{name} must be >= 1; got {fields[name]}."
            )
    if fields["adversary_weight"] < 0 or fields["adversary_ridge"] <= 0:
        raise config_utils.ConfigError(
            "config.pretrain.adversary_weight must be >= 0 and adversary_ridge > 0; got "
            f"{fields['adversary_weight']} and {fields['adversary_ridge']}."
        )
    return fields


def span_features(
    model: models.EncoderHead, params: models.Params, tokens: jax.Array, spans: jax.Array
) -> jax.Array:
    """The encoder's per-token features averaged over each span, `(N, width)`.

    Args:
      model: a `text_transformer` model.
      params: its parameters (only the encoder's are used).
      tokens: `(N, max_len)` token ids.
      spans: `(N, 2)` (start, end) of the span of each sentence.

    Returns:
      The mean feature over positions `start .. end - 1` of each sentence.
    """
    per_token = models.features(model, params, {}, tokens)
    positions = jnp.arange(tokens.shape[1])
    inside = (positions >= spans[:, :1]) & (positions < spans[:, 1:])
    weights = inside / inside.sum(axis=1, keepdims=True)
    return jnp.einsum("nt,ntw->nw", weights, per_token)


class RidgeProbe(NamedTuple):
    """A linear map from features to one-hot labels.

    Attributes:
      kernel: `(width, num_labels)` weights.
      bias: `(num_labels,)` offsets.
    """

    kernel: jax.Array
    bias: jax.Array


def fit_ridge_probe(
    features: jax.Array, targets: jax.Array, ridge: float | jax.Array
) -> RidgeProbe:
    r"""Ridge least squares, :math:`\min_{W,b} \frac1N\|F W + b - Y\|^2 + \alpha \|W\|^2`.

    Closed form on centred data: :math:`W = (F_c^\top F_c / N + \alpha I)^{-1} F_c^\top Y_c / N`,
    :math:`b = \bar y - \bar f W`.

    Args:
      features: `(N, width)`.
      targets: `(N, num_labels)` one-hot labels.
      ridge: :math:`\alpha > 0`.

    Returns:
      The `RidgeProbe`.
    """
    mean_features, mean_targets = features.mean(axis=0), targets.mean(axis=0)
    centred = features - mean_features
    gram = centred.T @ centred / len(features) + ridge * jnp.eye(features.shape[1])
    kernel = jnp.linalg.solve(gram, centred.T @ (targets - mean_targets) / len(features))
    return RidgeProbe(kernel, mean_targets - mean_features @ kernel)


def _squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.sum((predictions - targets) ** 2, axis=-1).mean()


class Adversary(NamedTuple):
    """The downstream term of the adversarial algorithm (see the module docstring).

    Attributes:
      refit_every: refit the probe at every step that is a multiple of this.
      refit: `params -> RidgeProbe`, jitted: the probe fitted to the current features.
      validation_batch: `(seed, step) -> batch`, numpy: the validation sentences of a training
        step (`tokens`, `spans`, one-hot `targets`), a function of `(seed, step)` only.
      penalty: `(params, probe, validation_batch) -> scalar`, traceable: minus
        `adversary_weight` times the capped validation error of `probe`; the training loop adds
        it to the masked-LM loss.
    """

    refit_every: int
    refit: Callable[[models.Params], RidgeProbe]
    validation_batch: Callable[[int, int], dict[str, np.ndarray]]
    penalty: Callable[[models.Params, RidgeProbe, Mapping[str, jax.Array]], jax.Array]


def make_adversary(
    pretrain_config: ml_collections.ConfigDict, model: models.EncoderHead, task: LanguageTask
) -> Adversary:
    """The `Adversary` of an `"adversarial"` run.

    The probe is fitted on the first half of `task_<adversary_task>_train` and validated on its
    second half; the `_test` split, on which linear probes are scored, is never seen.

    Args:
      pretrain_config: `config.pretrain`, with the `adversary_*` knobs.
      model: the masked-LM model.
      task: the language task.

    Returns:
      The `Adversary`.
    """
    settings = read_adversary_settings(pretrain_config)
    split = task.splits[f"task_{settings['adversary_task']}_train"]
    half = len(split["label"]) // 2
    targets = np.eye(task.grammar.num_labels, dtype=np.float32)[split["label"]]
    fit_tokens, fit_spans, fit_targets = (
        split["tokens"][:half],
        split["span"][:half],
        targets[:half],
    )
    validation = {"tokens": split["tokens"][half:], "spans": split["span"][half:]}
    validation["targets"] = targets[half:]
    batch_size = min(settings["adversary_batch_size"], len(validation["targets"]))
    # The error of predicting the label frequencies: the probe is no better than that at the cap.
    prior_error = np.mean(np.sum((fit_targets.mean(axis=0) - validation["targets"]) ** 2, axis=1))

    @jax.jit
    def refit(params: models.Params) -> RidgeProbe:
        features = span_features(model, params, fit_tokens, fit_spans)
        return fit_ridge_probe(features, fit_targets, settings["adversary_ridge"])

    def validation_batch(seed: int, step: int) -> dict[str, np.ndarray]:
        indices = pipeline.batch_indices(len(validation["targets"]), batch_size, seed, step)
        return {name: values[indices] for name, values in validation.items()}

    def penalty(
        params: models.Params, probe: RidgeProbe, batch: Mapping[str, jax.Array]
    ) -> jax.Array:
        features = span_features(model, params, batch["tokens"], batch["spans"])
        error = _squared_error(features @ probe.kernel + probe.bias, batch["targets"])
        return -settings["adversary_weight"] * jnp.minimum(error, prior_error)

    return Adversary(settings["adversary_refit_every"], refit, validation_batch, penalty)


@functools.partial(jax.jit, static_argnums=0)
def every_position_masked(
    model: models.EncoderHead, params: models.Params, tokens: jax.Array, mask_id: jax.Array
) -> jax.Array:
    """The model's log-probabilities at every position when that position alone is masked.

    Args:
      model: the masked-LM model.
      params: its parameters.
      tokens: `(B, T)` token ids.
      mask_id: the mask token's id.

    Returns:
      `(B, T, V')`: row `[b, i]` is the prediction at position `i` of sentence `b` with `i`
      masked (padding positions included; callers ignore them).
    """

    def at(position: jax.Array) -> jax.Array:
        masked = tokens.at[:, position].set(mask_id)
        where = jnp.full((tokens.shape[0], 1), position)
        logits, _ = models.apply_model(model, params, {}, models.TokensAt(masked, where), train=False)
        return jax.nn.log_softmax(logits[:, 0])

    return jnp.moveaxis(jax.lax.map(at, jnp.arange(tokens.shape[1])), 0, 1)


def masked_lm_gap(
    model: models.EncoderHead, params: models.Params, task: LanguageTask
) -> loss_gap.LossEstimate:
    """The masked-LM loss gap to the Bayes optimum on the evaluation split, exactly.

    Every position of every evaluation sentence is masked in turn, and the model's prediction is
    compared with the grammar's true conditional (`loss_gap.masked_lm_gap`, a KL divergence): no
    sampling of masks or of words, so the only noise is the choice of evaluation sentences.

    Args:
      model: the masked-LM model of the run.
      params: its parameters.
      task: the language task (its `test` split and grammar).

    Returns:
      The gap in nats and its standard error over sentences.
    """
    tokens, mask_id = task.test.tokens, jnp.int32(task.test.mask_id)
    log_probs = np.concatenate(
        [
            np.asarray(every_position_masked(model, params, tokens[i : i + _GAP_CHUNK], mask_id))
            for i in range(0, len(tokens), _GAP_CHUNK)
        ]
    )
    return loss_gap.masked_lm_gap(task.true_conditionals, log_probs, task.test.lengths)


def matching_step(gaps: Mapping[int, float], target: float) -> int:
    """The first checkpoint whose gap is at most `target`, else the one with the smallest gap.

    This is where an adversarial run "stops": its pretraining loss matches the standard run's
    (`target`, e.g. that run's final gap).

    Args:
      gaps: checkpoint step -> `masked_lm_gap` value.
      target: the gap to match.

    Returns:
      A step of `gaps`.
    """
    if not gaps:
        raise ValueError("gaps: expected at least one checkpoint.")
    reached = [step for step in sorted(gaps) if gaps[step] <= target]
    return reached[0] if reached else min(gaps, key=gaps.get)
