"""The transfer study, end to end: pretrain -> Hessian statistics -> transfer scores -> report.

  python -m experiments.study --workdir=DIR [--config=experiments/configs/NAME.py]

Without `--config` it runs `configs/pcfg.py`, the paper's language setting; `configs/digits.py`
is the image setting, `configs/smoke.py` a two-minute check of the pipeline.

The config's `sweep` section spans the configurations: every `objectives` x `widths` x `depths` x
`seeds` combination of the `model.family` is pretrained (`runs/<model>/<objective>/seed<S>/` in
`DIR`), and each of its checkpoints (the training-iterations axis: `pretrain.checkpoint_steps`
and the last step) is measured by the stages of its setting (`SETTINGS`, by `sweep.setting`):
  * the image settings (digits, smoke): `experiments.hessian` (densities in
    `hessian/<model>/<objective>/seed<S>/step<N>/density.npz`) and `experiments.finetune`;
  * the language setting (`pcfg`): one `measure` job per checkpoint,
    `experiments.language_measures.measure` (the exact loss gap, Hessian trace, top eigenvalue and
    Fisher trace of the masked-LM loss, the trace of a task probe's loss on downstream sentences,
    and a linear probe per downstream task; `linear_probe_acc` is the mean over the tasks, each
    task's accuracy is `linear_probe_<task>_acc`).
Every piece is a job of `experiments.jobs` (`jobs/<stage>/<model>/<objective>/seed<S>[/step<N>]`),
so a rerun skips what is finished and a killed study loses at most the job in flight. A failing
job is recorded and its dependents skipped; the rest of the study goes on. Progress lines with an
ETA are logged after every job. Finally `results.csv` (one row per configuration and checkpoint;
see `experiments.report_lib` for its conventions) and the report (`report.md`, `plots/`) are
written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import logging

from experiments import (
    config_utils,
    finetune,
    hessian,
    jobs,
    language_measures,
    multihost,
    train,
    transfer,
)
from experiments.analysis import markdown
from experiments.config_utils import Field, IntTuple

SWEEP_SCHEMA = {
    "setting": Field(str),
    "objectives": Field((tuple, list)),
    "widths": Field(IntTuple),
    "depths": Field(IntTuple),
    "seeds": Field(IntTuple),
}
REPORT_SCHEMA = {"num_resamples": Field(int, 1000)}
RESULTS_FILE = "results.csv"
# The columns of the contract (API.md), in its order; extras follow, `nan_reason` last.
CONTRACT_COLUMNS = (
    "setting",
    "objective",
    "model",
    "width",
    "depth",
    "num_params",
    "seed",
    "step",
    "pretrain_loss",
    "pretrain_loss_gap",
    "trace",
    "trace_stderr",
    "matvecs",
    "top_eigenvalue",
    "trace_downstream",
    "fisher_trace",
    "linear_probe_acc",
    "finetune_acc",
    "seconds_hessian",
)
# Job-result entries that are not table cells (lists, nested records, duplicates, sample counts).
_NOT_COLUMNS = ("top_eigenvalues", "pretrain_loss_subset", "fisher_samples")


class EmptySweepError(config_utils.ConfigError):
    """A sweep with no configuration to run."""


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One pretraining configuration of the sweep.

    Attributes:
      config: the full config of the run (sweep values filled in).
      objective: the pretraining objective.
      model: the model label, `<family>_w<width>_d<depth>`.
      width: the model width.
      depth: the model depth.
      seed: the pretraining seed.
      steps: the checkpoint steps the run saves.
    """

    config: ml_collections.ConfigDict
    objective: str
    model: str
    width: int
    depth: int
    seed: int
    steps: tuple[int, ...]

    @property
    def parts(self) -> tuple[str, str, str]:
        """The path segments that name it in job ids and directories."""
        return self.model, self.objective, f"seed{self.seed}"

    def run_dir(self, workdir: pathlib.Path) -> pathlib.Path:
        """Its pretraining workdir."""
        return workdir.joinpath("runs", *self.parts)

    def density_path(self, workdir: pathlib.Path, step: int) -> pathlib.Path:
        """Where the Hessian stage saves the spectral density of checkpoint `step`."""
        return workdir.joinpath("hessian", *self.parts, f"step{step}", hessian.DENSITY_FILE)


