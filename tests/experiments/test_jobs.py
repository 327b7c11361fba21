"""Tests for resumable study jobs: resume, atomic writes, failure isolation, NaN survival."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from experiments.core import jobs


class Counter:
    """A job callable that counts its calls and returns a fixed result."""

    def __init__(self, result=None, error=None):
        self.calls = 0
        self.result = {"value": 1.0} if result is None else result
        self.error = error

    def __call__(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.result


def test_make_job_id_is_stable_and_validated():
    job_id = jobs.make_job_id("hessian", "cnn_w16_d2", "xent", seed=0, step=300)
    assert job_id == "hessian/cnn_w16_d2/xent/seed0/step300"
    for unsafe in ("", "a//b", "../escape", "a/./b", "has space", "/absolute", ".hidden"):
        with pytest.raises(ValueError):
            jobs.validate_job_id(unsafe)


def test_rerun_skips_finished_jobs_and_never_recomputes(tmp_path):
    first, second = Counter({"value": 1.0}), Counter({"value": 2.0})
    job_list = [("pretrain/a", first), jobs.Job("hessian/a/step1", second, ("pretrain/a",))]
    results = jobs.run_jobs(tmp_path, job_list)
    assert (first.calls, second.calls) == (1, 1)
    assert results["hessian/a/step1"].result == {"value": 2.0}

    again = jobs.run_jobs(tmp_path, job_list)
    assert (first.calls, second.calls) == (1, 1)
    assert again == results
    assert jobs.read_results(tmp_path) == results


def test_progress_lines_count_jobs_and_give_an_eta(tmp_path):
    lines = []
    jobs.run_jobs(tmp_path, [("a", Counter()), ("b", Counter())], log=lines.append)
    assert lines[0] == "2 jobs: 0 already finished, 2 to run"
    assert lines[1].startswith("job 1/2 a done in ") and lines[1].endswith("ETA 0.0s")
    assert lines[2].startswith("job 2/2 b done in ")


def test_the_eta_prices_each_kind_of_job_apart_over_the_workers(tmp_path):
    runner = jobs._Runner(tmp_path, [], [], {}, False, lambda _: None)
    runner._to_run = {"pretrain/a", "pretrain/b", "pretrain/c", "hessian/a", "hessian/b", "probe/a"}
    runner._finished = {"pretrain/a", "hessian/a"}
    runner._durations = {"pretrain": [(600.0, 1.0)], "hessian": [(20.0, 1.0)]}
    # Left: 2 pretraining runs at 600 s and a measurement at 20 s, over 2 workers: 610 s; and a probe
    # job, of a kind not yet timed, which the mean of the others would price far too high.
    runner._workers = 2
    assert runner._eta() == jobs.format_seconds(610.0) + " + 1 probe job not yet timed"
    runner._to_run |= {"probe/b", "transfer/a"}
    assert runner._eta() == jobs.format_seconds(610.0) + " + 3 probe, transfer jobs not yet timed"
    runner._durations["probe"] = [(4.0, 1.0)]
    assert runner._eta() == jobs.format_seconds(614.0) + " + 1 transfer job not yet timed"


def test_the_eta_prices_a_job_by_its_cost(tmp_path):
    # Two 8,000-step runs took 300 s and 500 s (0.05 s a step); a 32,000-step run is left, and a
    # measurement of cost 1.
    listed = [jobs.Job(f"pretrain/{name}", Counter(), cost=steps)
              for name, steps in (("a", 8000), ("b", 8000), ("long", 32000))]
    listed.append(jobs.Job("hessian/a", Counter()))
    runner = jobs._Runner(tmp_path, listed, listed, {}, False, lambda _: None)
    runner._durations = {"pretrain": [(300.0, 8000), (500.0, 8000)], "hessian": [(20.0, 1.0)]}
    runner._finished = {"pretrain/a", "pretrain/b"}
    assert runner._eta() == jobs.format_seconds(0.05 * 32000 + 20.0)
    runner._workers = 2
    assert runner._eta() == jobs.format_seconds((0.05 * 32000 + 20.0) / 2)


def test_a_job_cost_must_be_positive_or_zero(tmp_path):
    for cost in (-1.0, float("nan"), float("inf"), "8000"):
        with pytest.raises(ValueError, match="Job.cost of 'pretrain/a' must be a positive finite number"):
            jobs.run_jobs(tmp_path, [jobs.Job("pretrain/a", Counter(), cost=cost)])


def test_a_job_of_cost_zero_is_neither_timed_nor_priced(tmp_path):
    # A stacked run's summary job (cost 0, instant) finishes first: it must not make the kind's
    # seconds per step 0, which would price the 8,000-step run left at nothing.
    listed = [jobs.Job("pretrain/summary", Counter(), cost=0), jobs.Job("pretrain/run", Counter(), cost=8000)]
    lines = []
    results = jobs.run_jobs(tmp_path, listed, log=lines.append)
    assert all(record.status == jobs.DONE for record in results.values())
    assert lines[1].endswith("ETA unknown")  # After the summary: nothing timed yet, not "0s".
    runner = jobs._Runner(tmp_path, listed, listed, {}, False, lambda _: None)
    runner._record(listed[0], results["pretrain/summary"])
    assert runner._durations == {}


def test_failing_job_leaves_no_file_unless_failures_are_recorded(tmp_path):
    ok, crash = Counter(), Counter(error=RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        jobs.run_jobs(tmp_path, [("ok", ok), ("crash", crash), ("never", Counter())])
    assert not jobs.result_path(tmp_path, "crash").exists()
    assert not jobs.result_path(tmp_path, "never").exists()
    assert set(jobs.read_results(tmp_path)) == {"ok"}
    assert list(tmp_path.rglob("*.tmp")) == []


def test_crash_while_writing_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch):
    def killed_before_rename(source, destination):
        raise KeyboardInterrupt  # Stands for the process dying between write and rename.

    monkeypatch.setattr(os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        jobs.run_jobs(tmp_path, [("hessian/x", Counter())])
    monkeypatch.undo()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

    job = Counter()
    jobs.run_jobs(tmp_path, [("hessian/x", job)])
    assert job.calls == 1


def test_failure_is_isolated_and_dependents_are_skipped(tmp_path):
    broken = Counter(error=ValueError("bad checkpoint"))
    dependent, transitive, independent = Counter(), Counter(), Counter()
    job_list = [
        ("pretrain/a", broken),
        ("hessian/a", dependent, ["pretrain/a"]),
        ("finetune/a", transitive, ["hessian/a"]),
        ("pretrain/b", independent),
    ]
    results = jobs.run_jobs(tmp_path, job_list, record_failures=True)
    assert results["pretrain/a"].status == jobs.FAILED
    assert results["pretrain/a"].error == "ValueError: bad checkpoint"
    assert results["hessian/a"].status == jobs.SKIPPED
    assert results["hessian/a"].failed_dependencies == ("pretrain/a",)
    assert results["finetune/a"].status == jobs.SKIPPED
    assert results["pretrain/b"].status == jobs.DONE
    assert (dependent.calls, transitive.calls, independent.calls) == (0, 0, 1)
    stored = json.loads(jobs.result_path(tmp_path, "pretrain/a").read_text())
    assert stored["status"] == "failed" and stored["error"] == "ValueError: bad checkpoint"

    # A rerun keeps recorded failures; `retry_failed` reruns them and their dependents.
    jobs.run_jobs(tmp_path, job_list, record_failures=True)
    assert broken.calls == 1
    broken.error = None
    retried = jobs.run_jobs(tmp_path, job_list, retry_failed=True)
    assert {r.status for r in retried.values()} == {jobs.DONE}
    assert (broken.calls, dependent.calls, transitive.calls, independent.calls) == (2, 1, 1, 1)


def test_unserialisable_result_is_a_recorded_failure(tmp_path):
    results = jobs.run_jobs(tmp_path, [("a", Counter({"model": object()}))], record_failures=True)
    assert results["a"].status == jobs.FAILED
    assert "JSON-serialisable" in results["a"].error


def test_dependencies_must_come_first_or_be_finished(tmp_path):
    with pytest.raises(ValueError, match="comes after it"):
        jobs.run_jobs(tmp_path, [("b", Counter(), ["a"]), ("a", Counter())])
    with pytest.raises(ValueError, match="neither in the job list"):
        jobs.run_jobs(tmp_path, [("b", Counter(), ["a"])])
    jobs.run_jobs(tmp_path, [("a", Counter())])
    assert jobs.run_jobs(tmp_path, [("b", Counter(), ["a"])])["b"].status == jobs.DONE


def test_nan_survives_with_its_reason(tmp_path):
    output = {
        "trace": float("nan"),
        "top_eigenvalue": np.float32(np.inf),
        "block_trace": {"dense/kernel": [1.0, np.nan]},
        "fisher_trace": None,
        "spectrum": np.array([0.5, 2.0]),
        "nan_reason": {"trace": "trace_until did not converge"},
    }
    jobs.run_jobs(tmp_path, [("hessian/a", Counter(output))])
    text = jobs.result_path(tmp_path, "hessian/a").read_text()
    assert "NaN" not in text and "Infinity" not in text  # Strict JSON.

    record = jobs.read_result(tmp_path, "hessian/a")
    assert record.nan_reason == {
        "/trace": "trace_until did not converge",
        "/top_eigenvalue": "job returned inf",
        "/block_trace/dense~1kernel/1": "job returned nan",
    }
    assert math.isnan(record.result["trace"])
    assert math.isnan(record.result["top_eigenvalue"])
    assert record.result["block_trace"]["dense/kernel"][0] == 1.0
    assert math.isnan(record.result["block_trace"]["dense/kernel"][1])
    assert record.result["fisher_trace"] is None  # "Does not apply" stays distinct from NaN.
    assert record.result["spectrum"] == [0.5, 2.0]
    assert "nan_reason" not in record.result


def test_format_seconds():
    assert jobs.format_seconds(3.21) == "3.2s"
    assert jobs.format_seconds(70) == "1m10s"
    assert jobs.format_seconds(7500) == "2h05m"


def _worker_job(value: float, fail: bool = False) -> dict:
    """A picklable job: runs in a spawned worker process under `parallel > 1`."""
    if fail:
        raise RuntimeError(f"worker failed on {value}")
    return {"value": value, "pid": os.getpid()}


def test_parallel_workers_give_the_results_of_one_process(tmp_path):
    import functools

    def job_list(fail_at: float | None = None):
        result = []
        for value in (1.0, 2.0, 3.0):
            fn = functools.partial(_worker_job, value, fail=value == fail_at)
            result.append(jobs.Job(f"pretrain/r{int(value)}", fn, in_worker=True))
            result.append(jobs.Job(f"measure/r{int(value)}", Counter({"of": value}),
                                   (f"pretrain/r{int(value)}",)))
        return result

    serial = jobs.run_jobs(tmp_path / "serial", job_list(), record_failures=True)
    parallel = jobs.run_jobs(tmp_path / "parallel", job_list(2.0), record_failures=True, parallel=2)
    assert list(parallel) == list(serial)
    assert {record.status for record in serial.values()} == {jobs.DONE}
    for job_id in ("pretrain/r1", "pretrain/r3"):
        assert parallel[job_id].result["value"] == serial[job_id].result["value"]
        assert parallel[job_id].result["pid"] != os.getpid()  # Ran in a worker process.
    assert parallel["pretrain/r2"].status == jobs.FAILED
    assert "RuntimeError: worker failed on 2.0" in parallel["pretrain/r2"].error
    assert parallel["measure/r2"].status == jobs.SKIPPED
    assert parallel["measure/r3"].result == {"of": 3.0}
    # A rerun with the failure fixed retries it and its dependent only.
    again = jobs.run_jobs(tmp_path / "parallel", job_list(), retry_failed=True, parallel=2)
    assert again["pretrain/r2"].status == again["measure/r2"].status == jobs.DONE
    assert again["pretrain/r1"].result["pid"] == parallel["pretrain/r1"].result["pid"]


@pytest.mark.parametrize("parallel", [0, -1, 2.0, True, 10**6])
def test_bad_parallelism_is_refused(parallel, tmp_path):
    with pytest.raises(ValueError, match="parallel"):
        jobs.run_jobs(tmp_path, [("a", Counter())], parallel=parallel)

