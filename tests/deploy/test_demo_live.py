"""deploy/demo/live.py PlainView: event lines from several threads (the monitor, the rollout feeder, the
fleet summary) never run together on one line -- print() writes a line and its newline apart, and a demo
log showed ``... now runs v0002[   40.4s] wave ...``."""
from __future__ import annotations

import re
import threading
import time

from deploy.demo.live import PlainView

LINE = re.compile(r"^\[ *\d+\.\ds\] \S+ +thread \d+ event \d+$")


class _SlowOut:
    """A stream whose every write yields the CPU, so that two writes of one line would be interleaved."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        time.sleep(0.0005)
        self.parts.append(s)
        return len(s)

    def flush(self) -> None:
        pass


def test_lines_from_many_threads_stay_whole() -> None:
    out = _SlowOut()
    view = PlainView(out)  # type: ignore[arg-type]

    def emit(k: int) -> None:
        for i in range(40):
            view.event(1.0 * i, "wave", f"thread {k} event {i}")

    threads = [threading.Thread(target=emit, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = "".join(out.parts).splitlines()
    assert len(lines) == 160
    bad = [ln for ln in lines if not LINE.match(ln)]
    assert not bad, bad[:3]
