"""Split-MNIST continual-learning benchmark (``edgeloop bench learning``); the logic is in trainer.learning_bench.

``--peer avalanche`` additionally runs Avalanche's Naive, Replay and DER++ on the identical stream in the
same run (from their own virtualenv, see bench/avalanche_env.py) and prints them beside ours, so the
comparison never rests on remembered numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from trainer.learning_bench import GOAL, format_table, main as trainer_main, run, summarise

__all__ = ["GOAL", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    peer_parser = argparse.ArgumentParser(add_help=False)
    peer_parser.add_argument("--peer", choices=["avalanche"])
    peer_parser.add_argument("--json")
    peer_parser.add_argument("--seeds", default="0,1,2")
    peer_parser.add_argument("--buffer", type=int, default=500)
    peer_parser.add_argument("--images")
    peer_parser.add_argument("--labels")
    known, _ = peer_parser.parse_known_args(argv)
    if known.peer is None or "-h" in argv or "--help" in argv:
        if "-h" in argv or "--help" in argv:
            print("  --peer avalanche     also run Avalanche's Naive, Replay and DER++ on the same stream "
                  "(needs: python -m bench.avalanche_env --create)\n")
        return trainer_main([a for a in argv if a != "--peer" and a != "avalanche"])

    from bench.avalanche_peer import PeerUnavailable, run_peer

    rest = [a for i, a in enumerate(argv) if a != "--peer" and not (i and argv[i - 1] == "--peer")]
    with tempfile.TemporaryDirectory() as tmp:
        ours_json = Path(tmp) / "ours.json"
        if "--json" in rest:
            i = rest.index("--json")
            del rest[i:i + 2]
        rc = trainer_main(rest + ["--json", str(ours_json)])
        ours = json.loads(ours_json.read_text())
    seeds = [int(s) for s in known.seeds.split(",") if s.strip()]
    try:
        peer_rows = run_peer(known.images, known.labels, seeds, known.buffer, verbose=True)
    except PeerUnavailable as exc:
        print(f"\navalanche peer skipped: {exc}")
        peer_rows = []
    rows = ours["rows"] + peer_rows
    print("\nours beside Avalanche, same stream, same run:")
    print(format_table(summarise(rows)))
    if known.json:
        Path(known.json).write_text(json.dumps({**ours, "rows": rows, "summary": summarise(rows)}, indent=2,
                                               default=float))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
