"""How the gate saw a variant's candidates after the new class arrived, by what made them (offline, seconds).

Reads the saved rows of ``edgeloop bench adaptation`` runs (their per-decision records) and prints, per variant,
the median whole-set accuracy of the candidates and their recent-slice margin against the deployed model,
apart for candidates made by an update and by a rehearsal round (``update.rehearse_steps``). README Adaptation
#39: with dihedral, rehearsal rounds deepen the trade the gate refuses.

    python -m bench.adaptation_candidates --variant rehearse,rehearse-dihedral --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from typing import Any

__all__ = ["candidate_scores"]

_WHOLE = re.compile(r"whole set: accuracy ([\d.]+) vs best")
_RECENT = re.compile(r"recent \d+: accuracy ([\d.]+) vs best ([\d.]+)")


def candidate_scores(rows: list[dict[str, Any]], after_s: float) -> dict[str, dict[str, Any]]:
    """Per kind (``update``, ``rehearsal``): how many candidates were judged after ``after_s`` with both slices,
    the median whole-set accuracy and the median recent-slice margin (candidate − deployed, points)."""
    seen: dict[str, tuple[list[float], list[float]]] = {"update": ([], []), "rehearsal": ([], [])}
    for row in rows:
        for d in row.get("decisions", []):
            whole, recent = _WHOLE.search(d.get("reason", "")), _RECENT.search(d.get("reason", ""))
            if d["t"] < after_s or not whole or not recent:
                continue
            acc, margin = seen["rehearsal" if d.get("rehearsal") else "update"]
            acc.append(float(whole.group(1)))
            margin.append(100 * (float(recent.group(1)) - float(recent.group(2))))
    return {k: {"n": len(a), "whole": round(statistics.median(a), 3) if a else None,
                "recent_margin": round(statistics.median(m), 1) if m else None} for k, (a, m) in seen.items()}


def main(argv: list[str] | None = None) -> int:
    from bench.adaptation import STREAM_S, load_rows

    ap = argparse.ArgumentParser(prog="python -m bench.adaptation_candidates", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", required=True, help="comma-separated variants whose saved rows to read")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--stream", type=float, default=STREAM_S)
    ap.add_argument("--after", type=float, default=78.0, help="judge candidates from this stream second (default "
                                                               "78: the first update with crack labels)")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    for v in a.variant.split(","):
        rows = load_rows([a.scenario], seeds, [v], a.stream)
        if not rows:
            print(f"{v}: no saved rows (run `edgeloop bench adaptation --variant {v}` first)")
            continue
        sc = candidate_scores(rows, a.after)
        print(f"{v} ({len(rows)} runs), after {a.after:g} s: " + "; ".join(
            f"after {k}: {s['n']} candidates, whole set {s['whole']}, recent-slice margin {s['recent_margin']} points"
            for k, s in sc.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
