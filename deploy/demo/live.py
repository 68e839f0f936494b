"""What ``edgeloop demo`` shows while it runs: a rich live view on a terminal, plain event lines otherwise.

Kept apart from :mod:`deploy.demo.app` so the orchestration never depends on how (or whether) it is displayed:
the demo hands a :class:`ViewState` snapshot to a :class:`View` a few times a second and appends events to
it; the view decides what a person sees. ``make_view`` picks the rich view only when stdout is a TTY, so
``edgeloop demo > log.txt`` or a CI job gets one greppable line per event instead of escape codes.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

__all__ = ["CameraRow", "ViewState", "View", "PlainView", "RichView", "make_view", "fmt_event"]


@dataclass
class CameraRow:
    """One camera's line in the table (all from its stats messages, plus the frozen control's figure)."""

    device: str
    online: bool = False
    accuracy: float | None = None
    frozen: float | None = None
    frames: int = 0
    uploads: int = 0
    fps: float = 0.0
    model: str = "-"
    rollout: str = ""          # this device's part in the rollout in progress, e.g. "wave 1: active"


@dataclass
class ViewState:
    """Everything the live view renders; rebuilt by the demo on every refresh."""

    phase: str = "starting"
    elapsed: float = 0.0
    stream_t: float = 0.0
    stream_len: float = 0.0
    broker: str = ""
    cameras: list[CameraRow] = field(default_factory=list)
    trainer: dict[str, Any] = field(default_factory=dict)
    rollout: str = "-"
    timeline: list[tuple[float, str]] = field(default_factory=list)   # (stream second, what) of scripted drifts


def fmt_event(t: float, kind: str, text: str) -> str:
    """One event as a plain line: ``[  42.1s] promoted      v0003 (held-out accuracy 0.812)``."""
    return f"[{t:7.1f}s] {kind:<12} {text}"


class View(Protocol):
    def start(self) -> None: ...
    def event(self, t: float, kind: str, text: str) -> None: ...
    def update(self, state: ViewState) -> None: ...
    def stop(self) -> None: ...


class PlainView:
    """Non-TTY output: one line per event, plus a one-line fleet summary every ``every_s`` seconds."""

    def __init__(self, out: TextIO | None = None, every_s: float = 15.0) -> None:
        self.out = out or sys.stdout
        self.every_s = every_s
        self._next = 0.0
        self._lock = threading.Lock()  # events come from several threads; print() writes the newline apart

    def start(self) -> None:
        pass

    def event(self, t: float, kind: str, text: str) -> None:
        line = fmt_event(t, kind, text) + "\n"
        with self._lock:  # one write per line: two threads' lines never run together
            self.out.write(line)
            self.out.flush()

    def update(self, state: ViewState) -> None:
        if state.phase != "streaming" or state.stream_t < self._next:
            return
        self._next = state.stream_t + self.every_s
        parts = []
        for c in state.cameras:
            acc = f"{c.accuracy:.2f}" if c.accuracy is not None else "-"
            frz = f"{c.frozen:.2f}" if c.frozen is not None else "-"
            parts.append(f"{c.device} acc {acc} (frozen {frz}) {c.model} up {c.uploads}")
        self.event(state.stream_t, "fleet", "; ".join(parts))

    def stop(self) -> None:
        pass


def _acc_text(value: float | None) -> Any:
    from rich.text import Text

    if value is None:
        return Text("-", style="dim")
    style = "green" if value >= 0.8 else "yellow" if value >= 0.6 else "red"
    return Text(f"{value:.3f}", style=style)


class RichView:
    """Terminal view: header (phase, clock, drift timeline), per-camera table, trainer/rollout line, events."""

    MAX_EVENTS = 14

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console()
        self._events: list[tuple[float, str, str]] = []
        self._state = ViewState()
        self._live: Any = None

    def start(self) -> None:
        from rich.live import Live

        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def event(self, t: float, kind: str, text: str) -> None:
        self._events.append((t, kind, text))
        self._events = self._events[-self.MAX_EVENTS:]
        if self._live is not None:
            self._live.update(self._render())

    def update(self, state: ViewState) -> None:
        self._state = state
        if self._live is not None:
            self._live.update(self._render())

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        s = self._state
        head = Text()
        head.append("edgeloop demo ", style="bold")
        head.append(f"[{s.phase}] ", style="cyan")
        if s.stream_len:
            head.append(f"stream {s.stream_t:5.1f}/{s.stream_len:.0f}s  ")
        head.append(f"elapsed {s.elapsed:5.1f}s  ", style="dim")
        head.append(f"broker {s.broker}", style="dim")
        if s.timeline:
            line = Text("timeline: ", style="dim")
            for t, what in s.timeline:
                done = s.stream_t >= t
                line.append(f"{what} @{t:.0f}s", style="bold magenta" if done else "dim")
                line.append("  ")
            head = Text.assemble(head, "\n", line)

        table = Table(expand=False, show_edge=False, pad_edge=False)
        for col, just in (("camera", "left"), ("accuracy", "right"), ("frozen", "right"), ("frames", "right"),
                          ("uploads", "right"), ("fps", "right"), ("model", "left"), ("rollout", "left")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for c in s.cameras:
            table.add_row(Text(c.device, style="bold" if c.online else "dim"), _acc_text(c.accuracy),
                          _acc_text(c.frozen), str(c.frames), str(c.uploads), f"{c.fps:4.1f}", c.model, c.rollout)

        tr = s.trainer
        trainer = Text()
        if tr:
            trainer.append("trainer ", style="bold")
            trainer.append(f"labels {tr.get('labels', 0)}  updates {tr.get('updates', 0)}  "
                           f"buffered {tr.get('buffered', 0)}  promoted {tr.get('promoted', '-')}  "
                           f"classes {','.join(tr.get('classes', []))}")
        rollout = Text.assemble(("rollout ", "bold"), s.rollout)

        ev = Table.grid(padding=(0, 1))
        ev.add_column(justify="right", style="dim")
        ev.add_column(style="bold")
        ev.add_column()
        styles = {"drift": "magenta", "promoted": "green", "rejected": "yellow", "rollout": "cyan",
                  "wave": "cyan", "completed": "green", "rollback": "red", "rolled_back": "red", "activated": "blue",
                  "failed": "red", "hint": "magenta"}
        for t, kind, text in self._events:
            ev.add_row(f"{t:6.1f}s", Text(kind, style=styles.get(kind, "white")), text)
        return Group(Panel(head, padding=(0, 1)), table, trainer, rollout,
                     Panel(ev, title="events", title_align="left", padding=(0, 1)))


def make_view(force_plain: bool = False) -> View:
    """Rich on a terminal, plain lines when stdout is redirected (or rich is missing)."""
    if not force_plain and sys.stdout.isatty():
        try:
            return RichView()
        except ImportError:
            pass
    return PlainView()


if __name__ == "__main__":  # a static preview, to look at the layout without running the loop
    v = RichView()
    v.start()
    st = ViewState(phase="streaming", elapsed=61.0, stream_t=48.0, stream_len=130, broker="mosquitto",
                   cameras=[CameraRow(f"cam-{i}", True, 0.8, 0.7, 700, 20, 15.0, "v0003", "wave 2/3: active")
                            for i in range(4)],
                   trainer={"labels": 80, "updates": 2, "buffered": 10, "promoted": "v0003", "classes": ["ok"]},
                   rollout="v0003 wave 2/3 running", timeline=[(45, "lighting"), (78, "new class crack")])
    v.update(st)
    v.event(45.0, "drift", "lighting change on all cameras")
    time.sleep(0.5)
    v.stop()
