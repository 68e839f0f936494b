"""Render BENCHMARKS.md from bench/results.json.

Why a separate renderer: the numbers are computed (medians, ratios, goals) by each benchmark module
and stored in results.json; this only presents them, so the report can be regenerated without rerunning
anything (``python -m bench.report [results.json] [BENCHMARKS.md]``) and never invents a figure.
Units come from key suffixes (``_fps``, ``_us``, ``_s``, ``_mb``, ``_pct`` ...), a convention the
benchmark modules follow so that the JSON stays plain numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent

# Longest suffix first: "_per_s" must win over "_s".
UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_us_per_frame", "µs/frame"), ("_ms_per_frame", "ms/frame"), ("_msgs_per_s", "msg/s"), ("_msg_per_s", "msg/s"), ("_per_s", "/s"), ("_per_sec", "/s"),
    ("_seconds", "s"), ("_percent", "%"), ("_bytes", "B"), ("_mbps", "Mbit/s"), ("_ratio", "×"),
    ("_fps", "fps"), ("_us", "µs"), ("_ms", "ms"), ("_ns", "ns"), ("_mb", "MB"), ("_kb", "KB"),
    ("_gb", "GB"), ("_mib", "MiB"), ("_kib", "KiB"), ("_gib", "GiB"), ("_pct", "%"), ("_hz", "Hz"), ("_rps", "req/s"), ("_s", "s"), ("_x", "×"),
)
# Headline figure per benchmark when a result does not name one itself ("headline" key): candidates
# in order, the first present wins (rollout's keys depend on the fleet sizes that were run).
HEADLINES: dict[str, tuple[str, ...]] = {
    "codec": ("round_trip_us",),
    "simulator": ("parts_fps",),
    "edge_path": ("small_cnn128.edge_fps", "small_cnn.edge_fps", "edge_peak_rss_mb"),
    "venv_size": ("venv_mb",),
    "mqtt_clients": ("req_rep_1proc_2clients",),
    "learning": ("summary.iw-er.final_acc",),
    "label_budget": ("acc_20pct_edge_iw_pct",),
    "rollout": ("n1000_seconds", "n100_seconds"),
    "adaptation": ("default_loop_final_pct",),
}
MACHINE_LABELS: dict[str, str] = {
    "cpu_model": "CPU", "cpu_count": "cores (os.cpu_count)", "cpu_affinity": "cores usable (affinity)",
    "memory_mb": "memory (MB)", "os": "OS", "kernel": "kernel", "machine": "arch", "python": "Python",
    "numpy": "numpy", "onnxruntime": "onnxruntime", "opencv": "opencv", "paho_mqtt": "paho-mqtt",
    "torch": "torch", "mosquitto": "mosquitto", "git_commit": "git commit", "git_dirty": "uncommitted changes",
}
MAX_LIST = 8


def unit_for(key: str) -> str:
    """Unit implied by the key's suffix ("" when none)."""
    k = key.lower()
    if k in ("seconds", "secs"):
        return "s"
    for suffix, unit in UNIT_SUFFIXES:
        if k.endswith(suffix):
            return unit
    return ""


def met_mark(met: Any) -> str:
    """✔ / ✘ / – (not judged)."""
    return {True: "✔", False: "✘"}.get(met, "–") if isinstance(met, bool) or met is None else "–"


def _cell(text: str) -> str:
    """Markdown table cells cannot hold pipes or newlines."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def fmt_value(v: Any) -> str:
    """Human formatting: 4,610 · 34.27 · 0.084 · yes/no · — for missing."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if v != v:  # NaN
            return "—"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 1:  # 4 significant digits, no trailing zeros: 93.78, 193.2, 21.2, 3.55
            decimals = 3 - len(str(int(a))) + 1
            text = f"{v:.{max(decimals, 0)}f}"
            return text.rstrip("0").rstrip(".") if "." in text else text
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in v) and len(v) <= MAX_LIST:
            return ", ".join(fmt_value(x) for x in v)
        return f"[{len(v)} items, see results.json]"
    if isinstance(v, dict):
        return f"{{{len(v)} keys, see results.json}}"
    return _cell(str(v))


def fmt_with_unit(key: str, v: Any) -> str:
    unit = unit_for(key) if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    text = fmt_value(v)
    if not unit or text == "—":
        return text
    return f"{text}{unit}" if unit in ("%", "×") else f"{text} {unit}"


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _is_matrix(v: Any) -> bool:
    """{row: {column: scalar}} with at least one row -> rendered as its own table."""
    return (
        isinstance(v, dict) and bool(v)
        and all(isinstance(r, dict) and r and all(_is_scalar(c) for c in r.values()) for r in v.values())
    )


