"""``edgeloop trainer``: bootstrap the first model, run the service, show status and versions.

Examples::

    edgeloop trainer bootstrap data/mnist --arch convnet --epochs 3 --state-dir ./trainer-state
    edgeloop trainer bootstrap frames/ --arch small_cnn --roi 100,80,64,64 --labels ok,scratch,dent
    edgeloop trainer run --state-dir ./trainer-state --broker mqtt://127.0.0.1:1883 --labeller queue
    edgeloop trainer status --state-dir ./trainer-state
    edgeloop trainer quarantine list --state-dir ./trainer-state
    edgeloop trainer quarantine retry 3 --state-dir ./trainer-state
    edgeloop trainer versions --state-dir ./trainer-state --json
    edgeloop trainer classes add crack --state-dir ./trainer-state
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

DEFAULT_STATE = "./edgeloop-trainer"


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--roi wants x,y,w,h integers") from None
    if len(vals) != 4 or min(vals) < 0 or vals[2] < 1 or vals[3] < 1:
        raise argparse.ArgumentTypeError("--roi wants x,y,w,h with w, h >= 1")
    return vals  # type: ignore[return-value]


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return v


def _add_bootstrap(sub: Any) -> None:
    """``edgeloop trainer bootstrap``'s arguments (its own function: the bootstrap alone has 23 of them)."""
    b = sub.add_parser("bootstrap", help="train the first model from labelled images and register v0001",
                       description="Train the first model from an ImageFolder (root/<class>/*.png|jpg) or MNIST-format "
                                   "IDX files, write the trainer state directory and register the first ONNX version. "
                                   "sim: scenarios: `edgeloop demo` renders them to a folder and bootstraps from it "
                                   "(the trainer never imports the edge simulator).")
    b.add_argument("data", help="ImageFolder directory, directory with *images*idx3*/*labels*idx1*, or an IDX images file")
    b.add_argument("--idx-labels", metavar="FILE", help="IDX labels file (when DATA is an IDX images file)")
    b.add_argument("--arch", default="convnet", choices=["convnet", "small_cnn", "small_cnn128", "mobilenet_v3_small"],
                   help="convnet: 28x28 grey; small_cnn: 64x64 colour ROI; small_cnn128: 128x128 colour ROI (thin "
                        "defects; ~2.5x small_cnn's training cost); mobilenet_v3_small: 96x96 colour (default: %(default)s)")
    b.add_argument("--weights", metavar="FILE", help="local state_dict to start from (e.g. torchvision MobileNet weights)")
    b.add_argument("--epochs", type=int, default=3, help="passes over the training split (default: %(default)s)")
    b.add_argument("--lr", type=float, default=None, help="Adam peak learning rate, after a short warm-up and "
                   "before cosine decay (default: 1e-3); a diverging attempt is retried at 1/3 and 1/10 of it")
    b.add_argument("--retries", type=int, default=2, help="attempts after one that diverges or collapses to one "
                   "class / chance level (default: %(default)s); then the bootstrap fails and registers nothing")
    b.add_argument("--augment", choices=["none", "photometric", "geometric", "both"], default="none",
                   help="train on randomly changed copies: lighting/colour (photometric), small rotation/scale/"
                   "shift (geometric) or both (default: %(default)s)")
    b.add_argument("--batch-size", type=int, default=64, help="minibatch size (default: %(default)s)")
    b.add_argument("--labels", metavar="NAMES|FILE",
                   help="class names: comma list or a file with one per line (IDX: index order; folders: subset/order)")
    b.add_argument("--roi", type=_roi, metavar="X,Y,W,H", help="region of interest in frame pixels; goes into the model "
                   "metadata so edges crop it (full-frame images here are cropped too)")
    b.add_argument("--input-size", type=int, metavar="PIXELS", help="square input size (default: the architecture's)")
    b.add_argument("--held-out", type=_fraction, default=0.2, metavar="FRACTION",
                   help="class-stratified fraction kept for evaluation (default: %(default)s)")
    b.add_argument("--max-samples", type=int, metavar="N", help="use at most N samples (random, seeded)")
    b.add_argument("--replay-size", type=int, default=2000, help="replay memory seeded from the training split (default: %(default)s)")
    b.add_argument("--config", metavar="YAML", help="the trainer config `trainer run` will use (env EDGELOOP_TRAINER__* "
                   "too): only its strategy is read here -- when it distils (iw-er's default), the replay memory stores "
                   "the bootstrap model's logits for its rows")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo", help="ONNX exporter (default: %(default)s)")
    b.add_argument("--state-dir", default=DEFAULT_STATE, help="trainer state directory (default: %(default)s)")
    b.add_argument("--force", action="store_true", help="replace an existing trainer state")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--threads", type=int, default=None, help="torch threads")


