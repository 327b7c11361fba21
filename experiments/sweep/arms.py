"""The arms of a sweep: products of its axes that a study runs together (`config.sweep.arms`).

Without arms, a sweep is one product, `objectives x widths x depths x seeds`, every run with the
config's `pretrain.steps` and `pretrain.checkpoint_steps`. A study of several interventions does
not need the whole product (the adversarial algorithm at every width), and its arms need not train
equally long (the continued-training arm past the plateau, the others only to it). Each arm is a
dict of:

    dict(
        name="size",                           # how errors name the arm
        objectives=("adamw",),                 # optional: the sweep's by default
        widths=(16, 32, 64),                   # optional: the sweep's by default
        depths=(2,),                           # optional: the sweep's by default
        steps=8000,                            # optional: config.pretrain.steps by default
        checkpoint_steps=(2000, 4000),         # optional: config.pretrain.checkpoint_steps
        schedule="warmup_constant",            # optional: config.pretrain.schedule
        budgets=(),                            # optional: see below
        seeds=(0, 1, 2),                       # optional: the sweep's by default
    )

and the study runs the union of the arms' products, each arm with its seeds. A run that
two arms share (the same objective, width, depth, seed and schedule) is run once, so the two arms
must give it the same steps and checkpoints; comparisons across arms pair checkpoints at steps that
both runs saved (`experiments.analysis.comparisons`), so arms that are compared should share some.

An arm with `budgets` (Liu et al.'s protocol: "train longer" means separate runs whose schedules
decay over budgets of increasing length) runs every combination once per budget, each run
`budget` steps long and saving its last checkpoint only (so `steps` and `checkpoint_steps` do not
apply). Its runs' rows differ by their step alone, so its schedule must be one that no other arm
runs for the same objective, width and depth: a study tells its runs apart by the `schedule`
column (`experiments.analysis.results.CONFIGURATION_COLUMNS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_collections

from experiments.core import config_utils
from experiments.core.config_utils import Field, IntTuple
from experiments.training import runs


@dataclasses.dataclass(frozen=True)
class Arm:
    """One product of the sweep's axes, with its training length.

    Attributes:
      name: the arm's name.
      objectives: the pretraining objectives.
      widths: the model widths.
      depths: the model depths.
      steps: `config.pretrain.steps` of its runs (the largest budget, with `budgets`).
      checkpoint_steps: `config.pretrain.checkpoint_steps` of its runs (none, with `budgets`).
      schedule: `config.pretrain.schedule` of its runs.
      budgets: the lengths of its separate runs, ascending; empty: one run of `steps`.
      seeds: its seeds; empty: the sweep's.
    """

    name: str
    objectives: tuple[str, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    steps: int
    checkpoint_steps: tuple[int, ...]
    schedule: str = ""
    budgets: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()

    def runs(self, seeds: tuple[int, ...]) -> list[RunKey]:
        """Its runs, in sweep order (`seeds`: the sweep's, unless the arm has its own)."""
        seeds = self.seeds or seeds
        return [
            RunKey(objective, width, depth, seed, self.schedule, budget)
            for objective in self.objectives
            for width in self.widths
            for depth in self.depths
            for budget in (self.budgets or (0,))
            for seed in seeds
        ]

    def training(self, run: RunKey) -> tuple[int, tuple[int, ...]]:
        """`(steps, checkpoint_steps)` of one of its runs."""
        return (run.budget, ()) if run.budget else (self.steps, self.checkpoint_steps)


class RunKey(NamedTuple):
    """What tells a study's pretraining runs apart.

    Attributes:
      objective, width, depth, seed: the sweep's axes.
      schedule: `config.pretrain.schedule`.
      budget: the run's length in an arm of `budgets`; 0 in any other arm.
    """

    objective: str
    width: int
    depth: int
    seed: int
    schedule: str
    budget: int


def read_arms(config: ml_collections.ConfigDict, sweep: Mapping[str, Any]) -> list[Arm]:
    """The arms of `config.sweep` (`sweep`: its fields, read), or the one arm of its axes.

    Raises:
      ConfigError: an arm that is not a dict, has unknown or mistyped fields, or an empty axis
        (the message names the arm's field).
    """
    pretrain = config_utils.read_fields(
        config.pretrain,
        {
            "steps": Field(int),
            "checkpoint_steps": Field(IntTuple, ()),
            "schedule": runs.PRETRAIN_SCHEMA["schedule"],
        },
        "config.pretrain",
    )
    schema = {
        "name": Field(str, ""),
        "objectives": Field((tuple, list), tuple(sweep["objectives"])),
        "widths": Field(IntTuple, tuple(sweep["widths"])),
        "depths": Field(IntTuple, tuple(sweep["depths"])),
        "steps": Field(int, pretrain["steps"]),
        "checkpoint_steps": Field(IntTuple, pretrain["checkpoint_steps"]),
        "schedule": Field(str, pretrain["schedule"]),
        "budgets": Field(IntTuple, ()),
        "seeds": Field(IntTuple, ()),
    }
    entries = sweep.get("arms") or ({},)
    arms = []
    for i, entry in enumerate(entries):
        where = f"config.sweep.arms[{i}]"
        if not isinstance(entry, (Mapping, ml_collections.ConfigDict)):
            raise config_utils.ConfigError(f"{where} must be a dict of the arm's fields; got {entry!r}.")
        unknown = sorted(set(entry) - set(schema))
        if unknown:
            raise config_utils.ConfigError(
                f"{where} has unknown fields {unknown}; an arm has {list(schema)}."
            )
        fields = config_utils.read_fields(entry, schema, where)
        empty = [axis for axis in ("objectives", "widths", "depths") if not fields[axis]]
        if empty:
            raise config_utils.ConfigError(
                f"{where}.{empty[0]} must list at least one value; got {fields[empty[0]]!r}."
            )
        fields["name"] = fields["name"] or (where if sweep.get("arms") else "config.sweep")
        fields["objectives"] = tuple(fields["objectives"])
        if fields["budgets"]:
            _check_budgets(entry, fields, where)
            fields["steps"], fields["checkpoint_steps"] = max(fields["budgets"]), ()
        arms.append(Arm(**fields))
    return arms


def _check_budgets(entry: Any, fields: dict[str, Any], where: str) -> None:
    budgets = fields["budgets"]
    given = [name for name in ("steps", "checkpoint_steps") if name in entry]
    if given:
        raise config_utils.ConfigError(
            f"{where} has budgets, so {given[0]} does not apply (each budget is a run of that many "
            "steps, saving its last checkpoint only); remove it."
        )
    if any(b < 1 for b in budgets) or list(budgets) != sorted(set(budgets)):
        raise config_utils.ConfigError(
            f"{where}.budgets must be distinct positive step counts, ascending; got {budgets}."
        )


def combinations(arms: list[Arm], seeds: tuple[int, ...]) -> list[tuple[Arm, RunKey]]:
    """Every run of the arms once, with the arm that defines it, in the arms' order.

    Raises:
      ConfigError: two arms share a run but train it differently (steps or checkpoints), or an arm
        of budgets shares its schedule with another arm's runs of the same model and objective.
    """
    first: dict[RunKey, Arm] = {}
    result = []
    for arm in arms:
        for run in arm.runs(seeds):
            if run not in first:
                first[run] = arm
                result.append((arm, run))
                continue
            other = first[run]
            if other.training(run) != arm.training(run):
                raise config_utils.ConfigError(
                    f"config.sweep.arms: {other.name} and {arm.name} both run objective "
                    f"{run.objective}, width {run.width}, depth {run.depth}, seed {run.seed}, "
                    f"schedule {run.schedule}, with different steps or checkpoint_steps "
                    f"({other.training(run)} vs {arm.training(run)}); a shared run is trained once."
                )
    series: dict[tuple[Any, ...], set[bool]] = {}
    for _, run in result:
        key = (run.objective, run.width, run.depth, run.schedule)
        series.setdefault(key, set()).add(bool(run.budget))
    mixed = [key for key, kinds in series.items() if len(kinds) > 1]
    if mixed:
        objective, width, depth, schedule = mixed[0]
        raise config_utils.ConfigError(
            f"config.sweep.arms: an arm of budgets and another arm both run objective {objective}, "
            f"width {width}, depth {depth} with schedule {schedule}; their rows could not be told "
            "apart: give the arm of budgets its own schedule."
        )
    return result
