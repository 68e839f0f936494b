"""``edgeloop bench``: run the benchmarks, write bench/results.json and BENCHMARKS.md.

    edgeloop bench                         # = all
    edgeloop bench all --quick             # smoke run of everything (< 3 min budget)
    edgeloop bench codec mqtt_clients      # a subset; merged into the existing results.json
    edgeloop bench --list                  # the registry and what is importable
    edgeloop bench learning --strategy iw-er --seeds 0     # passthrough to bench.learning.main
    edgeloop bench rollout --devices 50                    # passthrough to bench.rollout.main
    edgeloop bench label_budget --seeds 0                  # = python -m bench.label_budget --seeds 0
    edgeloop bench soak --quick --out DIR  # only when named (30 min; not in all, not in CI)
    edgeloop bench adaptation --scenarios default --variant demo,calib   # passthrough to bench.adaptation.main

Why one harness: every benchmark answers a design claim (codec cost, edge fps, venv size, learning
quality, rollout time ...). Running them through one entry point with one machine description and
one report keeps the numbers comparable and the claims checkable; a benchmark that is missing or
crashes is recorded as such instead of hiding the others.

Each benchmark module exposes ``run(quick: bool = False) -> {"name", "figures", "goal", "met"}`` and
optionally ``main(argv) -> int`` for its own CLI. A result may also carry ``"status"`` (e.g.
``"skipped (quick)"``), ``"notes"``, ``"headline"`` (a figure key for the summary) and ``"units"``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import inspect
import json
import math
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results.json"
DEFAULT_MD = ROOT / "BENCHMARKS.md"
QUICK_BUDGET_S = 180.0

Result = dict[str, Any]


class NotAvailable(Exception):
    """Raised by a runner when its benchmark cannot run in this tree (recorded, not fatal)."""


@dataclass(frozen=True)
class Bench:
    """One registry entry.

    module: imported lazily; an ImportError *of this module itself* means "not written yet".
    runner: called instead of ``module.run`` (tests use it to stand in for a benchmark).
    explicit: runs only when named (``edgeloop bench soak``), never in ``all`` (so neither in CI): a benchmark
        that takes half an hour. ``all`` keeps its last entry in results.json. Given any option, it is always
        handed to the module's own ``main(argv)``, whose options (``--out DIR``) are not the harness's.
    """

    name: str
    module: str
    runner: Callable[[bool], Result] | None = None
    explicit: bool = False


REGISTRY: list[Bench] = [
    Bench("codec", "bench.codec"),
    Bench("simulator", "bench.simulator"),
    Bench("edge_path", "bench.edge_path"),
    Bench("venv_size", "bench.venv_size"),
    Bench("mqtt_clients", "bench.mqtt_clients"),
    Bench("learning", "bench.learning"),
    Bench("label_budget", "bench.label_budget"),
    Bench("transport", "bench.transport"),
    Bench("rollout", "bench.rollout"),
    Bench("freshness", "bench.freshness"),
    Bench("console", "bench.console"),
    Bench("fuzz", "bench.fuzz"),
    Bench("chaos", "bench.chaos"),
    Bench("adaptation", "bench.adaptation"),
    Bench("soak", "bench.soak", explicit=True),
    Bench("equal_compute", "bench.equal_compute", explicit=True),
]


# --------------------------------------------------------------------------- helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def jsonable(obj: Any) -> Any:
    """Plain-JSON copy: numpy scalars/arrays -> Python, NaN/inf -> None, tuples/sets -> lists.

    Why: results.json must be strict JSON (NaN is not), and benchmark modules return whatever their
    maths produced.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)  # numpy scalar
    if callable(item) and getattr(obj, "shape", None) == ():
        return jsonable(item())
    tolist = getattr(obj, "tolist", None)  # numpy array
    if callable(tolist):
        return jsonable(tolist())
    return str(obj)


def _is_own_import_error(exc: ImportError, module: str) -> bool:
    """True when ``module`` itself (or a parent package) does not exist, not one of its imports."""
    missing = getattr(exc, "name", None)
    if not isinstance(exc, ModuleNotFoundError) or not missing:
        return False
    return module == missing or module.startswith(missing + ".")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def load(bench: Bench) -> tuple[Any | None, Result | None]:
    """Import the benchmark's module; on failure return the entry that records why."""
    try:
        return importlib.import_module(bench.module), None
    except ImportError as exc:
        if _is_own_import_error(exc, bench.module):
            return None, {"name": bench.name, "status": "missing", "notes": f"{bench.module} not present yet"}
        return None, {
            "name": bench.name, "status": "error",
            "notes": f"missing dependency {getattr(exc, 'name', None) or exc}",
            "error": _tail(traceback.format_exc()),
        }
    except Exception:  # noqa: BLE001 - a broken module must not stop the other benchmarks
        return None, {"name": bench.name, "status": "error", "error": _tail(traceback.format_exc())}


