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
import math
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from typing import Any

from absl import logging

from experiments.core import job_files, multihost
from experiments.core.job_files import (  # noqa: F401  (the public names of the job files)
    DONE,
    FAILED,
    JOBS_DIRNAME,
    SKIPPED,
    JobResult,
    make_job_id,
    read_result,
    read_results,
    result_path,
    validate_job_id,
    write_result,
)

# One path segment of a job id: no separators and no leading dot (so no ".", ".." or hidden files).


class StudyIncompleteError(RuntimeError):
    """Some jobs of a study failed; its results and report cover the others."""


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
        cost: the job's size relative to others of its kind (e.g. a pretraining run's steps); the
            progress ETA prices a job at its kind's seconds per unit of cost so far. Positive, or
            0 for bookkeeping (e.g. a stacked run's summary): neither timed nor priced.
    """

    job_id: str
    fn: Callable[[], Mapping[str, Any]]
    depends_on: tuple[str, ...] = ()
    in_worker: bool = False
    cost: float = 1.0


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
    if not (isinstance(job.cost, (int, float)) and math.isfinite(job.cost) and job.cost >= 0):
        raise ValueError(
            f"Job.cost of {job.job_id!r} must be a positive finite number (or 0), got {job.cost!r}")
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


class _Runner:
    """Runs the pending jobs of `run_jobs` in order, in worker processes where allowed."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        jobs: Sequence[Job],
        pending: Sequence[Job],
        records: dict[str, JobResult],
        record_failures: bool,
        log: Callable[[str], None],
    ):
        self._workdir, self._jobs, self._records = workdir, jobs, records
        self._waiting = list(pending)
        self._to_run = {job.job_id for job in pending}
        self._record_failures, self._log = record_failures, log
        self._index = {job.job_id: index for index, job in enumerate(jobs, start=1)}
        # By kind (a job id's first segment): (seconds, cost) of each finished job.
        self._durations: dict[str, list[tuple[float, float]]] = {}
        self._costs = {job.job_id: job.cost for job in jobs}
        self._finished: set[str] = set()
        self._workers = 1

    def _record(self, job: Job, result: JobResult) -> None:
        if result.status in (DONE, FAILED) and job.cost > 0:
            self._durations.setdefault(_kind(job.job_id), []).append((result.seconds, job.cost))
        write_result(self._workdir, result)
        # Exactly what a rerun would read (NaNs restored); not read from the file, which on several
        # processes only the primary one writes.
        self._records[job.job_id] = job_files.as_stored(result)
        self._finished.add(job.job_id)
        eta = self._eta()
        self._log(
            f"job {self._index[job.job_id]}/{len(self._jobs)} {job.job_id} {result.status} in "
            f"{format_seconds(result.seconds)}, ETA {eta}"
        )

    def _eta(self) -> str:
        """The time left: each job still to run at the seconds per unit of cost (`Job.cost`) of the
        finished jobs of its kind (`pretrain`, `hessian`, ...), over the workers, so a 32,000-step
        run is priced at twice a 16,000-step one; jobs of a kind not yet timed are counted, not
        priced (a 15-minute pretraining mean would price a 20-second measurement at 15 minutes),
        e.g. ``1h05m + 80 hessian, probe jobs not yet timed``."""
        if not self._durations:
            return "unknown"
        rates = {
            kind: sum(seconds for seconds, _ in timed) / sum(cost for _, cost in timed)
            for kind, timed in self._durations.items()
        }
        left = [(_kind(i), self._costs.get(i, 1.0)) for i in self._to_run - self._finished]
        eta = format_seconds(sum(rates[kind] * cost for kind, cost in left if kind in rates) / self._workers)
        unseen = sorted({kind for kind, _ in left if kind not in rates})
        if unseen:
            count = sum(kind not in rates for kind, _ in left)
            eta += f" + {count} {', '.join(unseen)} job{'s' * (count > 1)} not yet timed"
        return eta

    def _outcome(self, job: Job, run: Callable[[], tuple[dict[str, Any], float]]) -> JobResult:
        start = time.perf_counter()
        try:
            output, seconds = run()
            result = JobResult(job.job_id, DONE, output, seconds)
            job_files.serialize(result)  # A result that cannot be stored fails this job only.
            return result
        except Exception as error:
            if not self._record_failures:
                raise
            return _failure(job, error, time.perf_counter() - start)

    def _blocked(self, job: Job) -> tuple[str, ...] | None:
        """The dependencies that did not finish, or None while some are still to run."""
        # A dependency still to run counts by its new outcome, not by a file of an earlier run.
        states = [
            self._records.get(d)
            if d in self._to_run
            else self._records.get(d) or read_result(self._workdir, d)
            for d in job.depends_on
        ]
        if any(state is None for state in states):
            return None
        return tuple(d for d, state in zip(job.depends_on, states) if state.status != DONE)

    def _ready(self) -> list[Job] | None:
        """The waiting jobs whose dependencies are done; None after recording a skipped job."""
        ready = []
        for job in self._waiting:
            failed = self._blocked(job)
            if failed:
                self._waiting.remove(job)
                self._record(job, JobResult(job.job_id, SKIPPED, failed_dependencies=failed))
                return None
            if failed is not None:
                ready.append(job)
        return ready

    def run(self, parallel: int) -> None:
        """Runs every waiting job: `in_worker` ones `parallel` at a time in worker processes, the
        others here while no worker is busy."""
        use_workers = parallel > 1 and any(job.in_worker for job in self._waiting)
        workers = _worker_pool(parallel) if use_workers else None
        self._workers = parallel if use_workers else 1
        running: dict[futures.Future, Job] = {}
        try:
            while self._waiting or running:
                ready = self._ready()
                if ready is None:
                    continue
                to_worker = [job for job in ready if job.in_worker and workers is not None]
                for job in to_worker[: parallel - len(running)]:
                    self._waiting.remove(job)
                    running[workers.submit(_call, job.fn)] = job
                here = [job for job in ready if job not in to_worker]
                if here and not running:
                    self._waiting.remove(here[0])
                    self._record(here[0], self._outcome(here[0], lambda job=here[0]: _call(job.fn)))
                elif running:
                    done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for future in done:
                        job = running.pop(future)
                        self._record(job, self._outcome(job, future.result))
                elif not ready:
                    raise RuntimeError(f"jobs {[j.job_id for j in self._waiting]} can never run")
        finally:
            if workers is not None:
                workers.shutdown(cancel_futures=True)


def _kind(job_id: str) -> str:
    """A job's kind, its id's first segment (`pretrain/...`); one kind for ids without one."""
    return job_id.split("/", 1)[0] if "/" in job_id else "other"


def _worker_pool(parallel: int) -> futures.ProcessPoolExecutor:
    """`parallel` spawned worker processes, each killed with this one."""
    return futures.ProcessPoolExecutor(
        parallel, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
    )


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
    3.2s, ETA 1m10s``; the ETA prices each job still to run at the seconds per unit of cost
    (``Job.cost``) of the jobs of its kind run so far in this call, over the workers, and counts
    those of kinds not yet timed.

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

    check_parallel(parallel)
    runner = _Runner(workdir, jobs, pending, records, record_failures, log)
    runner.run(parallel)
    return {job.job_id: records[job.job_id] for job in jobs}
