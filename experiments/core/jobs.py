"""Resumable study jobs: one JSON result file per job, written atomically.

A study is an ordered list of :class:`Job` s (pretrain a configuration, Hessian statistics of a
checkpoint, fine-tune a checkpoint on a task, ...). Each job has a stable, filesystem-safe id built
from its defining fields (see :func:`make_job_id`), e.g. ``hessian/cnn_w16_d2/xent/seed0/step300``,
and writes exactly one file, ``<workdir>/jobs/<job_id>.json``. :func:`run_jobs` runs the jobs whose
file does not exist yet, so a killed study loses at most the job in flight and a rerun never
recomputes a finished job.

Result file (one JSON object)::

  {"job_id": "hessian/cnn_w16_d2/xent/seed0/step300",
   "status": "done" | "failed" | "skipped",
   "seconds": 3.2,                       # wall time of the job's callable (0 when skipped)
   "result": {...} | null,               # what the callable returned; null unless "done"
   "nan_reason": {"/trace": "..."},      # JSON Pointer (RFC 6901) into "result" -> why it is NaN
   "error": "ValueError: ...",           # only when "failed"
   "traceback": "...",                   # only when "failed"
   "failed_dependencies": ["..."]}       # only when "skipped"

NaN convention: JSON has no NaN, so a non-finite float anywhere in a result is stored as ``null``
and its location is listed in ``nan_reason`` with a reason. Reading a result back turns exactly
those locations back into ``float("nan")``; a ``null`` that is *not* listed there is a genuine
``None`` ("does not apply"). A job explains its NaNs by returning a top-level ``"nan_reason"``
mapping from result key to reason, e.g. ``{"trace": nan, "nan_reason": {"trace": "loss diverged at
step 300"}}``; NaNs it does not explain get the reason ``"job returned nan"`` (or ``inf``/``-inf``:
infinities are stored, and read back, as NaN too).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import multiprocessing
import os
import pathlib
import re
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from typing import Any

import numpy as np
from absl import logging

from experiments.core import multihost

JOBS_DIRNAME = "jobs"
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"

# One path segment of a job id: no separators and no leading dot (so no ".", ".." or hidden files).
_ID_SEGMENT = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")
_JOB_NAN_REASON_KEY = "nan_reason"


class StudyIncompleteError(RuntimeError):
    """Some jobs of a study failed; its results and report cover the others."""


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
class Job:
    """One unit of work of a study.

    Attributes:
        job_id: stable id (see :func:`make_job_id`); also the result file's path under
            ``<workdir>/jobs``.
        fn: called with no arguments; returns a JSON-serialisable mapping (numpy/JAX scalars and
            arrays are converted to numbers and lists). A job that needs a dependency's output reads
            it with :func:`read_result`.
        depends_on: ids of jobs that must have finished successfully before this one runs; they must
            come earlier in the list given to :func:`run_jobs`, or already have a result file.
        in_worker: the job may run in a worker process beside others (``run_jobs(parallel=N)``);
            ``fn`` must then be picklable (e.g. a ``functools.partial`` of a module-level function)
            and touch nothing but its own files.
    """

    job_id: str
    fn: Callable[[], Mapping[str, Any]]
    depends_on: tuple[str, ...] = ()
    in_worker: bool = False


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


def _serialize(record: JobResult) -> str:
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
    text = _serialize(record)
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


def _as_stored(record: JobResult) -> JobResult:
    """``record`` as :func:`read_result` reads it back from its file (NaNs restored)."""
    return _from_payload(json.loads(_serialize(record)))


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


def format_seconds(seconds: float) -> str:
    """Formats a duration for progress lines: ``3.2s``, ``1m10s``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _as_job(item: Job | Sequence[Any]) -> Job:
    if isinstance(item, Job):
        job = item
    else:
        job = Job(item[0], item[1], tuple(item[2]) if len(item) > 2 else ())
    validate_job_id(job.job_id)
    return job


