"""meshd pins glibc's mmap threshold (:func:`~xds_server.server.heap_trim.pin_mmap_threshold`):
after one multi-megabyte buffer is freed, a later buffer above the threshold must still get
its own mapping (returned to the OS when freed) rather than come from the heap, which is
what glibc's dynamic threshold does. Checked in a child process (the setting is
process-wide) through glibc's own counters (``mallinfo2``)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, sys
from xds_server.server.heap_trim import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
big = libc.malloc(8 << 20)       # like one 8 MB request gRPC received
libc.free(big)                   # (unpinned, glibc now raises its threshold to 8 MB)
before = libc.mallinfo2().hblks
buf = libc.malloc(2 << 20)       # a later 2 MB buffer
print(libc.mallinfo2().hblks - before)
libc.free(buf)
"""


def _mapped_after_a_big_free(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_big_buffer_after_a_bigger_one_freed_still_gets_its_own_mapping() -> None:
    assert _mapped_after_a_big_free("default") == 0  # glibc's dynamic threshold: the heap
    assert _mapped_after_a_big_free("pinned") == 1  # meshd's: a mapping, given back on free
