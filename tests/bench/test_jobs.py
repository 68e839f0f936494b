"""bench/jobs.py: independent runs in single-thread worker processes, results in job order, failures named."""
from __future__ import annotations

import json

import pytest
import torch

from bench.jobs import Job, default_workers, run_jobs


def test_results_come_back_in_job_order_whatever_the_cost_order() -> None:
    jobs = [Job(json.dumps, {"obj": [i]}, label=f"j{i}", cost=float(i)) for i in range(5)]
    assert run_jobs(jobs, workers=2, verbose=False) == [json.dumps([i]) for i in range(5)]


def test_workers_run_one_torch_thread() -> None:
    assert run_jobs([Job(torch.get_num_threads), Job(torch.get_num_threads)], workers=2, verbose=False) == [1, 1]


def test_a_failing_job_is_named_after_the_others_finish(capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [Job(json.dumps, {"obj": 1}, label="fine"), Job(json.dumps, {"obj": object()}, label="broken")]
    with pytest.raises(RuntimeError, match="1 of 2 jobs failed; first: broken: TypeError"):
        run_jobs(jobs, workers=1)
    err = capsys.readouterr().err
    assert "fine: " in err and "broken: FAILED: TypeError" in err


def test_worker_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_BENCH_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.delenv("EDGELOOP_BENCH_WORKERS")
    assert default_workers() >= 1