def _add_run(sub: Any) -> None:
    r = sub.add_parser("run", help="run the service: ingest, label, update, gate, export, register",
                       description="Run the trainer service until interrupted (SIGINT/SIGTERM stop it cleanly after "
                                   "the update in progress; kill -9 is safe too: it resumes from the last checkpoint).")
    r.add_argument("--config", metavar="YAML", help="config file (keys of trainer/config.py); env EDGELOOP_TRAINER__* and flags override")
    r.add_argument("--state-dir", help="trainer state directory (bootstrap it first)")
    r.add_argument("--broker", metavar="URL", help="MQTT broker, mqtt://host:port or mqtts://host:port ('none' = no "
                   "ingestion); a password goes in the config (mqtt.password_file), never here")
    r.add_argument("--identity", metavar="DIR", help="TLS identity from `edgeloop pki`: DIR/ca.pem, cert.pem, key.pem "
                   "(e.g. PKI/services/trainer; the client id becomes the certificate's CN)")
    r.add_argument("--prefix", help="topic prefix (default edgeloop/v1)")
    r.add_argument("--client-id", help="MQTT client id (stable, so the broker keeps unacknowledged samples for us; "
                   "default: the certificate's CN, else edgeloop-trainer)")
    r.add_argument("--labeller", "--labeler", dest="labeller", choices=["oracle", "queue", "import"],
                   help="where labels come from (labeler.kind; default queue): queue = people (label API, console, "
                   "`edgeloop label`), import = a CSV file, oracle = the ground truth of simulated cameras only "
                   "(real frames have none: they are counted as skipped and wait)")
    r.add_argument("--import-csv", metavar="FILE", help="CSV sample_id,label for --labeller import")
    r.add_argument("--label-delay", type=float, metavar="S", help="oracle: seconds before a truth becomes a label")
    r.add_argument("--label-noise", type=float, metavar="P", help="oracle: label-flip probability")
    r.add_argument("--api-port", type=int, help="HTTP label API port (0 = any free port; default 8765)")
    r.add_argument("--no-api", action="store_true", help="no HTTP label API (not allowed with --labeller queue)")
    r.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus /metrics and /healthz port "
                   "(default 9852, 0 = any free port; metrics.host, default 127.0.0.1)")
    r.add_argument("--no-metrics", action="store_true", help="no /metrics and /healthz endpoint")
    r.add_argument("--strategy", help="naive | er | iw-er | der++ | ewc | mer")
    r.add_argument("-B", "--batch", type=int, help="update after this many new labelled samples")
    r.add_argument("-T", "--wait", type=float, help="... or after this many seconds")
    r.add_argument("-K", "--steps", type=int, help="optimiser steps per update")
    r.add_argument("--lr", type=float, help="update learning rate")
    r.add_argument("--held-out", type=_fraction, help="fraction of labelled samples held out for evaluation")
    r.add_argument("--max-regression", type=float, help="largest allowed drop in accuracy / macro-F1 to still promote")
    r.add_argument("--duration", type=float, metavar="S", help="stop after this many seconds")
    r.add_argument("--max-updates", type=int, metavar="N", help="stop after N updates")
    r.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    r.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    r.add_argument("--log-level", help="DEBUG, INFO, WARNING")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeloop trainer",
        description="The central learner: bootstrap a model, ingest edge samples over MQTT, label them, "
                    "run buffered importance-weighted continual updates, gate, export and register ONNX versions.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1],
    )
    sub = p.add_subparsers(dest="command", metavar="{bootstrap,run,status,versions,classes,quarantine}")

    _add_bootstrap(sub)
    _add_run(sub)

    s = sub.add_parser("status", help="counts: samples, labels, rejections per reason, devices, versions",
                       description="Read-only summary of a trainer state directory (works while the service runs).")
    s.add_argument("--state-dir", default=DEFAULT_STATE)
    s.add_argument("--json", action="store_true", help="machine-readable output")

    v = sub.add_parser("versions", help="registered model versions with their metrics and status",
                       description="List the registry: version, parent, status, samples seen, accuracy, macro-F1, labels.")
    v.add_argument("--state-dir", default=DEFAULT_STATE)
    v.add_argument("--json", action="store_true", help="machine-readable output")

    c = sub.add_parser("classes", help="list the known classes, or add a new one explicitly",
                       description="A label must name a known class (a model's class, one already labelled, or one "
                                   "added here), so that a typo never grows the model's head. `add NAME` makes NAME a "
                                   "class people may label with; the head grows when the first sample is trained.")
    c.add_argument("action", choices=["list", "add"])
    c.add_argument("name", nargs="?", help="with add: the new class")
    c.add_argument("--state-dir", default=DEFAULT_STATE)

    q = sub.add_parser("quarantine", help="batches whose update failed: list, retry or drop them",
                       description="A batch whose update raised (or left non-finite weights) is set aside with the "
                                   "reason and the learner goes on without it; it is never retried by itself. "
                                   "`retry ID` has the running trainer train it at its next tick (it goes back to "
                                   "the quarantine, with the new reason, if it fails again); `drop ID` gives it up "
                                   "(samples and labels stay in the store).")
    q.add_argument("action", choices=["list", "retry", "drop"])
    q.add_argument("id", nargs="?", type=int, help="with retry/drop: the batch id (from list)")
    q.add_argument("--all", action="store_true", help="list: also batches already retried or dropped")
    q.add_argument("--state-dir", default=DEFAULT_STATE)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "bootstrap":
        return _bootstrap(args)
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "classes":
        return _classes(args)
    if args.command == "quarantine":
        return _quarantine(args)
    return _versions(args)