def _check_order(workdir: str | os.PathLike[str], jobs: Sequence[Job]) -> None:
    """Rejects duplicate ids and dependencies that could not have run before their dependents."""
    position: dict[str, int] = {}
    for index, job in enumerate(jobs):
        if job.job_id in position:
            raise ValueError(f"job_id {job.job_id!r} appears twice in the job list")
        position[job.job_id] = index
    for job in jobs:
        for dependency in job.depends_on:
            if dependency in position:
                if position[dependency] > position[job.job_id]:
                    raise ValueError(
                        f"job {job.job_id!r} depends on {dependency!r}, which comes after it"
                    )
            elif not result_path(workdir, dependency).exists():
                raise ValueError(
                    f"job {job.job_id!r} depends on {dependency!r}, which is neither in the job "
                    "list nor finished"
                )


def _die_with_parent() -> None:
    """Worker initializer: a worker is killed with the process that started it (Linux), so a killed
    study leaves no orphan writing into the workdir that the rerun resumes."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # Not Linux: workers end when their pipe closes.
        pass
    if os.getppid() == 1:  # The parent died before the line above took effect.
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _call(fn: Callable[[], Mapping[str, Any]]) -> tuple[dict[str, Any], float]:
    """Runs a job's callable (in a worker process or here) and times it."""
    start = time.perf_counter()
    return dict(fn()), time.perf_counter() - start


def _failure(job: Job, error: BaseException, seconds: float) -> JobResult:
    cause = error.__cause__  # A worker's traceback comes back as the cause.
    trace = str(cause) if cause is not None else traceback.format_exc()
    logging.error("job %s failed: %s: %s", job.job_id, type(error).__name__, error)
    return JobResult(
        job.job_id,
        FAILED,
        seconds=seconds,
        error=f"{type(error).__name__}: {error}",
        traceback=trace,
    )


