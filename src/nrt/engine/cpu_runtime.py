"""Process-wide CPU settings that pay on a shared machine. For entry points (the CLI, benchmarks) only.

- OpenMP's wait policy is left to the user: on an oversubscribed CPU (more busy threads than
  cores), `OMP_WAIT_POLICY=PASSIVE` in the environment makes idle threads sleep instead of
  spinning on the cores the working threads need (measured on a loaded 2-core machine: a
  decoding loop 16x faster); on a quiet machine it costs (an NRT step 2.2-2.7 s with spinning
  threads, 3.0-3.1 s with sleeping ones; docs/PERFORMANCE.md), so nrt does not set it.
- `keep_freed_memory()`: glibc keeps freed memory for reuse instead of returning it to the
  system after every step (mallopt: trim threshold 2 GiB, mmap threshold 32 MiB). Otherwise each
  training step re-faults its activations page by page: ~150,000 page faults and ~0.3 s of
  system time per step of `nrt bench`'s default workload. Resident memory then stays at its
  peak between steps (the peak itself does not change).
- `return_freed_memory()`: the opposite, for measuring memory: every block of 128 KiB or more
  is mapped on its own and unmapped when freed, so the resident set follows what is allocated
  (`nrt bench --step-memory`).
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(trim_threshold: int = 2**31 - 1, mmap_threshold: int = 32 * 2**20) -> bool:
    """Set glibc's malloc thresholds for this process; False (nothing done) on other C libraries."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)) and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold))


def return_freed_memory() -> bool:
    """glibc hands freed memory back at once (fixed thresholds of 128 KiB: no dynamic raise);
    False (nothing done) on other C libraries."""
    return keep_freed_memory(trim_threshold=128 * 2**10, mmap_threshold=128 * 2**10)