def _quarantine(args: argparse.Namespace) -> int:
    from . import quarantine
    from .store import SampleStore

    state = Path(args.state_dir)
    if not (state / "samples" / "samples.db").exists():
        print(f"edgeloop trainer quarantine: {state} has no sample store", file=sys.stderr)
        return 2
    with SampleStore(state / "samples") as st:
        if args.action == "list":
            found = quarantine.entries(st, None if args.all else ("quarantined", "retry"))
            if args.json:
                print(json.dumps([e.as_dict() for e in found], indent=2))
                return 0
            if not found:
                print("no quarantined batches" + ("" if args.all else " (--all shows retried and dropped ones)"))
            for e in found:
                print(f"{e.id:>4}  {e.status:<11} label_seq {e.first_seq}..{e.last_seq}  {len(e.samples)} samples  "
                      f"{e.attempts} attempt(s)  {e.reason}")
            return 0
        if args.id is None:
            print(f"edgeloop trainer quarantine {args.action}: give the batch ID (see `quarantine list`)", file=sys.stderr)
            return 2
        try:
            e = quarantine.request(st, args.id, args.action)
        except ValueError as err:
            print(f"edgeloop trainer quarantine {args.action}: {err}", file=sys.stderr)
            return 2
    print(f"batch {e.id}: {e.status}" + (" -- the running trainer trains it at its next tick"
                                         if e.status == "retry" else ""))
    return 0