def lookup(figures: dict[str, Any], path: str) -> Any:
    """Figure by key, or by dotted path into nested dicts (``summary.iw-er.final_acc``)."""
    if path in figures:
        return figures[path]
    cur: Any = figures
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def flatten(figures: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) for scalars and lists; matrices are left to ``matrices``."""
    for k, v in figures.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not _is_matrix(v):
            yield from flatten(v, key + ".")
        elif not _is_matrix(v):
            yield key, v


def matrices(figures: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, dict[str, dict[str, Any]]]]:
    for k, v in figures.items():
        key = f"{prefix}{k}"
        if _is_matrix(v):
            yield key, v
        elif isinstance(v, dict):
            yield from matrices(v, key + ".")


def headline(entry: dict[str, Any]) -> tuple[str, Any] | None:
    """The figure shown in the summary: the result's own "headline", a known default, else the first number."""
    figures = entry.get("figures") or {}
    for key in (entry.get("headline"), *HEADLINES.get(entry.get("name", ""), ())):
        if key:
            value = lookup(figures, key)
            if value is not None:
                return key, value
    numbers = [(k, v) for k, v in flatten(figures) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    # Prefer a measured quantity (it has a unit) over a setting such as frames or repeats.
    for key, value in numbers:
        if unit_for(key.split(".")[-1]) not in ("", "B"):
            return key, value
    return numbers[0] if numbers else None


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _status(entry: dict[str, Any]) -> str:
    return str(entry.get("status") or "ok")


def render_summary(benchmarks: list[dict[str, Any]]) -> list[str]:
    rows = []
    for e in benchmarks:
        h = headline(e) if _status(e) == "ok" or e.get("figures") else None
        rows.append([
            f"[{e['name']}](#{e['name'].lower()})",
            _status(e),
            f"{h[0]} = {fmt_with_unit(h[0].split('.')[-1], h[1])}" if h else "—",
            e.get("goal") or "—",
            met_mark(e.get("met")),
            fmt_value(e.get("seconds")) + " s" if e.get("seconds") is not None else "—",
        ])
    return table(["benchmark", "status", "headline", "goal", "met", "time"], rows)


def render_entry(e: dict[str, Any]) -> list[str]:
    """One section: status line, goal + met, notes, figure table, matrices, error tail."""
    lines = [f"## {e['name']}", ""]
    meta = [f"status **{_status(e)}**"]
    if e.get("seconds") is not None:
        meta.append(f"ran {fmt_value(e['seconds'])} s")
    if e.get("quick"):
        meta.append("quick mode")
    if e.get("ran_at"):
        meta.append(f"at {e['ran_at']}")
    lines += [" · ".join(meta), ""]
    if e.get("goal"):
        lines += [f"**Goal:** {e['goal']} — **met {met_mark(e.get('met'))}**", ""]
    if e.get("notes"):
        lines += [f"Notes: {e['notes']}", ""]
    if isinstance(e.get("units"), str):
        lines += [f"Units: {e['units']}", ""]
    figures = e.get("figures") or {}
    rows = [[k, fmt_with_unit(k.split(".")[-1], v)] for k, v in flatten(figures)]
    if rows:
        lines += table(["figure", "value"], rows) + [""]
    for key, mat in matrices(figures):
        cols: list[str] = []
        for r in mat.values():
            cols += [c for c in r if c not in cols]
        lines += [f"**{key}**", ""]
        lines += table([""] + [f"{c} ({unit_for(c)})" if unit_for(c) else c for c in cols],
                       [[str(name)] + [fmt_value(r.get(c)) for c in cols] for name, r in mat.items()])
        lines += [""]
    if e.get("error"):
        lines += ["```", str(e["error"]).rstrip(), "```", ""]
    if _status(e) == "missing" and not e.get("notes"):
        lines += ["Not written yet.", ""]
    return lines


def render(doc: dict[str, Any]) -> str:
    """The whole BENCHMARKS.md as a string."""
    machine = doc.get("machine") or {}
    benchmarks = doc.get("benchmarks") or []
    quick = bool(doc.get("quick"))
    lines = [
        "# edgeloop benchmarks",
        "",
        "Generated from `bench/results.json` by `bench/report.py`; do not edit by hand.",
        "",
        "Reproduce: `edgeloop bench all` (about 20 minutes; `edgeloop bench all --quick` is a < 3 minute smoke run",
        "whose figures are rougher and whose goals may be left unjudged). One benchmark: `edgeloop bench NAME`.",
        "",
        f"Generated {doc.get('generated', '?')}"
        + (f" by `{doc['command']}`" if doc.get("command") else "")
        + (" — **quick mode**" if quick else "")
        + (f", {fmt_value(doc['total_seconds'])} s of benchmarks" if doc.get("total_seconds") is not None else "")
        + ".",
        "",
        "## Summary",
        "",
    ]
    lines += render_summary(benchmarks) + [""]
    lines += ["## Machine", ""]
    keys = list(MACHINE_LABELS) + [k for k in machine if k not in MACHINE_LABELS]
    lines += table(["fact", "value"], [[MACHINE_LABELS.get(k, k), fmt_value(machine.get(k))] for k in keys if k in machine])
    lines += [""]
    for e in benchmarks:
        lines += render_entry(e)
    return "\n".join(lines).rstrip() + "\n"


def write(results: Path, md: Path) -> None:
    md.write_text(render(json.loads(results.read_text())))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results = Path(argv[0]) if argv else ROOT / "bench" / "results.json"
    md = Path(argv[1]) if len(argv) > 1 else ROOT / "BENCHMARKS.md"
    write(results, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
