"""The frozen-model control: the bootstrap model, never updated, on exactly the frames each camera saw.

A *shadow evaluation*: sim frames are a pure function of (scenario, seed, index) and every stats message
carries the camera's capture position, so the control re-renders the camera's frame indices with
``frame_at`` and classifies them with onnxruntime. Why not frozen edge nodes: four more camera processes
would double the edge CPU on a 2-core box, their frame indices would differ from the live cameras' anyway
(own start time, own drops), and they would have to stay off the broker to not perturb the trainer. The
shadow costs ~1.5 ms per frame and compares like with like: the same pixels, the same windows (the same
number of frames the edge's rolling accuracy covers, ending at the same index).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from deploy.demo.monitor import Monitor

__all__ = ["FrozenControl"]


class FrozenControl:
    """Shadow evaluation of the frozen bootstrap model on the frame indices each camera reached.

    ``correct[device]`` holds one byte per frame index (1 = the frozen model was right). It follows the
    cameras' capture positions from the monitor, so at any stats point the control's accuracy over the same
    window is available; :meth:`finish` completes it after the cameras stopped.
    """

    def __init__(self, model_path: Path, urls: dict[str, str], monitor: Monitor, threads: int = 1) -> None:
        self.model_path = model_path
        self.urls = urls
        self.monitor = monitor
        self.correct: dict[str, bytearray] = {d: bytearray() for d in urls}
        self.truth_pred: dict[str, list[tuple[str, str]]] = {d: [] for d in urls}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._model: Any = None
        self._sources: dict[str, Any] = {}
        self.threads = threads

    def _setup(self) -> None:
        import cv2

        from edge.model import EdgeModel
        from edge.sources.sim import open_sim

        cv2.setNumThreads(1)
        self._model = EdgeModel.load(self.model_path, threads=self.threads)
        for d, url in self.urls.items():
            self._sources[d] = open_sim(url)

    def start(self) -> "FrozenControl":
        self._setup()
        self._thread = threading.Thread(target=self._run, name="demo-frozen-control", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            worked = False
            for d, row in self.monitor.snapshot().items():
                if d in self.correct and self._advance(d, int(row["index"]), budget=32):
                    worked = True
            if not worked:
                self._stop.wait(0.2)

    def _advance(self, device: str, upto: int, budget: int) -> bool:
        """Evaluate up to ``budget`` more frames of ``device`` below index ``upto``; False if nothing to do."""
        done = len(self.correct[device])
        if done >= upto:
            return False
        src = self._sources[device]
        idx = range(done, min(upto, done + budget))
        frames = [src.frame_at(i) for i in idx]
        preds = self._model.infer([f.image for f in frames])
        with self._lock:
            for f, p in zip(frames, preds):
                self.correct[device].append(1 if p.label == f.truth else 0)
                self.truth_pred[device].append((str(f.truth), p.label))
        return True

    def finish(self, targets: dict[str, int]) -> None:
        """Stop the thread and evaluate what is left up to each camera's last index."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for d, upto in targets.items():
            while d in self.correct and self._advance(d, upto, budget=256):
                pass

    def window(self, device: str, end: int, size: int) -> float | None:
        """Accuracy over frame indices [end - size, end) if all of them were evaluated."""
        c = self.correct.get(device)
        if c is None or end <= 0 or len(c) < end:
            return None
        lo = max(0, end - size)
        seg = c[lo:end]
        return sum(seg) / len(seg) if seg else None