def _classes(args: argparse.Namespace) -> int:
    from .classes import add_class, added_classes, known_classes
    from .store import SampleStore

    state = Path(args.state_dir)
    if not (state / "samples").is_dir() and not (state / "registry.sqlite").exists():
        print(f"edgeloop trainer classes: {state} is not a trainer state directory", file=sys.stderr)
        return 2
    with SampleStore(state / "samples") as st:
        if args.action == "add":
            if not args.name:
                print("edgeloop trainer classes add: give the class NAME", file=sys.stderr)
                return 2
            try:
                name = add_class(st, args.name)
            except ValueError as e:
                print(f"edgeloop trainer classes add: {e}", file=sys.stderr)
                return 2
            print(f"class {name!r} added; known: {', '.join(known_classes(st, state))}")
            return 0
        added = set(added_classes(st))
        for name in known_classes(st, state):
            print(name + ("  (added)" if name in added else ""))
    return 0


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _bootstrap(args: argparse.Namespace) -> int:
    _setup_logging()
    from protocol.config import load_config

    from .bootstrap import BootstrapDiverged, bootstrap
    from .config import ENV_PREFIX, TrainerConfig

    try:
        cfg = load_config(TrainerConfig, args.config, env_prefix=ENV_PREFIX)  # the strategy the trainer will run
        res = bootstrap(
            args.state_dir, args.data, arch=args.arch, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            labels=args.labels, roi=args.roi, input_size=args.input_size, heldout=args.held_out,
            weights=args.weights, idx_labels=args.idx_labels, max_samples=args.max_samples,
            replay_size=args.replay_size, seed=args.seed, exporter=args.exporter, progress=not args.no_progress,
            force=args.force, torch_threads=args.threads, retries=args.retries, augment=args.augment,
            strategy=cfg.update.strategy, strategy_settings=cfg.strategy,
        )
    except (ValueError, FileNotFoundError, FileExistsError, BootstrapDiverged) as e:
        print(f"edgeloop trainer bootstrap: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    print(f"{res.version}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  on {m['n']} {m['evaluated_on']} "
          f"samples  ({res.train_size} trained, {len(res.labels)} classes, {res.seconds:.1f}s)  -> {res.path}")
    return 0


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {
        "state_dir": args.state_dir, "mqtt.topic_prefix": args.prefix, "mqtt.client_id": args.client_id,
        "labeler.kind": args.labeller, "labeler.csv": args.import_csv, "labeler.delay_s": args.label_delay,
        "labeler.noise": args.label_noise, "labeler.api_port": args.api_port, "update.strategy": args.strategy,
        "update.batch": args.batch, "update.wait_s": args.wait, "update.steps": args.steps, "update.lr": args.lr,
        "eval.heldout": args.held_out, "eval.max_regression": args.max_regression, "log_level": args.log_level,
    }
    if args.broker is not None:
        o["mqtt.url"] = args.broker
    if args.metrics_port is not None:
        o["metrics.port"] = args.metrics_port
    if args.no_metrics:
        o["metrics.enabled"] = False
    return o


