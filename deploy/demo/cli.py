"""``edgeloop demo``: the command line of the demo (options, checks, the closing summary lines)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deploy.demo.goals import format_goals, median_goals
from deploy.demo.plan import SCENARIOS, DemoOptions

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeloop demo",
        description="The whole loop in one command: embedded broker, bootstrap model, trainer (oracle labels, "
                    "automatic canary rollouts) and simulated cameras with scripted drift (a lighting change, then "
                    "a new defect class); a live view while it runs and a report (report.png, report.md, "
                    "summary.json) at the end, with a frozen-model control computed on the same frames.")
    p.add_argument("--cameras", type=int, default=4, help="simulated cameras, one process each (default 4)")
    p.add_argument("--duration", type=float, default=210.0,
                   help="wall-clock budget of the whole run in seconds, setup and report included (default 210: on "
                        "a 2-core VM the parts learner's 9-epoch bootstrap takes ~65 s and the stream ~125 s)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="parts", help="sim scenario (default parts)")
    p.add_argument("--data", help="digits: directory with MNIST IDX files (default: the repo's data/mnist)")
    p.add_argument("--broker", help="use this broker URL instead of starting the embedded one")
    p.add_argument("--seed", type=int, default=0, help="base seed of the cameras and the bootstrap set (default 0)")
    p.add_argument("--out", default="./edgeloop-demo", help="output directory (default ./edgeloop-demo)")
    p.add_argument("--fps", type=float, default=15.0, help="frames per second of each camera (default 15)")
    p.add_argument("--budget", type=int, default=40, help="uploads per minute per camera (default 40)")
    p.add_argument("--arch", help="model architecture (default: the scenario's, small_cnn128 for parts, convnet for "
                                  "digits); another one runs with the trainer's default learner settings")
    p.add_argument("--trainer-config", metavar="YAML",
                   help="trainer settings for the keys the demo does not set itself, in the YAML of `edgeloop "
                        "trainer run --config` (e.g. update.rehearse_steps, strategy.augment, eval.paired), instead of "
                        "the scenario's (for parts: deploy/configs/trainer-surface-defects-128.yaml); a key the "
                        "demo sets (paths, broker, labels, update cadence) is refused")
    p.add_argument("--plain", action="store_true", help="plain event lines even on a terminal")
    p.add_argument("--goals", nargs="+", metavar="OUT_DIR",
                   help="run nothing: judge the adaptation goals on the median of earlier runs' summary.json (e.g. "
                        "three seeds' --out directories) and exit 0 only if every goal is met")
    p.add_argument("--insecure", action="store_true",
                   help="an anonymous plain-MQTT broker on loopback instead of the default TLS broker with client "
                        "certificates and ACLs (anyone on this machine can then publish anything; it says so)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.goals:
        return goals_of_runs(args.goals)
    if args.cameras < 1:
        print("edgeloop demo: --cameras must be >= 1", file=sys.stderr)
        return 2
    if args.duration < 45:
        print("edgeloop demo: --duration must be >= 45 s (bootstrap + a stream long enough to show drift)",
              file=sys.stderr)
        return 2
    if args.arch is not None:
        from trainer.nets import ARCH_INPUT  # torch: only when the option is used

        if args.arch not in ARCH_INPUT:
            print(f"edgeloop demo: --arch {args.arch!r} is not an architecture; known: {', '.join(sorted(ARCH_INPUT))}",
                  file=sys.stderr)
            return 2
    if args.trainer_config is not None:
        from deploy.demo.plan import check_trainer_config

        why = check_trainer_config(args.trainer_config)
        if why is not None:
            print(f"edgeloop demo: --trainer-config: {why}", file=sys.stderr)
            return 2
    opts = DemoOptions(arch=args.arch, trainer_config=args.trainer_config, cameras=args.cameras, duration=args.duration, scenario=args.scenario, data=args.data,
                       broker=args.broker, seed=args.seed, out=args.out, fps=args.fps, budget=args.budget,
                       plain=args.plain, insecure=args.insecure)
    if opts.duration < 120:
        opts.bootstrap_frames = 1000
    from deploy.demo.app import run  # the loop's imports (controller, trainer, ...) only when it runs

    summary = run(opts)
    out = Path(opts.out).resolve()
    acc = summary.get("accuracy") or {}
    print()
    if acc:
        print(f"accuracy: initial {_f(acc.get('initial'))}, before drift {_f(acc.get('before_drift'))}, "
              f"after drift frozen {_f(acc.get('after_drift_frozen'))} vs loop {_f(acc.get('after_drift_final'))}")
        print(f"models promoted: {len(summary.get('model_versions', [])) - 1}, rollouts: "
              f"{len(summary.get('rollouts', []))}, uploads {summary.get('uploaded')} "
              f"({100 * (summary.get('upload_fraction') or 0):.1f} % of {summary.get('frames')} frames)")
    if summary.get("goals"):
        print("goals:", "all met" if summary["goals"]["met"] else "not all met")
        print("\n".join(format_goals(summary["goals"])))
    for w in summary.get("warnings", []) or []:
        print(f"WARNING: {w}", file=sys.stderr)
    for e in summary.get("errors", []) or []:
        print(f"problem: {e}", file=sys.stderr)
    print(f"report: {out / 'report.md'}  picture: {out / 'report.png'}  numbers: {out / 'summary.json'}")
    if summary.get("interrupted"):
        return 130
    return 0 if acc else 1


def goals_of_runs(dirs: list[str]) -> int:
    """``edgeloop demo --goals DIR...``: the goals on the median of the runs, each run's value in brackets."""
    import json

    runs = []
    for d in dirs:
        f = Path(d) / "summary.json"
        try:
            g = json.loads(f.read_text()).get("goals")
        except (OSError, ValueError) as e:
            print(f"edgeloop demo --goals: {f}: {e}", file=sys.stderr)
            return 2
        if not g:
            print(f"edgeloop demo --goals: {f} has no goals (an older run: python -m deploy.demo.report {d} "
                  "computes them)", file=sys.stderr)
            return 2
        runs.append(g)
    m = median_goals(runs)
    print(f"goals on the median of {len(runs)} run{'s' if len(runs) != 1 else ''} (each run in brackets): "
          f"{'all met' if m['met'] else 'not all met'}")
    print("\n".join(format_goals(m)))
    return 0 if m["met"] else 1


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


if __name__ == "__main__":
    sys.exit(main())
