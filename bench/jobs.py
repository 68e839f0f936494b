"""Independent training runs spread over the machine's cores: one process per core, one torch thread each.

Why: the learning benchmarks are many independent (strategy, seed) or (fraction, selection, seed) runs of
a small ConvNet on minibatches of 10 + 32 replayed samples. One process with two intra-op threads
leaves a core idle during every small or serial op (optimiser steps, replay sampling, Python); two
single-thread processes keep both cores busy, and each run's result no longer depends on how many
threads happened to be free. ``edgeloop bench all`` has 20 minutes on 2 cores for everything, and these
runs are most of it.

Jobs are ``(function, kwargs)`` pairs with module-level functions (picklable), run longest-first
(``cost`` hints) in ``spawn``-started workers: fork after torch has started its thread pools can
deadlock. Results come back in job order, and one line per finished job goes to stderr.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Job:
    """One run: ``fn(**kwargs)`` in a worker. ``label`` names it in progress lines; ``cost`` orders the queue."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    cost: float = 1.0


def default_workers() -> int:
    """One worker per usable core (``EDGELOOP_BENCH_WORKERS`` overrides)."""
    env = os.environ.get("EDGELOOP_BENCH_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(**kwargs), time.perf_counter() - t0


def run_jobs(jobs: list[Job], workers: int | None = None, verbose: bool = True) -> list[Any]:
    """Run every job; return their results in job order. A failing job raises after the others finish.

    ``workers=1`` still uses one child process, so results do not depend on the worker count.
    """
    n = min(workers or default_workers(), max(1, len(jobs)))
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)
    results: list[Any] = [None] * len(jobs)
    errors: list[tuple[str, BaseException]] = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_init_worker) as pool:
        pending: dict[Future[tuple[Any, float]], int] = {pool.submit(_call, jobs[i].fn, jobs[i].kwargs): i for i in order}
        done_count = 0
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                done_count += 1
                try:
                    results[i], secs = fut.result()
                    status = f"{secs:.0f} s"
                except Exception as exc:  # noqa: BLE001 - finish the others, then report
                    errors.append((jobs[i].label, exc))
                    status = f"FAILED: {type(exc).__name__}: {exc}"
                if verbose:
                    print(f"[jobs] {done_count}/{len(jobs)} {jobs[i].label or jobs[i].fn.__name__}: {status} "
                          f"(elapsed {time.perf_counter() - t0:.0f} s, {n} workers)", file=sys.stderr, flush=True)
    if errors:
        label, exc = errors[0]
        raise RuntimeError(f"{len(errors)} of {len(jobs)} jobs failed; first: {label}: {type(exc).__name__}: {exc}") from exc
    return results
