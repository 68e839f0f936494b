"""trim_heap really returns freed heap to the OS (a subprocess, so this test's own heap does not interfere)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A thread allocates 64 MB in 64 KB blocks from its own arena and frees all but the last; automatic trimming
# is switched off (M_TRIM_THRESHOLD) and every block kept off mmap (M_MMAP_THRESHOLD), as happens to a
# model's buffers once glibc's dynamic mmap threshold has risen. Then RSS before and after trim_heap().
SCRIPT = r"""
import ctypes, sys, threading
sys.path.insert(0, sys.argv[1])
from protocol.memory import trim_heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: no automatic trim
libc.mallopt(-3, 1 << 25)   # M_MMAP_THRESHOLD: 64 KB blocks come from the heap
def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
def churn():
    blocks = [libc.malloc(64 * 1024) for _ in range(1024)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    for b in blocks[:-1]:
        libc.free(b)
t = threading.Thread(target=churn); t.start(); t.join()
before = rss_mb()
ok = trim_heap()
print(ok, round(before - rss_mb(), 1))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_trim_heap_returns_freed_arena_pages() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) > 40.0, f"trim_heap gave back only {out[1]} MB of 64 MB freed"


def test_trim_heap_is_safe_to_call_repeatedly() -> None:
    from protocol import memory

    before = memory.trims
    assert memory.trim_heap() in (True, False)
    memory.trim_heap()
    assert memory.trims - before in (0, 2)
