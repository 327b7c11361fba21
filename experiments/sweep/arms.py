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
    )

and the study runs the union of the arms' products, every arm with the sweep's seeds. A run that
two arms share (the same objective, width, depth and seed) is run once, so the two arms must give
it the same steps and checkpoints; comparisons across arms pair checkpoints at steps that both
runs saved (`experiments.analysis.comparisons`), so arms that are compared should share some.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from experiments.core import config_utils
from experiments.core.config_utils import Field, IntTuple


@dataclasses.dataclass(frozen=True)
class Arm:
    """One product of the sweep's axes, with its training length.

    Attributes:
      name: the arm's name.
      objectives: the pretraining objectives.
      widths: the model widths.
      depths: the model depths.
      steps: `config.pretrain.steps` of its runs.
      checkpoint_steps: `config.pretrain.checkpoint_steps` of its runs.
    """

    name: str
    objectives: tuple[str, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    steps: int
    checkpoint_steps: tuple[int, ...]

    def runs(self, seeds: tuple[int, ...]) -> list[tuple[str, int, int, int]]:
        """Its `(objective, width, depth, seed)` combinations, in sweep order."""
        return [
            (objective, width, depth, seed)
            for objective in self.objectives
            for width in self.widths
            for depth in self.depths
            for seed in seeds
        ]


def read_arms(config: ml_collections.ConfigDict, sweep: Mapping[str, Any]) -> list[Arm]:
    """The arms of `config.sweep` (`sweep`: its fields, read), or the one arm of its axes.

    Raises:
      ConfigError: an arm that is not a dict, has unknown or mistyped fields, or an empty axis
        (the message names the arm's field).
    """
    pretrain = config_utils.read_fields(
        config.pretrain,
        {"steps": Field(int), "checkpoint_steps": Field(IntTuple, ())},
        "config.pretrain",
    )
    schema = {
        "name": Field(str, ""),
        "objectives": Field((tuple, list), tuple(sweep["objectives"])),
        "widths": Field(IntTuple, tuple(sweep["widths"])),
        "depths": Field(IntTuple, tuple(sweep["depths"])),
        "steps": Field(int, pretrain["steps"]),
        "checkpoint_steps": Field(IntTuple, pretrain["checkpoint_steps"]),
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
        arms.append(Arm(**fields))
    return arms


def combinations(arms: list[Arm], seeds: tuple[int, ...]) -> list[tuple[Arm, tuple[str, int, int, int]]]:
    """Every run of the arms once, with the arm that defines it, in the arms' order.

    Raises:
      ConfigError: two arms share a run but train it differently (steps or checkpoints).
    """
    first: dict[tuple[str, int, int, int], Arm] = {}
    result = []
    for arm in arms:
        for run in arm.runs(seeds):
            if run not in first:
                first[run] = arm
                result.append((arm, run))
                continue
            other = first[run]
            if (other.steps, other.checkpoint_steps) != (arm.steps, arm.checkpoint_steps):
                raise config_utils.ConfigError(
                    f"config.sweep.arms: {other.name} and {arm.name} both run objective {run[0]}, "
                    f"width {run[1]}, depth {run[2]}, seed {run[3]}, with different steps or "
                    f"checkpoint_steps ({other.steps}, {other.checkpoint_steps} vs {arm.steps}, "
                    f"{arm.checkpoint_steps}); a shared run is trained once."
                )
    return result
