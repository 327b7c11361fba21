"""The result files of study jobs: one JSON file per job, written atomically (`experiments.core.jobs`).

The format, and the NaN convention (JSON has no NaN: a non-finite float is stored as ``null`` and
its location listed in ``nan_reason``), are described in `experiments.core.jobs`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.core import multihost

JOBS_DIRNAME = "jobs"
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
_JOB_NAN_REASON_KEY = "nan_reason"
_ID_SEGMENT = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")


def make_job_id(kind: str, *parts: object, **fields: object) -> str:
    """Builds a stable job id from the fields that define a job.

    Positional parts are used as they are; keyword fields are written as ``name`` followed by the
    value, in the order given, so ``make_job_id("hessian", "cnn_w16_d2", "xent", seed=0, step=300)``
    is ``"hessian/cnn_w16_d2/xent/seed0/step300"``.

    Args:
        kind: the stage, e.g. ``"pretrain"``, ``"hessian"``, ``"finetune"``.
        *parts: further path segments (configuration name, objective, task, ...).
        **fields: named segments such as ``seed=0`` or ``step=300``.

    Returns:
        The id, validated by :func:`validate_job_id`.
    """
    segments = [str(kind), *(str(part) for part in parts)]
    segments += [f"{name}{value}" for name, value in fields.items()]
    return validate_job_id("/".join(segments))


def validate_job_id(job_id: str) -> str:
    """Checks that ``job_id`` is safe to use as a relative file path and returns it unchanged.

    Ids are rejected rather than silently rewritten: two different jobs must never map to the same
    file.

    Args:
        job_id: ``/``-separated segments of letters, digits and ``. _ = + -``, none starting
            with a dot.

    Returns:
        ``job_id``.

    Raises:
        ValueError: naming the offending id and segment.
    """
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
    for segment in job_id.split("/"):
        if not _ID_SEGMENT.fullmatch(segment):
            raise ValueError(
                f"job_id {job_id!r} has an unsafe segment {segment!r}: expected letters, digits "
                "and '._=+-', not starting with '.', separated by single '/'"
            )
    return job_id


@dataclasses.dataclass(frozen=True)
class JobResult:
    """The recorded outcome of one job, as stored in its result file.

    Attributes:
        job_id: the job's id.
        status: ``"done"``, ``"failed"`` or ``"skipped"`` (a dependency did not finish).
        result: the job's output with NaNs restored (``None`` unless done).
        seconds: wall time of the job's callable.
        nan_reason: JSON Pointer into ``result`` -> why that value is NaN.
        error: ``"ExceptionType: message"`` when failed.
        traceback: the formatted traceback when failed.
        failed_dependencies: the dependencies that were not done when skipped.
    """

    job_id: str
    status: str
    result: dict[str, Any] | None = None
    seconds: float = 0.0
    nan_reason: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    failed_dependencies: tuple[str, ...] = ()


def result_path(workdir: str | os.PathLike[str], job_id: str) -> pathlib.Path:
    """Returns the path of the result file of ``job_id`` under ``workdir``."""
    return pathlib.Path(workdir, JOBS_DIRNAME, validate_job_id(job_id) + ".json")


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer_tokens(pointer: str) -> list[str]:
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]


def _encode(
    value: Any, pointer: str, nan_reason: dict[str, str], explained: Mapping[str, str]
) -> Any:
    """Converts ``value`` to plain JSON, recording every non-finite float in ``nan_reason``."""
    if isinstance(value, Mapping):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"result key {key!r} at {pointer or '/'} must be a string")
            encoded[key] = _encode(item, f"{pointer}/{_pointer_token(key)}", nan_reason, explained)
        return encoded
    if isinstance(value, list | tuple):
        return [
            _encode(item, f"{pointer}/{i}", nan_reason, explained) for i, item in enumerate(value)
        ]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if np.isfinite(value):
            return value
        top_level = _pointer_tokens(pointer)[0] if pointer else ""
        nan_reason[pointer] = explained.get(top_level, f"job returned {value}")
        return None
    if isinstance(value, np.generic) or hasattr(value, "__array__"):
        # numpy and JAX scalars/arrays: `tolist` yields Python numbers, nested lists for arrays.
        return _encode(np.asarray(value).tolist(), pointer, nan_reason, explained)
    raise TypeError(
        f"result value at {pointer or '/'} has type {type(value).__name__}; job results must be "
        "JSON-serialisable (mappings with string keys, lists, str, bool, numbers, numpy/JAX arrays)"
    )


def _restore_nans(result: Any, nan_reason: Mapping[str, str]) -> Any:
    """Puts ``nan`` back at every location listed in ``nan_reason`` (inverse of :func:`_encode`)."""
    for pointer in nan_reason:
        tokens = _pointer_tokens(pointer)
        parent = result
        for token in tokens[:-1]:
            parent = parent[int(token) if isinstance(parent, list) else token]
        last = tokens[-1]
        parent[int(last) if isinstance(parent, list) else last] = float("nan")
    return result


def _to_payload(record: JobResult) -> dict[str, Any]:
    payload = {
        "job_id": record.job_id,
        "status": record.status,
        "seconds": record.seconds,
        "result": None,
        "nan_reason": {},
    }
    if record.result is not None:
        explained = dict(record.result.get(_JOB_NAN_REASON_KEY, {}))
        output = {k: v for k, v in record.result.items() if k != _JOB_NAN_REASON_KEY}
        nan_reason = dict(record.nan_reason)
        payload["result"] = _encode(output, "", nan_reason, explained)
        payload["nan_reason"] = nan_reason
    if record.status == FAILED:
        payload["error"] = record.error
        payload["traceback"] = record.traceback
    if record.status == SKIPPED:
        payload["failed_dependencies"] = list(record.failed_dependencies)
    return payload


def serialize(record: JobResult) -> str:
    """The text of ``record``'s result file."""
    return json.dumps(_to_payload(record), indent=2, sort_keys=True, allow_nan=False)


