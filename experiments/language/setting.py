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
    `pretrain_loss_gap_train`, with the held-out gap of every sentence (`loss_gap_per_sentence`);
  * the loss plateau: from those per-sentence gaps, each run's checkpoints on the plateau
    (`on_plateau`; `experiments.language.plateau`, `config.plateau`);
  * measurement: the downstream loss is a span task's probe loss (`experiments.language.probes`);
    the other distribution of critic 1 is the grammar with its rule probabilities perturbed
    (`data.perturbed_stream`, `config.hessian.other_data_scale`); model sizes are compared after
    a function-preserving embedding into the widest model (`embedding.enlarge`);
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

import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections

from experiments.language import adversary, data, embedding, evaluation, loss_gap, plateau, probes
from experiments.language import objectives as language_objectives
from experiments.training import models, objectives, runs, setting

OTHER_DATA_SEED = 1  # Of critic 1's perturbed grammar: one grammar for every run and checkpoint.


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
    ) -> Callable[[models.Params, models.ModelState], dict[str, Any]]:
        seen = (run.seed, run.settings["batch_size"])

        def metrics(params: models.Params, model_state: models.ModelState) -> dict[str, Any]:
            del model_state
            per_sentence = evaluation.sentence_gaps(run.model, params, run.task)
            gap = loss_gap.mean_over_sentences(per_sentence)
            train = evaluation.masked_lm_gap(run.model, params, run.task, seen=seen)
            return {
                "loss_gap": gap.value,
                "loss_gap_stderr": gap.stderr,
                "loss_gap_train": train.value,
                "loss_gap_train_stderr": train.stderr,
                plateau.SENTENCE_GAPS: plateau.stored(per_sentence),
            }

        return metrics

    def other_data(self, run: runs.Run, settings: dict) -> setting.OtherData:
        scale = settings["other_data_scale"]
        return setting.OtherData(
            f"sentences of the grammar with its rule probabilities perturbed (log-scale {scale:g})",
            data.perturbed_stream(run.task, scale, seed=OTHER_DATA_SEED),
            run.objective,
            pretraining_loss=True,
        )

    embed = staticmethod(embedding.enlarge)  # Duplicated hidden units (Liu et al.'s `enlarge`).
    derive_row = staticmethod(probes.derive_row)
    check_config = staticmethod(plateau.check_config)

    def derive_run(
        self,
        rows: list[dict[str, Any]],
        records: dict[int, dict[str, Any]],
        config: ml_collections.ConfigDict,
        run_dir: pathlib.Path,
    ) -> None:
        plateau.mark_rows(rows, records, config, run_dir)


SETTING = LanguageSetting()