def run_one(bench: Bench, quick: bool) -> Result:
    """Run one benchmark in this process; never raises (except KeyboardInterrupt)."""
    t0 = time.perf_counter()
    started = _now()
    module, failure = load(bench)
    if failure is not None:
        entry = failure
    else:
        try:
            fn = bench.runner or getattr(module, "run", None)
            if not callable(fn):
                raise NotAvailable(f"{bench.module} has no run(quick)")
            result = fn(quick)
            if not isinstance(result, dict):
                raise TypeError(f"{bench.name}.run returned {type(result).__name__}, expected dict")
            entry = dict(result)
            entry.setdefault("status", "ok")
        except NotAvailable as exc:
            entry = {"name": bench.name, "status": "not available", "notes": str(exc)}
        except Exception:  # noqa: BLE001 - record and continue with the next benchmark
            entry = {"name": bench.name, "status": "error", "error": _tail(traceback.format_exc())}
    entry["name"] = bench.name
    entry.setdefault("figures", {})
    entry.setdefault("goal", "")
    entry.setdefault("met", None)
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    entry["quick"] = quick
    entry["ran_at"] = started
    return jsonable(entry)


def run_benchmarks(
    benches: Sequence[Bench], quick: bool, on_result: Callable[[list[Result]], None] | None = None
) -> list[Result]:
    """Run in order with progress on stderr; ``on_result(entries so far)`` after each one.

    The callback lets main() rewrite results.json after every benchmark, so an interrupted or crashed
    20-minute run still leaves the numbers it had.
    """
    out: list[Result] = []
    t_all = time.perf_counter()
    for i, b in enumerate(benches, 1):
        _log(f"[{i}/{len(benches)}] {b.name}{' (quick)' if quick else ''} ...")
        entry = run_one(b, quick)
        met = {True: "met", False: "NOT met"}.get(entry.get("met"), "-")  # type: ignore[call-overload]
        _log(f"[{i}/{len(benches)}] {b.name}: {entry['status']}, {met}, {entry['seconds']:.1f} s "
             f"(elapsed {time.perf_counter() - t_all:.0f} s)")
        if entry["status"] == "error":
            _log("    " + entry.get("error", "").splitlines()[-1] if entry.get("error") else "    error")
        out.append(entry)
        if on_result is not None:
            on_result(out)
    return out