def write_result(workdir: str | os.PathLike[str], record: JobResult) -> pathlib.Path:
    """Writes ``record`` to its result file atomically.

    The JSON text is produced first, then written to a temporary file in the same directory and
    moved into place with ``os.replace``: a reader (or a rerun after a crash) sees either no file or
    the whole file. On several processes (``experiments.core.multihost``) only the primary one writes;
    the others check that the record can be stored.

    Args:
        workdir: the study's working directory.
        record: the outcome to store; its ``result`` may contain NaN/inf (see the module docstring).

    Returns:
        The path of the result file.

    Raises:
        TypeError: when the result is not JSON-serialisable (nothing is written).
    """
    path = result_path(workdir, record.job_id)
    text = serialize(record)
    if not multihost.is_primary():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _from_payload(payload: Mapping[str, Any]) -> JobResult:
    nan_reason = dict(payload.get("nan_reason") or {})
    result = payload.get("result")
    return JobResult(
        job_id=payload["job_id"],
        status=payload["status"],
        result=None if result is None else _restore_nans(result, nan_reason),
        seconds=float(payload.get("seconds", 0.0)),
        nan_reason=nan_reason,
        error=payload.get("error"),
        traceback=payload.get("traceback"),
        failed_dependencies=tuple(payload.get("failed_dependencies", ())),
    )


def as_stored(record: JobResult) -> JobResult:
    """``record`` as :func:`read_result` reads it back from its file (NaNs restored)."""
    return _from_payload(json.loads(serialize(record)))


def read_result(workdir: str | os.PathLike[str], job_id: str) -> JobResult | None:
    """Reads the result of ``job_id``, or returns ``None`` when the job has no result file yet.

    Args:
        workdir: the study's working directory.
        job_id: the job's id.

    Returns:
        The stored :class:`JobResult` with NaNs restored, or ``None``.
    """
    path = result_path(workdir, job_id)
    if not path.exists():
        return None
    return _from_payload(json.loads(path.read_text()))


def read_results(workdir: str | os.PathLike[str]) -> dict[str, JobResult]:
    """Reads every result file under ``<workdir>/jobs``.

    Temporary files left by a run killed while writing (hidden ``.*.tmp`` files) are ignored.

    Args:
        workdir: the study's working directory.

    Returns:
        Job id -> :class:`JobResult`, sorted by id.
    """
    root = pathlib.Path(workdir, JOBS_DIRNAME)
    paths = sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))
    records = (_from_payload(json.loads(path.read_text())) for path in paths)
    return {record.job_id: record for record in records}


