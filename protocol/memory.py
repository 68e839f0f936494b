"""Give freed heap memory back to the operating system after a large, short-lived allocation is released.

Why this exists: glibc's malloc keeps memory a thread frees in that thread's arena and returns only the top
of each heap to the kernel. A camera loads each new model (an ONNX Runtime session: weights, graph, buffers)
on its updater thread, shadow-runs it there, and drops the model it replaces on the frame-loop thread, so
every swap leaves model-sized free holes spread over several arenas. In the 30-minute soak (a swap every
few minutes) a camera's RSS grew ~10 MB per swap, 156 -> 226 MB; the same swap path in one process grew
115 -> 156 MB over 25 swaps and stayed at 107 MB with a trim after each (bench/soak.py, README "The soak").
``malloc_trim(0)`` hands the free pages of every arena back (madvise), so RSS follows what is live. The
trainer has the same pattern (training buffers, ONNX export, evaluation) once per update. ONNX Runtime has
an open pull request doing this after session teardown (microsoft/onnxruntime#32107).

It takes 1-6 ms on a camera, so callers run it off latency-critical threads. On a C library without
``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

_lock = threading.Lock()
_trim: Any = None  # the C function, False when this libc has none, None before the first call
trims = 0  # how many trims ran in this process (for tests and stats)


def _malloc_trim() -> Any:
    global _trim
    if _trim is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            fn = libc.malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _trim = fn
        except (OSError, AttributeError):
            _trim = False
    return _trim


def trim_heap() -> bool:
    """Return free heap pages to the OS; True when the C library could do it (glibc)."""
    global trims
    fn = _malloc_trim()
    if not fn:
        return False
    with _lock:  # one trim at a time: two would walk the same arenas for nothing
        fn(0)
        trims += 1
    return True