def write_results(
    entries: list[Result], out: Path, md: Path | None, quick: bool, registry: Sequence[Bench], merge: bool,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write results.json (+ one file per benchmark beside it) and BENCHMARKS.md.

    merge: keep entries of benchmarks not run this time from an existing results.json (so running one
    benchmark refreshes its row without erasing the rest); each entry carries its own ran_at/quick.
    Without merge (``all``), the entries of ``explicit`` benchmarks are kept all the same (``all`` never runs
    them), or stand as "not run" with how to run them.
    """
    from bench import machine as machine_mod
    from bench import report

    by_name: dict[str, Result] = {}
    explicit = {b.name: b for b in registry if b.explicit}
    if out.exists() and (merge or explicit):
        try:
            for e in json.loads(out.read_text()).get("benchmarks", []):
                if merge or e["name"] in explicit:
                    by_name[e["name"]] = e
        except (ValueError, KeyError, TypeError, AttributeError):
            _log(f"ignoring unreadable {out}")
    if not merge:
        for name, b in explicit.items():
            by_name.setdefault(name, _not_run(b))
    for e in entries:
        by_name[e["name"]] = e
    order = {b.name: i for i, b in enumerate(registry)}
    benchmarks = sorted(by_name.values(), key=lambda e: (order.get(e["name"], len(order)), e["name"]))
    doc = {
        "machine": machine if machine is not None else machine_mod.facts(),
        "generated": _now(),
        "quick": quick,
        "command": "edgeloop bench " + ("all" if not merge else " ".join(e["name"] for e in entries))
        + (" --quick" if quick else ""),
        "total_seconds": round(sum(e.get("seconds", 0.0) for e in entries), 1),
        "benchmarks": benchmarks,
    }
    doc = jsonable(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    per = out.with_suffix("")  # bench/results.json -> bench/results/NAME.json
    per.mkdir(parents=True, exist_ok=True)
    for e in entries:
        (per / f"{e['name']}.json").write_text(json.dumps(e, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(report.render(doc))
    return doc


def _not_run(bench: Bench) -> Result:
    """The entry of an ``explicit`` benchmark that has not been run yet: its goal and how to run it."""
    module, _ = load(bench)
    return {"name": bench.name, "status": "not run", "figures": {}, "met": None,
            "goal": str(getattr(module, "GOAL", "")),
            "notes": f"outside `edgeloop bench all` and CI; run it by name: `edgeloop bench {bench.name}` "
                     f"(`edgeloop bench {bench.name} --help` for its options)"}


# --------------------------------------------------------------------------- CLI
def _parser(registry: Sequence[Bench]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgeloop bench",
        allow_abbrev=False,  # so a benchmark's own --strategy/--seeds never match a harness option
        description="Run benchmarks; results to bench/results.json and BENCHMARKS.md.",
        epilog="benchmarks: " + ", ".join(b.name for b in registry)
        + ". With one benchmark name and options the harness does not know, the benchmark's own "
        "main(argv) is called (e.g. edgeloop bench learning --strategy iw-er --seeds 0).",
    )
    ap.add_argument("names", nargs="*", metavar="NAME", help="'all' (default) or benchmark names")
    ap.add_argument("--quick", action="store_true", help="each benchmark's quick mode (whole run < 3 min)")
    ap.add_argument("--out", type=Path, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    ap.add_argument("--md", type=Path, help="markdown report (default BENCHMARKS.md at the repo root, "
                    "or beside --out when --out is given)")
    ap.add_argument("--no-md", action="store_true", help="do not write the markdown report")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and whether each is present")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met (errors always do)")
    return ap


def own_main(module: Any) -> Callable[[list[str]], int] | None:
    """The module's ``main(argv)``, or None.

    A ``main()`` without an argv parameter does not count: it cannot be handed the arguments and may
    just run the benchmark (so ``--help`` would start a long run instead of printing help).
    """
    fn = getattr(module, "main", None)
    if not callable(fn):
        return None
    try:
        return fn if inspect.signature(fn).parameters else None
    except (TypeError, ValueError):
        return fn


def _passthrough(bench: Bench, rest: list[str]) -> int:
    """Call the benchmark module's own ``main(argv)``."""
    module, failure = load(bench)
    if failure is not None:
        print(f"edgeloop bench {bench.name}: {failure['status']}: {failure.get('notes') or failure.get('error')}",
              file=sys.stderr)
        return 2
    main_fn = own_main(module)
    if main_fn is None:
        print(f"edgeloop bench {bench.name}: {bench.module} has no main(argv); "
              f"options: edgeloop bench {bench.name} [--quick] [--out FILE]", file=sys.stderr)
        return 2
    return int(main_fn(rest) or 0)


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: every ``finally`` and context manager runs, so the brokers, cameras and
    trainers a benchmark started are stopped with it (by default SIGTERM ends Python at once and leaves them)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None, registry: Sequence[Bench] | None = None) -> int:
    """Entry point of ``edgeloop bench``; ``registry`` is injectable for tests."""
    _exit_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    reg = list(REGISTRY if registry is None else registry)
    by_name = {b.name: b for b in reg}

    # Passthrough: `edgeloop bench NAME <its own options>` goes to NAME's main(argv).
    if argv and argv[0] in by_name:
        bench, rest = by_name[argv[0]], argv[1:]
        if rest[:1] == ["--"]:
            return _passthrough(bench, rest[1:])
        if bench.explicit and rest:
            return _passthrough(bench, rest)
        if any(a in ("-h", "--help") for a in rest):
            module, _ = load(bench)
            if module is not None and own_main(module) is not None:
                return _passthrough(bench, rest)
        _, unknown = _parser(reg).parse_known_args(rest)
        if unknown:
            return _passthrough(bench, rest)

    args = _parser(reg).parse_args(argv)
    if args.list:
        for b in reg:
            module, failure = load(b)
            state = "present" if failure is None else failure["status"]
            has_main = module is not None and own_main(module) is not None
            print(f"{b.name:<14} {b.module:<24} {state}{'  (own CLI)' if has_main else ''}"
                  f"{'  (only when named, not in all)' if b.explicit else ''}")
        return 0
    names = args.names or ["all"]
    if "all" in names:
        if len(names) > 1:
            print("edgeloop bench: 'all' cannot be combined with names", file=sys.stderr)
            return 2
        selected = [b for b in reg if not b.explicit]
    else:
        unknown_names = [n for n in names if n not in by_name]
        if unknown_names:
            print(f"edgeloop bench: unknown benchmark(s) {', '.join(unknown_names)}; "
                  f"known: {', '.join(by_name)}", file=sys.stderr)
            return 2
        selected = [by_name[n] for n in dict.fromkeys(names)]
    out: Path = args.out or DEFAULT_OUT
    md: Path | None = None
    if not args.no_md:
        md = args.md or (out.parent / "BENCHMARKS.md" if args.out else DEFAULT_MD)

    from bench import machine as machine_mod

    facts = machine_mod.facts()
    merge = "all" not in names

    def save(entries: list[Result]) -> None:
        write_results(entries, out, md, args.quick, reg, merge=merge, machine=facts)

    t0 = time.perf_counter()
    entries = run_benchmarks(selected, args.quick, on_result=save)
    total = time.perf_counter() - t0
    _log(f"done in {total:.0f} s -> {out}" + (f", {md}" if md else ""))
    if args.quick and "all" in names and total > QUICK_BUDGET_S:
        _log(f"warning: --quick run took {total:.0f} s, over its {QUICK_BUDGET_S:.0f} s budget; "
             "slowest: " + ", ".join(f"{e['name']} {e['seconds']:.0f} s"
                                     for e in sorted(entries, key=lambda e: -e["seconds"])[:3]))
    if any(e["status"] == "error" for e in entries):
        return 1
    if args.strict and any(e.get("met") is False for e in entries):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
