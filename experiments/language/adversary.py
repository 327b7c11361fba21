r"""The adversarial algorithm. With :math:`L_{MLM}` the masked-LM loss of the batch,
:math:`\phi_\theta(x)` the encoder's features mean-pooled over the span of a downstream task
(task C by default: the root's left child over the whole sentence in the `GrammarSpec` grammars'
tasks, the label of the first two words in the rooted grammars') and :math:`(W, b)` a ridge
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

The adversary is the language setting's `StepExtras` (`experiments.training.setting`): the
training loop refits the probe between compiled steps and checkpoints it with the run.

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.core import config_utils
from experiments.core.config_utils import Field
from experiments.language import data, features, span_tasks
from experiments.training import heads, models, pipeline

SCHEMA = {
    "adversary_weight": Field(float, 1.0),
    "adversary_refit_every": Field(int, 25),
    "adversary_task": Field(str, "c"),
    "adversary_batch_size": Field(int, 64),
    "adversary_ridge": Field(float, 1e-2),
}


def read_settings(pretrain_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `config.pretrain.adversary_*` knobs, checked (see `SCHEMA`)."""
    fields = config_utils.read_fields(pretrain_config, SCHEMA, "config.pretrain")
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


def _squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.sum((predictions - targets) ** 2, axis=-1).mean()


class Adversary:
    """The downstream term of the adversarial algorithm, as the run's `StepExtras`.

    The state is the current ridge probe (`heads.LinearHead`), refitted to the current features
    at every step that is a positive multiple of `adversary_refit_every`. The probe is fitted on
    the first half of `task_<adversary_task>_train` and validated on its second half; the `_test`
    split, on which linear probes are scored, is never seen.
    """

    def __init__(
        self,
        pretrain_config: ml_collections.ConfigDict,
        model: models.EncoderHead,
        task: data.LanguageTask,
    ):
        """Builds the adversary of an `"adversarial"` run.

        Args:
          pretrain_config: `config.pretrain`, with the `adversary_*` knobs.
          model: the masked-LM model.
          task: the language task.
        """
        settings = read_settings(pretrain_config)
        split = task.splits[f"task_{settings['adversary_task']}_train"]
        half = len(split["label"]) // 2
        targets = np.eye(task.grammar.num_labels, dtype=np.float32)[split["label"]]
        fit_tokens, fit_spans, fit_targets = (
            split["tokens"][:half],
            split["span"][:half],
            targets[:half],
        )
        self._validation = {"tokens": split["tokens"][half:], "spans": split["span"][half:]}
        self._validation["targets"] = targets[half:]
        self._batch_size = min(settings["adversary_batch_size"], len(targets) - half)
        self._refit_every = settings["adversary_refit_every"]
        self._weight = settings["adversary_weight"]
        self._model = model
        # The error of predicting the label frequencies: the probe is no better than that at the
        # cap.
        self._prior_error = np.mean(
            np.sum((fit_targets.mean(axis=0) - self._validation["targets"]) ** 2, axis=1)
        )

        @jax.jit
        def refit(params: models.Params) -> heads.LinearHead:
            span = features.span_features(model, params, fit_tokens, fit_spans)
            return heads.fit_ridge(span, fit_targets, settings["adversary_ridge"])

        self._refit = refit

    def init(self, params: models.Params) -> heads.LinearHead:
        """The probe fitted to the initial features."""
        return self._refit(params)

    def update(self, step: int, params: models.Params, probe: heads.LinearHead) -> heads.LinearHead:
        """The probe refitted at every positive multiple of `adversary_refit_every`."""
        if step % self._refit_every == 0 and step > 0:
            return self._refit(params)
        return probe

    def batch(self, seed: int, step: int) -> dict[str, np.ndarray]:
        """The validation sentences of a training step (`tokens`, `spans`, one-hot `targets`)."""
        indices = pipeline.batch_indices(
            len(self._validation["targets"]), self._batch_size, seed, step
        )
        return {name: values[indices] for name, values in self._validation.items()}

    def penalty(
        self, params: models.Params, probe: heads.LinearHead, batch: Mapping[str, jax.Array]
    ) -> jax.Array:
        """Minus `adversary_weight` times the capped validation error of `probe`; traceable."""
        span = features.span_features(self._model, params, batch["tokens"], batch["spans"])
        error = _squared_error(probe.apply(span), batch["targets"])
        return -self._weight * jnp.minimum(error, self._prior_error)