def _run(args: argparse.Namespace) -> int:
    from protocol.config import dump_config, load_config
    from protocol.state_dir import service_state_dir

    from .config import ENV_PREFIX, TrainerConfig

    from protocol.mqtt import identity_overrides, refuse_password_in_url, resolve_password

    try:
        refuse_password_in_url(args.broker)
        overrides = _run_overrides(args)
        if args.identity:
            overrides.update(identity_overrides(args.identity))
        cfg = load_config(TrainerConfig, args.config, env_prefix=ENV_PREFIX, overrides=overrides)
        if not args.print_config:
            cfg.mqtt.password = resolve_password(cfg.mqtt.password, cfg.mqtt.password_file)
        cfg.state_dir = service_state_dir(cfg.state_dir, "edgeloop trainer run")  # never relative under systemd
    except ValueError as e:  # ConfigError, MQTTURLError, or a relative state dir in service mode
        print(f"edgeloop trainer run: {e}", file=sys.stderr)
        return 2
    if cfg.mqtt.url in ("none", ""):
        cfg.mqtt.url = None
    if args.no_api:
        if cfg.labeler.kind == "queue":
            print("edgeloop trainer run: the labeller queue (the default) needs the label API: drop --no-api, or "
                  "choose --labeller oracle (simulated cameras) or import", file=sys.stderr)
            return 2
        cfg.labeler.api_port = None
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    _setup_logging(cfg.log_level)
    from .service import NotBootstrapped, TrainerService
    from .statelock import StateLocked

    try:
        svc = TrainerService(cfg, exporter=args.exporter)
    except (NotBootstrapped, StateLocked) as e:
        print(f"edgeloop trainer run: {e}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()
        svc._stop.set()  # finish the update in progress, then leave the loop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        svc.run(duration=args.duration, max_updates=args.max_updates)
    except (ConnectionError, OSError) as e:
        print(f"edgeloop trainer run: {e}", file=sys.stderr)
        svc.stop()
        return 1
    svc.stop()
    c = svc.counters
    print(f"stopped: {c['updates']} updates, {c['samples_seen']} samples trained, {c['promotions']} promotions")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .registry import Registry
    from .store import SampleStore

    state = Path(args.state_dir)
    if not state.is_dir():
        print(f"edgeloop trainer status: {state} does not exist", file=sys.stderr)
        return 2
    ckpt = load_checkpoint(state)
    out: dict[str, Any] = {"state_dir": str(state)}
    if ckpt is not None:
        out.update(arch=ckpt.arch, labels=ckpt.labels, counters=ckpt.counters, checkpoint=str(ckpt.path))
        if ckpt.replay_state is not None:
            out["replay"] = _replay_summary(ckpt.replay_state)
    if (state / "samples").is_dir():
        from . import quarantine

        with SampleStore(state / "samples") as st:
            out["store"] = st.stats()
            out["quarantine"] = [e.as_dict() for e in quarantine.entries(st, ("quarantined", "retry"))]
    out["live"] = _live(state)
    with Registry(state) as reg:
        latest = reg.latest_promoted()
        out["promoted"] = latest.version if latest else None
        out["versions"] = len(reg.list())
    decisions = state / "decisions.jsonl"
    if decisions.exists():
        lines = decisions.read_text().strip().splitlines()
        if lines:
            last = json.loads(lines[-1])
            out["last_decision"] = {k: last.get(k) for k in ("update", "promote", "version", "reason", "n_heldout",
                                                             "deployed")}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"state      {state}")
    if ckpt is not None:
        c = ckpt.counters
        print(f"model      {ckpt.arch}, {len(ckpt.labels)} classes: {', '.join(ckpt.labels)}")
        print(f"learner    {c.get('updates', 0)} updates, {c.get('samples_seen', 0)} samples trained, "
              f"last label_seq {c.get('label_seq', 0)}, {c.get('promotions', 0)} promotions")
        if "replay" in out:
            r, filled = out["replay"], c.get("distill_targets_filled")
            print(f"replay     {r['rows']} of {r['capacity']} rows ({r['policy']}), "
                  + (f"logits stored for {r['rows_with_logits']} (distillation targets"
                     + (f"; {filled} filled in from the model at a start" if filled else "") + ")"
                     if r["store_logits"] else "no logits stored"))
    else:
        print("model      (not bootstrapped: run `edgeloop trainer bootstrap`)")
    print(f"promoted   {out['promoted']} ({out['versions']} versions registered)")
    st = out.get("store")
    if st:
        print(f"samples    {st['samples']} stored, {st['labelled']} labelled ({st['heldout']} held out), "
              f"{st['unlabelled']} waiting for a label")
        if st["per_class"]:
            print("classes    " + ", ".join(f"{k}: {v}" for k, v in st["per_class"].items()))
        if st["rejected"]:
            print("rejected   " + ", ".join(f"{k}: {v}" for k, v in st["rejected"].items()))
        for dev, d in st["devices"].items():
            print(f"device     {dev}: {d['received']} received, last seq {d['last_seq']}, {d['gaps']} gaps "
                  f"({d['missing']} missing), {d['out_of_order']} out of order, {d['duplicates']} duplicates")
    if "last_decision" in out:
        d = out["last_decision"]
        print(f"last gate  update {d['update']}: {'promoted ' + str(d.get('version')) if d['promote'] else 'kept'} -- {d['reason']}")
    _print_health(out)
    return 0