def configurations(config: ml_collections.ConfigDict) -> list[Configuration]:
    """The configurations of `config.sweep`, each validated (`train.build_run`).

    Raises:
      EmptySweepError: an axis of the sweep is empty.
      ConfigError: an invalid field (named).
    """
    if "sweep" not in config:
        raise config_utils.ConfigError("config.sweep is missing.")
    sweep = config_utils.read_fields(config.sweep, SWEEP_SCHEMA, "config.sweep")
    empty = [axis for axis in ("objectives", "widths", "depths", "seeds") if not sweep[axis]]
    if empty:
        raise EmptySweepError(
            f"The sweep is empty: config.sweep.{', config.sweep.'.join(empty)} "
            "must list at least one value."
        )
    result = []
    for objective in sweep["objectives"]:
        for width in sweep["widths"]:
            for depth in sweep["depths"]:
                for seed in sweep["seeds"]:
                    run_config = config.copy_and_resolve_references()
                    run_config.pretrain.objective = objective
                    run_config.model.width, run_config.model.depth = width, depth
                    run_config.seed = seed
                    run = train.build_run(run_config)
                    model = f"{run_config.model.family}_w{width}_d{depth}"
                    result.append(
                        Configuration(
                            run_config, objective, model, width, depth, seed, tuple(run.saved_steps)
                        )
                    )
    return result


def _pretrain_job(configuration: Configuration, workdir: pathlib.Path) -> dict[str, Any]:
    outcome = train.pretrain(configuration.config, configuration.run_dir(workdir))
    summary = json.loads((configuration.run_dir(workdir) / train.SUMMARY_FILE).read_text())
    return {
        "num_params": outcome.num_params,
        "num_encoder_params": summary["num_encoder_params"],
        "checkpoint_steps": outcome.checkpoint_steps,
    }


@dataclasses.dataclass(frozen=True)
class Stage:
    """One per-checkpoint stage of a setting: a job per checkpoint after its pretraining.

    Attributes:
      name: the stage, the first segment of its job ids (`<name>/<model>/<objective>/seed<S>/step<N>`).
      read_settings: `config -> settings`, validated once per study.
      measure: `(configuration, step, run, settings, workdir) -> job result` (table cells).
      failure_columns: the cells left NaN, with the failure as the reason, when the job fails.
    """

    name: str
    read_settings: Callable[[ml_collections.ConfigDict], Any]
    measure: Callable[[Configuration, int, train.Run, Any, pathlib.Path], dict[str, Any]]
    failure_columns: tuple[str, ...]

    def job_id(self, configuration: Configuration, step: int) -> str:
        """The id of its job of checkpoint `step` of `configuration`."""
        return jobs.make_job_id(self.name, *configuration.parts, step=step)


def _no_derived_cells(row: dict[str, Any]) -> None:
    del row


