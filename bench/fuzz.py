"""``edgeloop bench fuzz``: hostile inputs through every decoder and the trainer's sample path.

Why: a decoder that raises anything but the project's own errors, or hangs, takes down the process that
reads the network (the trainer's MQTT thread, the edge's updater, the controller). The schema catches what a
decoder can see; this benchmark throws what it cannot see at the whole path: schema-valid samples with
extreme ``p_select``, images whose headers declare huge sizes, spoofed device ids, unknown labels, as well as
mutated envelopes, reports, promotion notices and image bytes.

An input *escapes* when it raises something other than :class:`protocol.errors.ProtocolError` (or the
trainer's :class:`trainer.images.ImageRejected` on the image path), or when a weight computed from an
accepted sample is not finite. An input *wedges* when it takes longer than ``WEDGE_S``. Accepted samples are
stored in a real SQLite store in a temporary directory (dedup key (device, sample_id)) and their images
decoded with the trainer's bound, as an update would.

Goal: 0 escapes and 0 wedges over 1,000,000 inputs (``--quick``: 20,000).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

FULL_INPUTS = 1_000_000
QUICK_INPUTS = 20_000
WEDGE_S = 2.0
MAX_PIXELS = 4096 * 4096  # the trainer's default bound (ingest.max_image_side 4096)

Result = dict[str, Any]


def _png(w: int, h: int, rng: random.Random) -> bytes:
    """A real small PNG (w x h, RGB)."""
    from PIL import Image

    im = Image.frombytes("RGB", (w, h), bytes(rng.getrandbits(8) for _ in range(w * h * 3)))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _png_claiming(w: int, h: int) -> bytes:
    """A ~100-byte PNG whose header declares w x h (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, insert, delete or truncate a few bytes."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        elif op == 1:
            b.insert(rng.randrange(len(b) + 1), rng.getrandbits(8))
        elif op == 2 and b:
            del b[rng.randrange(len(b))]
        elif b:
            del b[rng.randrange(len(b)):]
    return bytes(b)


class _Inputs:
    """Seeded generators of hostile inputs, one per target."""

    P_SELECT = [0.0, -1.0, 1e-300, 5e-324, 1e-50, 1e-7, 1e-6, 1.0000001e-6, 0.5, 1.0, 1.0000001, 2.0, 1e308]
    SIDES = [1, 2, 16, 65535, 13000, 4097, 100000, 2**31 - 1, 2**32 - 1]

    def __init__(self, seed: int) -> None:
        from protocol.messages import Sample, encode_message

        self.rng = random.Random(seed)
        self.Sample, self.encode = Sample, encode_message
        self.images = [_png(8, 8, self.rng), _png(3, 5, self.rng)]
        self.base = self._sample_payload("cam-1", "s-1", 0.25, self.images[0])

    def _sample_payload(self, device: str, sid: str, p: float, image: bytes, label: str = "ok",
                        w: int = 8, h: int = 8) -> bytes:
        s = self.Sample(sample_id=sid, model_version="v0001", topk=[(label, 0.6), ("dent", 0.4)], uncertainty=0.4,
                        uncertainty_kind="least_confidence", p_select=p, reason="uncertain", frame_index=1,
                        width=w, height=h, truth=label, source="fuzz")
        return self.encode(s, image, device=device, seq=self.rng.randrange(2**40), content_type="image/png")

    def sample(self) -> tuple[str, bytes]:
        """(topic, payload) for the trainer's sample path."""
        r = self.rng
        kind = r.randrange(6)
        device = r.choice(["cam-1", "cam-2", "cam-3"])
        topic = f"edgeloop/v1/dev/{device}/samples"
        sid = f"s-{r.randrange(5000)}"  # repeats: redeliveries and id squatting across devices
        if kind == 0:  # extreme p_select, written raw so that the sender's check is not the one tested
            payload = self._sample_payload(device, sid, 0.5, r.choice(self.images))
            p = r.choice(self.P_SELECT)
            payload = payload.replace(b'"p_select":0.5', b'"p_select":' + repr(p).encode().replace(b"inf", b"1e999"))
        elif kind == 1:  # an image whose header claims a huge size
            payload = self._sample_payload(device, sid, 0.5, _png_claiming(r.choice(self.SIDES), r.choice(self.SIDES)))
        elif kind == 2:  # header device != topic device (spoofed id)
            payload = self._sample_payload(r.choice(["cam-9", "trainer", "cam-1"]), sid, 0.5, self.images[0])
        elif kind == 3:  # unknown / odd labels
            label = r.choice(["scrach", "x" * 256, "ok\u0000", "\u202e", "dent", "a b"])
            payload = self._sample_payload(device, sid, 0.5, self.images[0], label=label)
        elif kind == 4:  # declared frame sizes out of range or unlike the body's
            payload = self._sample_payload(device, sid, 0.5, r.choice(self.images), w=65535, h=r.choice([1, 8, 65535]))
            payload = payload.replace(b'"width":65535', b'"width":' + r.choice([b"0", b"70000", b"-1", b"1e3", b"8"]))
        else:  # mutated bytes of a valid sample
            payload = _mutate(self.base, r)
        if r.random() < 0.02:
            topic = r.choice(["edgeloop/v1/dev/+/samples", "edgeloop/v1/dev//samples", "x", "edgeloop/v1/dev/a/b"])
        return topic, payload

    def envelope(self) -> bytes:
        return _mutate(self.base, self.rng) if self.rng.random() < 0.8 else self.rng.randbytes(self.rng.randrange(64))

    def report(self) -> bytes:
        base = self.rng.choice([
            b'{"type":"state","schema":2,"device":"cam-1","ts":1.0,"state":"online","boot":1}',
            b'{"type":"stats","schema":2,"device":"cam-1","ts":1.0,"fps":1.0,"latency_p50_ms":1,"latency_p95_ms":2,'
            b'"outbox_depth":0,"outbox_bytes":0,"outbox_dropped":0,"uploads":0}',
            b'{"type":"model_status","schema":2,"device":"cam-1","ts":1.0,"model_id":"m","version":"v1",'
            b'"state":"active"}',
        ])
        return _mutate(base, self.rng)

    def promotion(self) -> bytes:
        return _mutate(b'{"schema":1,"model_id":"edgeloop","version":"v0002","seq":2,"parent":"v0001","sha256":"'
                       + b"a" * 64 + b'","size":10,"chunk_size":8,"chunk_sha256":["' + b"b" * 64 + b'","' + b"c" * 64
                       + b'"],"labels":["ok"],"time":1.0}', self.rng)

    def image(self) -> bytes:
        r = self.rng
        return _mutate(r.choice(self.images), r) if r.random() < 0.7 else _png_claiming(r.choice(self.SIDES),
                                                                                     r.choice(self.SIDES))


def _targets(inputs: _Inputs, store: Any) -> dict[str, tuple[Callable[[], Any], tuple[type, ...]]]:
    """name -> (one call with a fresh input, the exceptions that count as a clean rejection)."""
    from protocol.errors import ProtocolError
    from protocol.messages import decode_message
    from protocol.promotion import decode_promotion
    from protocol.reports import decode_report
    from trainer.images import ImageRejected, decode, image_size
    from trainer.ingest import Ingestor
    from trainer.weighting import selection_weights

    ing = Ingestor(store, "mqtt://127.0.0.1:1", subscribe=False)  # never started: its validation only
    accepted: list[Any] = []

    def sample_path() -> None:
        topic, payload = inputs.sample()
        item = ing._validate(SimpleNamespace(topic=topic, payload=payload))
        w = selection_weights([item.p_select])
        if not bool(w.isfinite().all()) or float(w.min()) <= 0:
            raise FloatingPointError(f"weight {w.tolist()} from p_select {item.p_select}")
        decode(item.image, MAX_PIXELS, ("PNG", "JPEG"))
        accepted.append(item)
        if len(accepted) >= 32:
            store.add_batch(accepted)
            accepted.clear()

    def image() -> None:
        data = inputs.image()
        image_size(data, "image/png")
        decode(data, MAX_PIXELS, ("PNG", "JPEG"))

    return {
        "sample_path": (sample_path, (ProtocolError, ImageRejected)),
        "envelope": (lambda: decode_message(inputs.envelope()), (ProtocolError,)),
        "report": (lambda: decode_report(inputs.report()), (ProtocolError,)),
        "promotion": (lambda: decode_promotion(inputs.promotion()), (ProtocolError,)),
        "image": (image, (ImageRejected,)),
    }


def fuzz(n: int, seed: int = 0, progress: bool = False) -> Result:
    """Run ``n`` inputs spread over the targets; figures as in :func:`run`."""
    import logging

    from trainer.store import SampleStore

    logging.getLogger("trainer.ingest").setLevel(logging.CRITICAL)
    counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    escapes: list[str] = []
    wedges: list[str] = []
    slowest = 0.0
    with tempfile.TemporaryDirectory(prefix="edgeloop-fuzz-") as tmp, SampleStore(Path(tmp) / "samples") as store:
        targets = _targets(_Inputs(seed), store)
        names = list(targets)
        t_all = time.perf_counter()
        for i in range(n):
            name = names[i % len(names)]
            fn, clean = targets[name]
            counts[name] += 1
            t0 = time.perf_counter()
            try:
                fn()
            except clean:
                rejected[name] += 1
            except Exception as e:  # an escape: recorded, the run goes on
                if len(escapes) < 20:
                    escapes.append(f"{name}: {type(e).__name__}: {e}"[:300])
                else:
                    escapes.append(name)
            dt = time.perf_counter() - t0
            slowest = max(slowest, dt)
            if dt > WEDGE_S:
                wedges.append(f"{name}: {dt:.1f}s")
            if progress and i % 50_000 == 0:
                print(f"fuzz: {i}/{n}", file=sys.stderr)
        seconds = time.perf_counter() - t_all
        stored = store.stats()["samples"]
    return {"inputs": n, "seconds": round(seconds, 2), "inputs_per_s": round(n / seconds, 1),
            "escapes": len(escapes), "wedges": len(wedges), "slowest_input_ms": round(slowest * 1000, 2),
            "per_target": dict(counts), "rejected_per_target": dict(rejected), "samples_stored": stored,
            "escape_examples": escapes[:20], "wedge_examples": wedges[:20]}


def run(quick: bool = False) -> Result:
    figures = fuzz(QUICK_INPUTS if quick else FULL_INPUTS)
    met = figures["escapes"] == 0 and figures["wedges"] == 0
    return {"name": "fuzz", "figures": figures, "met": met, "headline": "inputs_per_s",
            "goal": f"0 escapes (anything but ProtocolError/ImageRejected, or a non-finite weight) and 0 inputs "
                    f"over {WEDGE_S:g}s, over {FULL_INPUTS:,} hostile inputs (--quick: {QUICK_INPUTS:,})",
            "units": {"inputs_per_s": "inputs/s", "slowest_input_ms": "ms"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeloop bench fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=FULL_INPUTS)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_INPUTS:,} inputs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fig = fuzz(QUICK_INPUTS if args.quick else args.inputs, args.seed, progress=True)
    print(json.dumps(fig, indent=2))
    return 0 if fig["escapes"] == 0 and fig["wedges"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
