"""What one trainer step and one evaluation cost, per camera net, before and since the nets went channels-last.

The adaptation benchmark charges the trainer's stages by the times ``bench freshness`` measured with the demo's
``small_cnn`` at 64x64 (the run of record), scaled by ratios of CPU time: ``small_cnn128`` over ``small_cnn``, and
the nets as they are now over the nets the run of record trained (``trainer/nets.py``: channels-last weights, pooling
before the ReLU). Those ratios come from here, measured in one process, the arms interleaved round by round, medians
of the rounds, on one torch thread (the trainer's share of a camera box)::

    python -m bench.step_cost              # 5 rounds, ~2 min
    python -m bench.step_cost --rounds 9

"before" rebuilds each net in the ReLU-first order with contiguous (NCHW) weights: the same parameters, so the same
function, computed the old way. A step is the trainer's: B=64 (a batch and as many replayed), cross-entropy, Adam,
batch norm in inference mode (``strategy.freeze_bn``); an evaluation is 500 inputs without gradients. "frozenN" is
"now" with the first N blocks of the net's features frozen (``strategy.frozen_blocks: N``), and its evaluation runs
them only on the inputs new to it (10 of the 500; trainer/prefix_cache.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

ARMS = [("small_cnn", 64), ("small_cnn128", 128)]
LAYOUTS = ("before", "now", "frozen2", "frozen3")
#: held-out inputs new to an evaluation in the adaptation benchmark's loop: ~90 held-out uploads over 11-14 updates and
#: their rehearsal rounds, so 10 is generous
NEW_PER_EVALUATION = 10


def relu_first(model: Any) -> Any:
    """A copy of a camera net with the same parameters, computed as the nets were before: each block's ReLU before
    its pooling, the weights contiguous (NCHW)."""
    import copy

    import torch
    from torch import nn

    old = copy.deepcopy(model)
    for block in old.modules():
        if isinstance(block, nn.Sequential) and len(block) == 4 and isinstance(block[2], nn.MaxPool2d):
            block[2], block[3] = block[3], block[2]
    return old.to(memory_format=torch.contiguous_format)


def build(arch: str, layout: str) -> Any:
    """``arch`` as trainer.nets builds it now (``layout`` "now"), or as it was built before (``"before"``)."""
    from trainer.nets import build_model

    model = build_model(arch, 5).eval()
    if layout.startswith("frozen"):
        for block in list(model.features.children())[: int(layout[len("frozen"):])]:
            for p in block.parameters():
                p.requires_grad_(False)
    return relu_first(model) if layout == "before" else model


def measure(arch: str, size: int, layout: str, steps: int = 4) -> tuple[float, float]:
    """Thread CPU seconds of one update step (mean of ``steps`` after a warm-up) and of one 500-input evaluation."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = build(arch, layout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(64, 3, size, size), torch.randint(0, 5, (64,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t = time.thread_time()
    for _ in range(steps):
        step()
    step_s = (time.thread_time() - t) / steps
    xe = torch.rand(500, 3, size, size)
    with torch.no_grad():
        model(xe[:50])
        if layout.startswith("frozen"):  # the trainer keeps the frozen blocks' outputs (trainer/prefix_cache.py)
            return step_s, _eval_with_prefix_cached(model, xe, int(layout[len("frozen"):]))
        t = time.thread_time()
        model(xe)
        eval_s = time.thread_time() - t
    return step_s, eval_s


def _eval_with_prefix_cached(model: Any, xe: Any, frozen: int, new: int = NEW_PER_EVALUATION) -> float:
    """An evaluation of ``xe`` whose first ``frozen`` blocks' outputs are kept but for ``new`` inputs: those ``new``
    through the frozen blocks, then every input through the rest."""
    from torch import nn

    blocks = list(model.features.children())
    prefix, rest = nn.Sequential(*blocks[:frozen]), nn.Sequential(*blocks[frozen:], model.head)
    kept = prefix(xe)
    t = time.thread_time()
    prefix(xe[:new])
    rest(kept)
    return time.thread_time() - t


def run(rounds: int = 5) -> dict[str, Any]:
    """Medians over ``rounds`` interleaved rounds, and the ratios the adaptation benchmark charges."""
    import torch

    torch.set_num_threads(1)
    got: dict[str, list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for arch, size in ARMS:
            for layout in LAYOUTS:
                got.setdefault(f"{arch}/{layout}", []).append(measure(arch, size, layout))
    med = {k: {"step_s": statistics.median(s for s, _ in v), "eval_s": statistics.median(e for _, e in v)}
           for k, v in got.items()}
    base = med["small_cnn/before"]
    ratios = {k: {"step": round(m["step_s"] / base["step_s"], 3), "eval": round(m["eval_s"] / base["eval_s"], 3)}
              for k, m in med.items()}
    return {"rounds": rounds, "medians": med, "over_small_cnn_before": ratios}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.step_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default 5)")
    args = ap.parse_args(argv)
    out = run(args.rounds)
    print(f"{'net/layout':<22} {'step s':>8} {'eval500 s':>10} {'step x':>7} {'eval x':>7}   (x: over small_cnn/before)")
    for k, m in out["medians"].items():
        r = out["over_small_cnn_before"][k]
        print(f"{k:<22} {m['step_s']:>8.3f} {m['eval_s']:>10.3f} {r['step']:>7.3f} {r['eval']:>7.3f}")
    print(json.dumps(out["over_small_cnn_before"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
