"""The report's settings: ``config.report``, checked, and where a study records them.

``config.report`` fields (all optional):

* ``num_resamples`` (1000), ``confidence_level`` (0.95), ``seed`` (0): every bootstrap interval;
* ``equivalence_margin`` (0.1): critic 1 calls two predictors equivalent when the
  ``1 - 2 (1 - confidence_level)`` interval of their ``|tau|`` difference lies within
  ``(-margin, +margin)``, in units of Kendall's tau;
* ``primary_tests`` (``()``): the pre-registered tests, declared before the run; a tuple of
  mappings (dicts or ConfigDicts), one per test::

    dict(
        name="continued_training",      # unique; how the report names the test
        kind="delta_along_steps",       # or "paired_difference"
        statistic="trace",              # a results.csv column
        score="linear_probe_acc",       # a results.csv column (a transfer score)
        where={"objective": "adamw"},   # optional: column -> a value or a tuple of values
        family="language",              # optional ("primary"): Holm adjusts within a family
        test="wilcoxon",                # optional: "wilcoxon" (default) or "sign": the p-value
                                        # that Holm adjusts (the report prints both)
        # "paired_difference" only: two configurations, matched on seed, step and the rest.
        axis="width", levels=(16, 32),  # differences are levels[1] - levels[0]
        step="last",                    # optional: "last" (default), a step number,
                                        # "matched_loss" (same held-out gap, see comparisons)
                                        # or "interpolated_loss" (the same, interpolated)
        # "delta_along_steps" only: a run's last checkpoint minus its first.
        steps=(1000, 8000),             # optional: these two steps instead of the first and
                                        # last on the loss plateau (or of the run)
    )

Each test has two hypotheses, "the mean over seeds of the difference of ``statistic`` is 0" and
the same for ``score``; the difference of the loss is printed beside them, untested. Both kinds
need 2 or more seeds (the seed is the unit).

A study writes its ``config.report`` to ``<workdir>/report_config.json`` (:func:`record`) when it
writes the report, so that ``python -m experiments.report --workdir=DIR`` reproduces the report
from the same settings (:func:`recorded`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from experiments.analysis.inference import Bootstrap
from experiments.core.config_utils import ConfigError, Field, read_fields

SCHEMA = {
    "num_resamples": Field(int, 1000),
    "confidence_level": Field(float, 0.95),
    "seed": Field(int, 0),
    "equivalence_margin": Field(float, 0.1),
    "primary_tests": Field((tuple, list), ()),
}
RECORD_FILE = "report_config.json"
KINDS = ("paired_difference", "delta_along_steps")
TESTS = ("wilcoxon", "sign")
_COMMON = {
    "name": Field(str),
    "kind": Field(str),
    "statistic": Field(str),
    "score": Field(str),
    "where": Field((Mapping, ml_collections.ConfigDict), {}),
    "family": Field(str, "primary"),
    "test": Field(str, "wilcoxon"),
}
_KIND_FIELDS = {
    "paired_difference": {
        "axis": Field(str),
        "levels": Field((tuple, list)),
        "step": Field((str, int), "last"),
    },
    "delta_along_steps": {"steps": Field((tuple, list, type(None)), None)},
}


@dataclasses.dataclass(frozen=True)
class PrimaryTest:
    """One pre-registered test (see the module docstring for the fields)."""

    name: str
    kind: str
    statistic: str
    score: str
    where: tuple[tuple[str, Any], ...]
    family: str
    test: str
    axis: str = ""
    levels: tuple[Any, ...] = ()
    step: int | str = "last"
    steps: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """``config.report``, checked.

    Attributes:
        bootstrap: resamples, level and seed of every interval.
        equivalence_margin: critic 1's margin, in units of Kendall's tau (> 0).
        primary_tests: the pre-registered tests, in their declared order.
    """

    bootstrap: Bootstrap = Bootstrap()
    equivalence_margin: float = 0.1
    primary_tests: tuple[PrimaryTest, ...] = ()


def _parse_test(entry: Any, where: str) -> PrimaryTest:
    """One entry of ``primary_tests``, checked; ``ConfigError`` naming ``where`` and the field."""
    if not isinstance(entry, (Mapping, ml_collections.ConfigDict)):
        raise ConfigError(f"{where} must be a dict of the test's fields; got {entry!r}.")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind must be one of {list(KINDS)}; got {kind!r}.")
    schema = {**_COMMON, **_KIND_FIELDS[kind]}
    unknown = sorted(set(entry) - set(schema))
    if unknown:
        raise ConfigError(f"{where} has unknown fields {unknown}; a {kind} test has {list(schema)}.")
    fields = read_fields(entry, schema, where)
    if fields["test"] not in TESTS:
        raise ConfigError(f"{where}.test must be one of {list(TESTS)}; got {fields['test']!r}.")
    for name, count in (("levels", 2), ("steps", 2)):
        if name in fields and fields[name] is not None and len(fields[name]) != count:
            raise ConfigError(f"{where}.{name} must hold exactly 2 values; got {fields[name]!r}.")
    step = fields.get("step", "last")
    if isinstance(step, str) and step not in ("last", "matched_loss", "interpolated_loss"):
        raise ConfigError(
            f"{where}.step must be 'last', 'matched_loss', 'interpolated_loss' or a step number; "
            f"got {step!r}."
        )
    fields["where"] = tuple(
        (column, tuple(v) if isinstance(v, (tuple, list)) else v)
        for column, v in sorted(dict(fields["where"]).items())
    )
    for name in ("levels", "steps"):
        if fields.get(name) is not None:
            fields[name] = tuple(fields[name])
    return PrimaryTest(**fields)


def read_settings(section: Mapping[str, Any] | ml_collections.ConfigDict | None) -> ReportSettings:
    """Reads and checks ``config.report`` (``None``: every default).

    Raises:
        ConfigError: naming the field: a wrong type, ``equivalence_margin <= 0``, a confidence level
            outside (0, 1), fewer than 2 resamples, or a malformed or duplicated primary test.
    """
    fields = read_fields(section or {}, SCHEMA, "config.report")
    margin = fields["equivalence_margin"]
    if not margin > 0:
        raise ConfigError(
            f"config.report.equivalence_margin must be > 0 (a margin in units of Kendall's tau, "
            f"e.g. 0.1); got {margin!r}."
        )
    if not 0 < fields["confidence_level"] < 1:
        raise ConfigError(
            f"config.report.confidence_level must be in (0, 1); got {fields['confidence_level']!r}."
        )
    if fields["num_resamples"] < 2:
        raise ConfigError(f"config.report.num_resamples must be >= 2; got {fields['num_resamples']}.")
    tests = tuple(
        _parse_test(entry, f"config.report.primary_tests[{i}]")
        for i, entry in enumerate(fields["primary_tests"])
    )
    names = [t.name for t in tests]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"config.report.primary_tests: names must be unique; repeated: {repeated}.")
    bootstrap = Bootstrap(fields["num_resamples"], fields["confidence_level"], fields["seed"])
    return ReportSettings(bootstrap, margin, tests)


def _plain(value: Any) -> Any:
    """``config.report`` as JSON data: ConfigDicts and mappings become dicts, tuples lists."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def record(workdir: pathlib.Path, section: Mapping[str, Any] | ml_collections.ConfigDict) -> None:
    """Writes ``section`` (a study's ``config.report``) to ``<workdir>/report_config.json``."""
    (workdir / RECORD_FILE).write_text(json.dumps(_plain(section), indent=2, sort_keys=True) + "\n")


def recorded(workdir: pathlib.Path) -> dict[str, Any] | None:
    """The ``config.report`` a study recorded in ``workdir``, or ``None`` when it recorded none."""
    path = workdir / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else None