def _mean_probe_accuracy(row: dict[str, Any]) -> None:
    """`linear_probe_acc` is the mean of the per-task probes, `linear_probe_<task>_acc`.

    The per-task cells arrive as `linear_probe_acc/<task>` (`language_measures`) and are renamed
    to end in `_acc`, so that the report treats each as a transfer score.
    """
    tasks = sorted(name for name in row if name.startswith("linear_probe_acc/"))
    for name in tasks:
        row[f"linear_probe_{name.split('/', 1)[1]}_acc"] = row.pop(name)
    if tasks:
        accuracies = [row[f"linear_probe_{name.split('/', 1)[1]}_acc"] for name in tasks]
        row["linear_probe_acc"] = sum(accuracies) / len(accuracies)


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the study measures at each checkpoint of one setting (`config.sweep.setting`).

    Attributes:
      stages: the per-checkpoint stages, in the order their cells fill a row.
      derive: completes a row in place after its stages' cells are in (e.g. summary columns).
    """

    stages: tuple[Stage, ...]
    derive: Callable[[dict[str, Any]], None] = _no_derived_cells


def _measure_language_checkpoint(
    c: Configuration, step: int, run: train.Run, settings: dict[str, Any], workdir: pathlib.Path
) -> dict[str, Any]:
    return language_measures.measure_checkpoint(c.run_dir(workdir), step, run, settings)


IMAGE_SETTING = Setting(
    stages=(
        Stage(
            "hessian",
            hessian.read_settings,
            lambda c, step, run, settings, workdir: hessian.measure_checkpoint(
                c.run_dir(workdir), step, run, settings, c.density_path(workdir, step)
            ),
            ("trace", "top_eigenvalue", "trace_downstream"),
        ),
        Stage(
            "finetune",
            finetune.read_settings,
            lambda c, step, run, settings, workdir: finetune.finetune_checkpoint(
                c.run_dir(workdir), step, run, settings
            ),
            finetune.SCORES,
        ),
    )
)
LANGUAGE_SETTING = Setting(
    stages=(
        Stage(
            "measure",
            language_measures.read_settings,
            _measure_language_checkpoint,
            ("pretrain_loss_gap", "trace", "fisher_trace", "linear_probe_acc"),
        ),
    ),
    derive=_mean_probe_accuracy,
)
# `config.sweep.setting` -> its stages; any other setting is an image setting (digits, smoke).
SETTINGS = {"pcfg": LANGUAGE_SETTING}


def setting_of(config: ml_collections.ConfigDict) -> Setting:
    """The stages of `config.sweep.setting`."""
    return SETTINGS.get(config.sweep.setting, IMAGE_SETTING)


def study_jobs(
    configs: list[Configuration], config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> list[jobs.Job]:
    """The jobs of the study: per configuration, pretraining, then each checkpoint's stages."""
    stages = setting_of(config).stages
    settings = {stage.name: stage.read_settings(config) for stage in stages}
    runs: dict[pathlib.Path, train.Run] = {}

    def run_of(configuration: Configuration) -> train.Run:
        # Built once per run and process: rebuilding reloads the data.
        run_dir = configuration.run_dir(workdir)
        if run_dir not in runs:
            runs[run_dir] = transfer.open_run(run_dir, configuration.config)[0]
        return runs[run_dir]

    result = []
    for c in configs:
        pretrain_id = jobs.make_job_id("pretrain", *c.parts)
        result.append(jobs.Job(pretrain_id, lambda c=c: _pretrain_job(c, workdir)))
        for step in c.steps:
            for stage in stages:
                result.append(
                    jobs.Job(
                        stage.job_id(c, step),
                        lambda c=c, step=step, stage=stage: stage.measure(
                            c, step, run_of(c), settings[stage.name], workdir
                        ),
                        (pretrain_id,),
                    )
                )
    return result


def _test_losses(run_dir: pathlib.Path) -> dict[int, float]:
    """The source test loss at each checkpoint, as logged by pretraining."""
    path = run_dir / train.METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {r["step"]: r["test_loss"] for r in records if "test_loss" in r}


def _cells(record: jobs.JobResult | None, stage: Stage) -> tuple[dict[str, Any], dict[str, str]]:
    """The table cells of one stage's job, and the reasons of its NaN cells."""
    if record is None:
        return {}, {}
    if record.status != jobs.DONE:
        why = record.error or f"dependencies not done: {', '.join(record.failed_dependencies)}"
        reason = f"{stage.name} job {record.status} ({why})"
        return dict.fromkeys(stage.failure_columns, float("nan")), dict.fromkeys(
            stage.failure_columns, reason
        )
    cells = {
        name: value
        for name, value in record.result.items()
        if name not in _NOT_COLUMNS and (value is None or isinstance(value, (int, float)))
    }
    reasons = {pointer.lstrip("/"): why for pointer, why in record.nan_reason.items()}
    return cells, reasons


