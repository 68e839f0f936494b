#!/usr/bin/env python3
"""Make a first model: train the seed's ConvNet for a few steps on MNIST digits and export it with metadata.

A stop-gap until ``edgeloop trainer bootstrap`` exists (it will replace this script). The output is exactly
what the trainer ships -- the same exporter, metadata and onnxruntime verification (trainer/export.py) --
so the edge and the rollout can be tried end to end before the trainer service runs.

    .venv/bin/python tools/make_model.py                     # -> models/convnet-v0001.onnx
    .venv/bin/python tools/make_model.py --digits 0,1,2,3 --steps 50 --out /tmp/m.onnx

Data: the MNIST t10k IDX files (repo ``data/mnist/`` by default, ``--mnist-dir`` to override), split as the
Split-MNIST protocol says (80 % per digit to train from, 20 % held out); accuracy is reported on the held-out
part and stored in the model's metrics.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="make_model.py",
        description="Train the seed's ConvNet for a few steps on MNIST digits and export a verified ONNX model "
                    "with edgeloop metadata (input 'input' 1x28x28 GRAY scaled to [0,1], output 'logits').",
    )
    p.add_argument("--out", type=Path, default=None, help="output file (default: models/convnet-<version>.onnx)")
    p.add_argument("--version", default="v0001", help="model version written into the metadata (default: %(default)s)")
    p.add_argument("--parent", default=None, help="parent version for the lineage (default: none)")
    p.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9",
                   help="comma-separated digits to learn; they become the labels, in this order (default: all ten)")
    p.add_argument("--steps", type=int, default=100, help="Adam steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="minibatch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, as in the seed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--roi", default=None, help="x,y,w,h crop the edge applies to camera frames before resizing")
    p.add_argument("--mnist-dir", type=Path, default=None,
                   help="directory with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (default: data/mnist)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch ONNX exporter (default: %(default)s; see trainer/export.py)")
    args = p.parse_args(argv)
    if args.steps < 0 or args.batch_size < 1:
        p.error("--steps must be >= 0 and --batch-size >= 1")
    try:
        args.digit_list = [int(d) for d in args.digits.split(",")]
    except ValueError:
        p.error(f"--digits must be comma-separated integers, got {args.digits!r}")
    if not args.digit_list or len(set(args.digit_list)) != len(args.digit_list) or not all(0 <= d <= 9 for d in args.digit_list):
        p.error("--digits must be distinct digits 0-9")
    if args.roi is not None:
        try:
            args.roi = [int(v) for v in args.roi.split(",")]
            assert len(args.roi) == 4
        except (ValueError, AssertionError):
            p.error("--roi must be x,y,w,h")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    from torch import nn

    from protocol.model_meta import ModelMeta
    from trainer.datasets import MNIST_IMAGES, MNIST_LABELS, load_mnist, split_mnist
    from trainer.export import export_onnx
    from trainer.nets import build_model

    images = labels = None
    if args.mnist_dir is not None:
        images, labels = args.mnist_dir / MNIST_IMAGES, args.mnist_dir / MNIST_LABELS
    x_all, y_all = load_mnist(images, labels)
    train_idx, test_idx = split_mnist(y_all)
    remap = np.full(10, -1, dtype=np.int64)
    remap[args.digit_list] = np.arange(len(args.digit_list))

    def subset(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx[np.isin(y_all[idx], args.digit_list)]
        return torch.from_numpy(x_all[idx].astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(remap[y_all[idx]])

    train_x, train_y = subset(train_idx)
    test_x, test_y = subset(test_idx)

    torch.manual_seed(args.seed)
    model = build_model("convnet", len(args.digit_list))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train_x), (args.batch_size,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.3f}", flush=True)
    train_s = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(test_x[i:i + 500]).argmax(1) for i in range(0, len(test_x), 500)])
    accuracy = float((pred == test_y).float().mean())

    meta = ModelMeta(
        version=args.version, parent_version=args.parent, labels=[str(d) for d in args.digit_list],
        width=28, height=28, channels=1, color_order="GRAY", scale=1.0 / 255.0, mean=[0.0], std=[1.0],
        roi=args.roi, architecture="convnet", samples_seen=args.steps * args.batch_size,
        metrics={"accuracy": round(accuracy, 4), "eval_samples": len(test_y)}, created=time.time(),
    )
    out = args.out or REPO / "models" / f"convnet-{args.version}.onnx"
    result = export_onnx(model, meta, out, verify_inputs=test_x[:16], exporter=args.exporter)
    print(f"trained {args.steps} steps in {train_s:.1f}s; held-out accuracy {accuracy:.3f} on {len(test_y)} digits")
    print(f"wrote {result.path} ({result.size} bytes, sha256 {result.sha256[:16]}..., opset {result.opset}, "
          f"{result.exporter} export {result.export_seconds:.1f}s, verified in {result.verify_seconds:.1f}s, "
          f"max|ORT-torch| {result.max_abs_diff:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
