"""Worker memory: the figure the job reports, and the CPU allocator setting that keeps it honest.

On GPUs the figure is the CUDA caching allocator's peak. On CPU it is the worker process's
peak resident set (`ru_maxrss`), which counts what glibc keeps of freed memory too: glibc
raises its mmap threshold as large blocks are freed, after which freed tensors stay in its
heap. A ZeRO-3 rank frees and re-gathers every layer each step, so its RSS then follows the
largest heap it ever had rather than what training holds (measured on the embedded model,
2 ranks: 1.85 GB held, 3.4 GB resident).
"""

from __future__ import annotations

import ctypes
import resource
import sys

import torch

MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's initial threshold: blocks this large and up are mmapped, and unmapped when freed."""

_M_MMAP_THRESHOLD = -3  # <malloc.h>


def release_freed_memory() -> bool:
    """Pin glibc's mmap threshold at 128 KiB for this process (setting it also stops the
    dynamic raise), so freed tensors go back to the OS at once. Costs page faults on each
    new large tensor: 10-25% step time on CPU. False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def peak_memory_mb() -> float:
    """This process's peak: CUDA allocations on GPU, resident set on CPU (both in MiB)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
