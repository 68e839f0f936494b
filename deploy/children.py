"""Child processes that must not outlive the process that started them (broker, camera processes)."""
from __future__ import annotations

import signal
import sys
from typing import Callable


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies, even by SIGKILL.

    Without it, a demo killed with ``kill -9`` leaves mosquitto and its camera processes running (they are
    started in their own session so that a terminal's Ctrl-C reaches the parent first, which then stops
    them in order). Elsewhere than Linux, returns None (no such guarantee).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def set_it() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_it
