"""The transfer study, end to end: pretrain -> measure -> transfer -> results and report.

`run_study(config, workdir)` (the `experiments.study` binary) spans the configurations of the
config's `sweep` section: every `objectives` x `widths` x `depths` x `seeds` combination of the
`model.family` (or of each of its `arms`, `experiments.sweep.arms`) is pretrained
(`runs/<model>/<objective>/seed<S>/` in the workdir), and each of its checkpoints (the
training-iterations axis: `pretrain.checkpoint_steps` and the last step) gets two per-checkpoint
stages: the measurement stage (`experiments.measurement.stage`, densities in
`hessian/<model>/<objective>/seed<S>/step<N>/density.npz`) and the transfer stage of the config's
setting (`Setting.transfer`: the vision setting's probe and fine-tuning, the language's probes).

Every piece is a job of `experiments.core.jobs` (`jobs/<stage>/<model>/<objective>/seed<S>[/step<N>]`):
a rerun skips what is finished, a killed study loses at most the job in flight, a failing job's
dependents are skipped, progress and an ETA are logged. Then `results.csv` (one row per
configuration and checkpoint; `experiments.analysis.results`) and `report.md`, `plots/`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
from absl import logging

from experiments.analysis import markdown
from experiments.analysis import results as analysis_results
from experiments.analysis import settings as analysis_settings
from experiments.core import compile_seconds, config_utils, jobs, multihost
from experiments.core.config_utils import Field, IntTuple
from experiments.measurement import stage as measurement
from experiments.sweep import arms
from experiments.sweep import pretraining as pretrain_jobs
from experiments.training import runs, setting, train

SWEEP_SCHEMA = {
    # Pretraining runs at once, each in a worker process; None: the caller's default (1 from
    # `run_study`, `default_parallel()` from the `experiments.study` binary).
    "parallel": Field((int, type(None)), None),
    # Seeds of a configuration as one `jax.vmap`ped program (`experiments.sweep.pretraining`).
    "stack_seeds": Field(str, pretrain_jobs.STACK_DEFAULT),
    "objectives": Field((tuple, list)),
    "widths": Field(IntTuple),
    "depths": Field(IntTuple),
    "seeds": Field(IntTuple),
    # Products of the axes to run instead of the whole product (`experiments.sweep.arms`).
    "arms": Field((tuple, list), ()),
}
REPORT_SCHEMA = markdown.REPORT_SCHEMA  # `config.report`: see `experiments.analysis.settings`.
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
      schedule: its learning-rate schedule (`config.pretrain.schedule`).
      variant: "" for a run of the config's schedule, else the schedule and, in an arm of budgets
        (`experiments.sweep.arms`), the budget: it names the run's directory beside the others.
      budget: the run's length in an arm of budgets, else 0.
    """

    config: ml_collections.ConfigDict
    objective: str
    model: str
    width: int
    depth: int
    seed: int
    steps: tuple[int, ...]
    schedule: str = ""
    variant: str = ""
    budget: int = 0

    @property
    def parts(self) -> tuple[str, str, str]:
        """The path segments that name it in job ids and directories."""
        objective = f"{self.objective}_{self.variant}" if self.variant else self.objective
        return self.model, objective, f"seed{self.seed}"

    def run_dir(self, workdir: pathlib.Path) -> pathlib.Path:
        """Its pretraining workdir."""
        return workdir.joinpath("runs", *self.parts)

    def density_path(self, workdir: pathlib.Path, step: int) -> pathlib.Path:
        """Where the measurement stage saves the spectral density of checkpoint `step`."""
        return self.output_dir(workdir, step) / measurement.DENSITY_FILE

    def output_dir(self, workdir: pathlib.Path, step: int) -> pathlib.Path:
        """Where the per-checkpoint stages of checkpoint `step` write their files."""
        return workdir.joinpath("hessian", *self.parts, f"step{step}")