def check_parallel(parallel: int, where: str = "parallel") -> int:
    """`parallel`, checked: at least 1, and at most the worker processes this machine's memory holds.

    Each worker is a separate JAX process with its own compiled programs and data; budgeting 2 GiB
    each keeps the small models of the study well inside memory.

    Raises:
        ValueError: `parallel` is below 1 or above what memory allows (the message names `where`).
    """
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # Not every platform reports it.
        memory = None
    most = max(1, memory // WORKER_MEMORY_BYTES) if memory else None
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ValueError(f"{where} must be an int >= 1; got {parallel!r}.")
    if most is not None and parallel > most:
        raise ValueError(
            f"{where}={parallel} worker processes would need more memory than this machine has "
            f"({memory / 2**30:.0f} GiB at {WORKER_MEMORY_BYTES / 2**30:.0f} GiB each: at most "
            f"{most})."
        )
    return parallel


WORKER_MEMORY_BYTES = 2 * 2**30


def run_jobs(
    workdir: str | os.PathLike[str],
    jobs: Iterable[Job | Sequence[Any]],
    *,
    record_failures: bool = False,
    retry_failed: bool = False,
    parallel: int = 1,
    log: Callable[[str], None] = logging.info,
) -> dict[str, JobResult]:
    """Runs, in order, every job that has no result file yet, and returns the results of all jobs.

    A job whose result file exists is never rerun (unless it failed or was skipped and
    ``retry_failed``). After each job a progress line is logged: ``job 7/24 hessian/... done in
    3.2s, ETA 1m10s``; the ETA is the mean time of the jobs run so far in this call times the number
    still to run.

    Args:
        workdir: the study's working directory; results go to ``<workdir>/jobs/<job_id>.json``.
        jobs: :class:`Job` s, or ``(job_id, fn)`` / ``(job_id, fn, depends_on)`` tuples, in the
            order to run.
        record_failures: when True, an exception in a job is recorded as a ``"failed"`` result and
            the other jobs go on; jobs that depend (directly or through a skipped job) on it are
            recorded as ``"skipped"``. When False, the exception propagates and the failing job
            leaves no result file.
        retry_failed: rerun jobs whose stored status is ``"failed"`` or ``"skipped"``.
        parallel: how many ``in_worker`` jobs may run at once, each in a worker process (spawned,
            so each has its own JAX); other jobs run here, in order, while no worker is busy. 1 runs
            everything here, one job at a time. Results do not depend on it.
        log: where progress lines go.

    Returns:
        Job id -> :class:`JobResult` for every job in ``jobs`` (finished earlier or now), in their
        order.

    Raises:
        ValueError: duplicate ids, invalid ids, or a dependency that is neither earlier in the
            list nor finished.
    """
    jobs = [_as_job(item) for item in jobs]
    _check_order(workdir, jobs)
    records: dict[str, JobResult] = {}
    pending = []
    for job in jobs:
        stored = read_result(workdir, job.job_id)
        if stored is None or (retry_failed and stored.status != DONE):
            pending.append(job)
        else:
            records[job.job_id] = stored
    log(f"{len(jobs)} jobs: {len(records)} already finished, {len(pending)} to run")
    # On several processes every one runs every job (their computations are collective), so all
    # must find the same jobs finished; this is also where all have read the workdir before the
    # primary process writes to it.
    multihost.agree("\n".join(job.job_id for job in pending), f"the jobs still to run in {workdir}")

    index_of = {job.job_id: index for index, job in enumerate(jobs, start=1)}
    durations: list[float] = []
    finished = 0

    def record(job: Job, result: JobResult) -> None:
        nonlocal finished
        if result.status == DONE or result.status == FAILED:
            durations.append(result.seconds)
        write_result(workdir, result)
        # Exactly what a rerun would read (NaNs restored); not read from the file, which on several
        # processes only the primary one writes.
        records[job.job_id] = _as_stored(result)
        finished += 1
        remaining = len(pending) - finished
        eta = format_seconds(float(np.mean(durations)) * remaining) if durations else "unknown"
        log(
            f"job {index_of[job.job_id]}/{len(jobs)} {job.job_id} {result.status} in "
            f"{format_seconds(result.seconds)}, ETA {eta}"
        )

    def outcome(job: Job, run: Callable[[], tuple[dict[str, Any], float]]) -> JobResult:
        start = time.perf_counter()
        try:
            output, seconds = run()
            result = JobResult(job.job_id, DONE, output, seconds)
            _serialize(result)  # A result that cannot be stored fails this job, not the study.
            return result
        except Exception as error:
            if not record_failures:
                raise
            return _failure(job, error, time.perf_counter() - start)

    to_run = {job.job_id for job in pending}

    def blocked(job: Job) -> tuple[str, ...] | None:
        """The dependencies that did not finish, or None while some are still to run."""
        # A dependency still to run counts by its new outcome, not by a file of an earlier run.
        states = [
            records.get(d) if d in to_run else records.get(d) or read_result(workdir, d)
            for d in job.depends_on
        ]
        if any(state is None for state in states):
            return None
        return tuple(d for d, state in zip(job.depends_on, states) if state.status != DONE)

    check_parallel(parallel)
    waiting = list(pending)
    workers = None
    if parallel > 1 and any(job.in_worker for job in waiting):
        workers = futures.ProcessPoolExecutor(
            parallel,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
        )
    running: dict[futures.Future, Job] = {}
    try:
        while waiting or running:
            ready = []
            for job in waiting:
                failed = blocked(job)
                if failed is None:
                    continue
                if failed:
                    waiting.remove(job)
                    record(job, JobResult(job.job_id, SKIPPED, failed_dependencies=failed))
                    break
                ready.append(job)
            else:
                to_worker = [job for job in ready if job.in_worker and workers is not None]
                for job in to_worker[: parallel - len(running)]:
                    waiting.remove(job)
                    running[workers.submit(_call, job.fn)] = job
                here = [job for job in ready if job not in to_worker]
                if here and not running:
                    job = here[0]
                    waiting.remove(job)
                    record(job, outcome(job, lambda job=job: _call(job.fn)))
                elif running:
                    done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for future in done:
                        job = running.pop(future)
                        record(job, outcome(job, future.result))
                elif not ready:
                    raise RuntimeError(f"jobs {[job.job_id for job in waiting]} can never run")
    finally:
        if workers is not None:
            workers.shutdown(cancel_futures=True)
    return {job.job_id: records[job.job_id] for job in jobs}