def _replay_summary(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpointed replay memory in a few numbers (trainer/replay.py's state_dict), for ``trainer status``."""
    cfg = state["config"]
    return {"rows": len(state["y"]), "capacity": cfg["capacity"], "policy": cfg["policy"],
            "store_logits": bool(cfg["store_logits"]),
            "rows_with_logits": int((state["nlogits"] > 0).sum()) if cfg["store_logits"] else 0}


def _live(state: Path) -> dict[str, Any] | None:
    """The running trainer's ``health.json`` (None when no trainer holds the state), with its age."""
    import time

    from .service import HEALTH_FILE
    from .statelock import held

    if not held(state):
        return None  # nobody holds the state: whatever health.json says is from a trainer that stopped
    try:
        live = json.loads((state / HEALTH_FILE).read_text())
    except (OSError, ValueError):
        return {"state": "running", "note": "no health.json yet"}
    live["age_s"] = round(time.time() - float(live.get("time", 0)), 1)
    return live


def _print_health(out: dict[str, Any]) -> None:
    """The lines an operator must not miss: degraded, quarantine, labels nobody will give, a model at chance."""
    live, st = out.get("live"), out.get("store") or {}
    if live is None:
        print("service    not running")
    else:
        state = live.get("state", "running")
        print(f"service    {state} (pid {live.get('pid', '?')}, figures {live.get('age_s', '?')} s old)")
        for part, why in (live.get("degraded") or {}).items():
            print(f"DEGRADED   {part}: {why}")
        q = live.get("ingest_queue")
        if q:
            print(f"ingest     {q['messages']} messages queued ({q['bytes']} bytes), oldest waiting "
                  f"{q['oldest_wait_s']:.1f} s")
    if st:
        skipped = st.get("unlabelled_without_truth", 0)
        labeller = (live or {}).get("labeller")
        waiting = st["unlabelled"] - (skipped if labeller == "oracle" else 0)
        print(f"labels     {waiting} waiting for a label" + (f", {skipped} without ground truth" +
              (" (skipped by the oracle labeller: use --labeller queue or import)" if labeller == "oracle" else "")
              if skipped else ""))
        for dev, reasons in (st.get("device_rejections") or {}).items():
            print(f"rejected   {dev}: " + ", ".join(f"{k}: {v}" for k, v in reasons.items()))
    for e in out.get("quarantine") or []:
        print(f"QUARANTINE batch {e['id']} ({e['status']}, label_seq {e['label_seq'][0]}..{e['label_seq'][1]}, "
              f"{len(e['samples'])} samples): {e['reason']} -- `edgeloop trainer quarantine retry|drop {e['id']}`")
    dep = ((live or {}).get("deployed") or (out.get("last_decision") or {}).get("deployed"))
    if dep and dep.get("at_chance"):
        print(f"WARNING    deployed {dep['version']} is at chance level: accuracy {dep['accuracy']:.3f} vs "
              f"{dep['chance']:.3f} for always answering the most frequent class; predicts "
              f"{dep['classes_predicted']} of {dep['classes']} classes")


def _versions(args: argparse.Namespace) -> int:
    from .registry import Registry

    state = Path(args.state_dir)
    if not (state / "registry.sqlite").exists():
        print(f"edgeloop trainer versions: no registry in {state}", file=sys.stderr)
        return 2
    with Registry(state) as reg:
        records = reg.list()
    if args.json:
        print(json.dumps([{"version": r.version, "parent": r.parent, "status": r.status, "path": str(r.path),
                           "sha256": r.sha256, "size": r.size, "arch": r.arch, "labels": r.labels,
                           "samples_seen": r.samples_seen, "metrics": r.metrics, "created": r.created}
                          for r in records], indent=2))
        return 0
    print(f"{'version':<9} {'parent':<9} {'status':<9} {'seen':>7} {'acc':>7} {'F1':>7}  labels")
    for r in records:
        acc, f1 = r.metrics.get("accuracy"), r.metrics.get("macro_f1")
        fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"{r.version:<9} {r.parent or '-':<9} {r.status:<9} {r.samples_seen:>7} {fmt(acc):>7} {fmt(f1):>7}  "
              f"{','.join(r.labels)}")
    return 0