def configurations(config: ml_collections.ConfigDict) -> list[Configuration]:
    """The configurations of `config.sweep` (of its arms, `experiments.sweep.arms`, when it has
    some), each validated (`runs.build_run`).

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
    default_schedule = config_utils.read_fields(
        config.pretrain, runs.PRETRAIN_SCHEMA, "config.pretrain"
    )["schedule"]
    for arm, key in arms.combinations(arms.read_arms(config, sweep), sweep["seeds"]):
        run_config = config.copy_and_resolve_references()
        run_config.pretrain.objective = key.objective
        run_config.pretrain.steps, run_config.pretrain.checkpoint_steps = arm.training(key)
        run_config.pretrain.schedule = key.schedule
        run_config.model.width, run_config.model.depth = key.width, key.depth
        run_config.seed = key.seed
        run = runs.build_run(run_config)
        model = f"{run_config.model.family}_w{key.width}_d{key.depth}"
        # A run of the config's own schedule keeps the directory it had before arms had schedules.
        variant = "" if key.schedule == default_schedule and not key.budget else key.schedule
        variant += f"_{key.budget}" if key.budget else ""
        result.append(
            Configuration(
                run_config, key.objective, model, key.width, key.depth, key.seed,
                tuple(run.saved_steps), key.schedule, variant, key.budget,
            )
        )
    return result


def default_parallel() -> int:
    """How many pretraining runs to run at once by default: one per core on a single-process CPU
    backend, where XLA runs the small models' steps on about one core each (two runs side by side
    gave about 1.5x the throughput of one on the 2-core machine, `benchmarks/parallel_seeds.py`);
    else 1 (several processes would share one accelerator, or a multi-host program)."""
    if jax.process_count() > 1 or jax.default_backend() != "cpu":
        return 1
    return os.cpu_count() or 1


def parallelism(config: ml_collections.ConfigDict, default: int = 1) -> int:
    """`config.sweep.parallel`, checked (`jobs.check_parallel`), or `default`.

    Worker processes are spawned: a script that calls `run_study` with `parallel > 1` needs the
    `if __name__ == "__main__":` guard of `multiprocessing`, so the default from Python is 1.

    Raises:
      ConfigError: not an int >= 1, more workers than memory allows, or > 1 on several hosts.
    """
    value = config_utils.read_fields(config.sweep, SWEEP_SCHEMA, "config.sweep")["parallel"]
    if value is None:
        return default
    try:
        jobs.check_parallel(value, "config.sweep.parallel")
    except ValueError as error:
        raise config_utils.ConfigError(str(error)) from None
    if value > 1 and jax.process_count() > 1:
        raise config_utils.ConfigError(
            "config.sweep.parallel must be 1 on several hosts (every process runs every job); "
            f"got {value}."
        )
    return value


def stages_of(config: ml_collections.ConfigDict) -> tuple[setting.CheckpointStage, ...]:
    """The per-checkpoint stages of a study: measurement, then the setting's transfer stage."""
    return (measurement.STAGE, setting.of_config(config).transfer)


def job_id(stage: setting.CheckpointStage, configuration: Configuration, step: int) -> str:
    """The id of `stage`'s job of checkpoint `step` of `configuration`."""
    return jobs.make_job_id(stage.name, *configuration.parts, step=step)


