"""The language setting of Liu et al. (2023): masked-LM pretraining on PCFG sentences.

`SETTING` (registered as `config.setting = "language"`, `experiments.training.setting`) plugs into
the generic code:
  * data: the `Pcfg` TFDS dataset of `config.data.pcfg_config` (`experiments.language.data`);
  * objectives: the training algorithms `"adamw"` and `"adversarial"`
    (`experiments.language.objectives`); the adversarial one's per-step extra term is the
    `Adversary` (`experiments.language.adversary`);
  * checkpoint metrics: the exact gap to the Bayes-optimal masked-LM loss on the evaluation split
    (`loss_gap`, `loss_gap_stderr`; `experiments.language.evaluation`) and on the first training
    sentences of the run (`loss_gap_train`: below `loss_gap`, the model memorised them), logged by
    pretraining at every checkpoint and reported as `pretrain_loss_gap` and
    `pretrain_loss_gap_train`;
  * measurement: the downstream loss is a span task's probe loss (`experiments.language.probes`);
  * transfer: linear probes of every span task in two views, beside the baselines a probe score
    needs (one-hot tokens, bag of words, the encoder at initialisation), and full fine-tuning
    (`experiments.language.probes`); `linear_probe_acc` is the mean of the primary probes and
    `linear_probe_gain` their mean gain over the best baseline.

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
  J. Devlin, M.-W. Chang, K. Lee and K. Toutanova, "BERT: Pre-training of Deep Bidirectional
  Transformers for Language Understanding", NAACL 2019.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from experiments.language import adversary, data, evaluation, probes
from experiments.language import objectives as language_objectives
from experiments.training import models, objectives, runs, setting


class LanguageSetting(setting.SettingDefaults):
    """Masked-LM pretraining on PCFG sentences (see the module docstring)."""

    name = "language"
    objectives = language_objectives.OBJECTIVES
    transfer = probes.STAGE

    source_task = staticmethod(data.source_task)
    read_measurement_settings = staticmethod(probes.read_measurement_settings)
    downstream_problem = staticmethod(probes.downstream_problem)

    def step_extras(
        self,
        objective: objectives.Objective,
        pretrain_config: ml_collections.ConfigDict,
        model: models.EncoderHead,
        task: setting.SourceTask,
    ) -> adversary.Adversary | None:
        if objective.name != "adversarial":
            return None
        return adversary.Adversary(pretrain_config, model, task)

    def checkpoint_metrics(
        self, run: runs.Run
    ) -> Callable[[models.Params, models.ModelState], dict[str, float]]:
        seen = (run.seed, run.settings["batch_size"])

        def metrics(params: models.Params, model_state: models.ModelState) -> dict[str, float]:
            del model_state
            gap = evaluation.masked_lm_gap(run.model, params, run.task)
            train = evaluation.masked_lm_gap(run.model, params, run.task, seen=seen)
            return {
                "loss_gap": gap.value,
                "loss_gap_stderr": gap.stderr,
                "loss_gap_train": train.value,
                "loss_gap_train_stderr": train.stderr,
            }

        return metrics

    derive_row = staticmethod(probes.derive_row)


SETTING = LanguageSetting()