def result_rows(
    configs: list[Configuration], workdir: pathlib.Path, results: dict[str, jobs.JobResult]
) -> list[dict[str, Any]]:
    """One row per configuration and checkpoint, from the job results (see `CONTRACT_COLUMNS`)."""
    rows = []
    setting = setting_of(configs[0].config) if configs else IMAGE_SETTING
    for c in configs:
        pretrained = results.get(jobs.make_job_id("pretrain", *c.parts))
        done = pretrained is not None and pretrained.status == jobs.DONE
        losses = _test_losses(c.run_dir(workdir))
        for step in c.steps:
            row: dict[str, Any] = {
                "setting": c.config.sweep.setting,
                "objective": c.objective,
                "model": c.model,
                "width": c.width,
                "depth": c.depth,
                "num_params": pretrained.result["num_params"] if done else None,
                "seed": c.seed,
                "step": step,
                "pretrain_loss": losses.get(step),
                # Filled by a stage where the exact optimum is known (the language setting).
                "pretrain_loss_gap": None,
            }
            reasons: dict[str, str] = {}
            for stage in setting.stages:
                cells, why = _cells(results.get(stage.job_id(c, step)), stage)
                row.update(cells)
                reasons.update(why)
            setting.derive(row)
            # `;` separates the items of the column (see `report_lib`).
            row["nan_reason"] = "; ".join(
                f"{name}: {why.replace(';', ',')}" for name, why in reasons.items()
            )
            rows.append(row)
    return rows


def write_results(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Writes `rows` as CSV: contract columns first, then the extras, `nan_reason` last.

    Empty cells where a row has no value (`None` or absent): "does not apply".
    """
    extras = sorted({name for row in rows for name in row} - set(CONTRACT_COLUMNS))
    extras = [name for name in extras if name != "nan_reason"] + ["nan_reason"]
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, [*CONTRACT_COLUMNS, *extras], restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def run_study(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
    """Runs (or resumes) the whole study of `config` in `workdir` and writes its report.

    Args:
      config: a study config: `seed`, `data`, `model`, `pretrain` (the base of every run), `sweep`,
        `hessian`, `finetune` and optionally `report` (see `configs/digits.py`).
      workdir: the study's directory, created if needed.

    Returns:
      The path of `report.md`.

    Raises:
      EmptySweepError: the sweep has no configuration.
      ConfigError: an invalid field, or an unknown target task (the message names it).
    """
    workdir = pathlib.Path(workdir)
    configs = configurations(config)
    study = study_jobs(configs, config, workdir)
    report_settings = config_utils.read_fields(
        config.get("report", {}), REPORT_SCHEMA, "config.report"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    logging.info("Study of %d configurations, %d jobs, in %s.", len(configs), len(study), workdir)
    # A rerun retries what failed (e.g. after fixing the environment) and skips what finished.
    results = jobs.run_jobs(workdir, study, record_failures=True, retry_failed=True)
    failed = [job_id for job_id, record in results.items() if record.status != jobs.DONE]
    if multihost.is_primary():  # On several hosts, the one process that writes files.
        write_results(result_rows(configs, workdir, results), workdir / RESULTS_FILE)
        markdown.write_report(workdir, num_resamples=report_settings["num_resamples"])
    report = workdir / markdown.REPORT_FILE
    if failed:
        first = results[failed[0]]
        raise transfer.StudyIncompleteError(
            f"{len(failed)} of {len(study)} jobs did not finish (first: {failed[0]}: "
            f"{first.error or 'a dependency failed'}). {RESULTS_FILE} and {report.name} cover the "
            f"others; each failure is recorded under {workdir / 'jobs'}; rerun to retry them.")
    return report


if __name__ == "__main__":
    transfer.run_binary(
        lambda workdir, config: run_study(config, workdir),
        # The default study is the paper's language setting (`--config=experiments/configs/digits.py`
        # for the image one).
        str(pathlib.Path(__file__).parent / "configs" / "pcfg.py"),
    )