def study_jobs(
    configs: list[Configuration], config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> list[jobs.Job]:
    """The jobs of the study: per configuration, pretraining, then each checkpoint's stages."""
    stages = stages_of(config)
    for stage in stages:  # Refuses bad settings before any job runs.
        stage.read_settings(config)
    # Every pretraining job first: they are the long ones, so workers take them before any
    # checkpoint (the runner starts ready jobs in list order), then the checkpoints fill the workers.
    pretraining, checkpoints = pretrain_jobs.pretraining_jobs(configs, config, workdir), []
    for c in configs:
        pretrain_id = jobs.make_job_id("pretrain", *c.parts)
        for step in c.steps:
            for stage in stages:
                # In a worker too: a checkpoint's stages beside other runs' pretraining and
                # checkpoints, each process with its own compiled programs (the persistent
                # compilation cache shares them) and open runs.
                fn = functools.partial(_checkpoint_job, stage.name, c, workdir, step)
                checkpoints.append(jobs.Job(job_id(stage, c, step), fn, (pretrain_id,), in_worker=True))
    return pretraining + checkpoints


# The runs this process has opened, by run directory: a run's checkpoints reuse its data. The few
# most recent are kept (a study visits a run's checkpoints one after another).
_OPENED: dict[pathlib.Path, runs.Run] = {}
_OPENED_KEPT = 4


def _opened_run(configuration: Configuration, workdir: pathlib.Path) -> runs.Run:
    run_dir = configuration.run_dir(workdir)
    if run_dir not in _OPENED:
        while len(_OPENED) >= _OPENED_KEPT:
            del _OPENED[next(iter(_OPENED))]
        _OPENED[run_dir] = runs.open_run(run_dir, configuration.config)[0]
    return _OPENED[run_dir]


def _checkpoint_job(
    stage_name: str, configuration: Configuration, workdir: pathlib.Path, step: int
) -> dict[str, Any]:
    """One stage of one checkpoint (a module-level function, so a worker process can run it)."""
    stage = next(s for s in stages_of(configuration.config) if s.name == stage_name)
    return score_checkpoint(
        stage,
        configuration.run_dir(workdir),
        step,
        _opened_run(configuration, workdir),
        stage.read_settings(configuration.config),
        configuration.output_dir(workdir, step),
    )


def _checkpoint_column(metric: str) -> str:
    """The results column of a checkpoint metric logged by pretraining (`train.pretrain`):
    `test_loss` is `pretrain_loss`, and a setting's own metric `m` is `pretrain_m` (e.g.
    `loss_gap` -> `pretrain_loss_gap`)."""
    return "pretrain_loss" if metric == "test_loss" else f"pretrain_{metric}"


def _checkpoint_records(run_dir: pathlib.Path) -> dict[int, dict[str, Any]]:
    """The metrics of each checkpoint as pretraining logged them (lists included), by step."""
    path = run_dir / train.METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {r["step"]: r for r in records if "test_loss" in r}


def _checkpoint_cells(record: dict[str, Any]) -> dict[str, float]:
    """The table cells of one checkpoint's logged metrics: its numbers, by column."""
    return {
        _checkpoint_column(name): value
        for name, value in record.items()
        if name != "step" and (value is None or isinstance(value, (int, float)))
    }


def score_checkpoint(
    stage: setting.CheckpointStage,
    run_dir: pathlib.Path,
    step: int,
    run: runs.Run,
    settings: dict[str, Any],
    output_dir: pathlib.Path | None,
) -> dict[str, Any]:
    """`stage.score` of the checkpoint at `step` of the pretraining run in `run_dir`, and the
    seconds it spent compiling (`seconds_<stage>_compile`)."""
    params, model_state = runs.restore_checkpoint(run_dir, step, run)
    with compile_seconds.CompileSeconds() as compiling:
        result = stage.score(run, params, model_state, settings, output_dir)
    return {**result, f"seconds_{stage.name}_compile": compiling.seconds}


def run_stage(
    stage: setting.CheckpointStage,
    workdir: str | pathlib.Path,
    config: ml_collections.ConfigDict | None = None,
) -> dict[str, jobs.JobResult]:
    """Runs `stage` on every checkpoint of the pretraining run in `workdir`, resumably.

    Args:
      stage: e.g. `measurement.STAGE` or the setting's `transfer` stage.
      workdir: a `train.pretrain` workdir; results go to `jobs/<stage>/step<N>.json` and files to
        `hessian/step<N>/` inside it.
      config: the config (its stage sections set the knobs); `None`: the run's saved config.

    Returns:
      Job id -> `jobs.JobResult`, one per checkpoint.

    Raises:
      NoCheckpointsError, ConfigError, FileNotFoundError: see `runs.open_run`.
    """
    run, steps = runs.open_run(workdir, config)
    settings = stage.read_settings(config or run.config)
    workdir = pathlib.Path(workdir)
    return jobs.run_jobs(
        workdir,
        [
            jobs.Job(
                jobs.make_job_id(stage.name, step=step),
                lambda step=step: score_checkpoint(
                    stage, workdir, step, run, settings, workdir / "hessian" / f"step{step}"
                ),
            )
            for step in steps
        ],
        record_failures=True,
    )


def _cells(
    record: jobs.JobResult | None, stage: setting.CheckpointStage
) -> tuple[dict[str, Any], dict[str, str]]:
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
    # The runs of an arm of budgets are one series to the plateau criterion: its checkpoints are
    # the runs' last ones (`experiments.sweep.arms`).
    series: dict[tuple[Any, ...], list[tuple[Configuration, list[dict[str, Any]], dict[int, Any]]]] = {}
    for c in configs:
        study_setting = setting.of_config(c.config)
        pretrained = results.get(jobs.make_job_id("pretrain", *c.parts))
        done = pretrained is not None and pretrained.status == jobs.DONE
        records = _checkpoint_records(c.run_dir(workdir))
        run_rows = []
        for step in c.steps:
            row: dict[str, Any] = {
                "setting": study_setting.name,
                "objective": c.objective,
                "schedule": c.schedule,
                "model": c.model,
                "width": c.width,
                "depth": c.depth,
                "num_params": pretrained.result["num_params"] if done else None,
                "seed": c.seed,
                "step": step,
                "pretrain_loss": None,
                # Logged where the exact optimum is known (the language setting).
                "pretrain_loss_gap": None,
                **_checkpoint_cells(records.get(step, {})),
            }
            reasons: dict[str, str] = {}
            for stage in stages_of(c.config):
                cells, why = _cells(results.get(job_id(stage, c, step)), stage)
                row.update(cells)
                reasons.update(why)
            study_setting.derive_row(row)
            # For the density plots: a run's directory is not a function of its cells (`variant`).
            density = c.density_path(workdir, step)
            relative = density.relative_to(workdir).as_posix() if density.exists() else None
            row[analysis_results.DENSITY_COLUMN] = relative
            # `;` separates the items of the column (see `experiments.analysis.results`).
            row["nan_reason"] = "; ".join(
                f"{name}: {why.replace(';', ',')}" for name, why in reasons.items()
            )
            run_rows.append(row)
        rows += run_rows
        if c.budget:
            key = (c.model, c.objective, c.schedule, c.seed)
            series.setdefault(key, []).append((c, run_rows, records))
        else:
            # Rows of the whole run, e.g. which checkpoints are on the loss plateau (`on_plateau`).
            study_setting.derive_run(run_rows, records, c.config, c.run_dir(workdir))
    for members in series.values():
        last = max(members, key=lambda member: member[0].budget)[0]
        merged = {step: record for _, _, records in members for step, record in records.items()}
        setting.of_config(last.config).derive_run(
            [row for _, run_rows, _ in members for row in run_rows],
            merged,
            last.config,
            last.run_dir(workdir),
        )
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


def _check_primary_tests(config: ml_collections.ConfigDict) -> None:
    """Refuses, before any job runs, primary tests that the sweep's seeds cannot answer: each
    compares configurations across seeds, the unit of every interval and test."""
    declared = analysis_settings.read_settings(config.get("report")).primary_tests
    seeds = config_utils.read_fields(config.sweep, SWEEP_SCHEMA, "config.sweep")["seeds"]
    if declared and len(seeds) < 2:
        raise config_utils.ConfigError(
            f"config.report.primary_tests ({', '.join(test.name for test in declared)}) compare "
            f"configurations across seeds and need at least 2; config.sweep.seeds is {seeds}."
        )


def run_study(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, default_parallel: int = 1
) -> pathlib.Path:
    """Runs (or resumes) the whole study of `config` in `workdir` and writes its report.

    Args:
      config: a study config: `seed`, `data`, `model`, `pretrain` (the base of every run), `sweep`,
        `hessian`, `finetune` and optionally `report` (see `configs/digits.py`).
      workdir: the study's directory, created if needed.
      default_parallel: pretraining runs at once where `config.sweep.parallel` is None.

    Returns:
      The path of `report.md`.

    Raises:
      EmptySweepError: the sweep has no configuration.
      ConfigError: an invalid field, or an unknown target task (the message names it); also,
        after every job, a setting's `derive_run` that cannot complete the rows (the language
        setting's `PlateauError`: `config.plateau.threshold` below the noise of the gaps; rerun
        with another threshold, every job is done and only the results are written again).
    """
    workdir = pathlib.Path(workdir)
    configs = configurations(config)
    study = study_jobs(configs, config, workdir)
    report_settings = config_utils.read_fields(
        config.get("report", {}), REPORT_SCHEMA, "config.report"
    )
    _check_primary_tests(config)
    setting.of_config(config).check_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    logging.info("Study of %d configurations, %d jobs, in %s.", len(configs), len(study), workdir)
    # A rerun retries what failed (e.g. after fixing the environment) and skips what finished.
    parallel = parallelism(config, default_parallel)
    results = jobs.run_jobs(
        workdir, study, record_failures=True, retry_failed=True, parallel=parallel
    )
    failed = [job_id for job_id, record in results.items() if record.status != jobs.DONE]
    if multihost.is_primary():  # On several hosts, the one process that writes files.
        write_results(result_rows(configs, workdir, results), workdir / RESULTS_FILE)
        plateau = config.get("plateau")
        threshold = plateau.get("threshold") if plateau is not None else None
        markdown.write_report(workdir, report_settings, plateau_threshold=threshold)
    report = workdir / markdown.REPORT_FILE
    if failed:
        first = results[failed[0]]
        raise jobs.StudyIncompleteError(
            f"{len(failed)} of {len(study)} jobs did not finish (first: {failed[0]}: "
            f"{first.error or 'a dependency failed'}). {RESULTS_FILE} and {report.name} cover the "
            f"others; each failure is recorded under {workdir / 'jobs'}; rerun to retry them.")
    return report

