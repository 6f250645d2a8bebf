"""Give freed tensor memory back to the operating system (CPU training with glibc).

glibc's malloc serves a large allocation with mmap (returned to the OS on free) only while it is
above a threshold that it *raises* every time such a block is freed, up to 32 MiB. After the
first training step, a step's activations and (B, T, V) logits come from the heap, which is
not given back and fragments: measured on SmolLM2-135M + LoRA, a forward/backward of 16 rows
left the process at 2.7 GB resident after the step, against 1.3 GB with a fixed 1 MiB threshold
(BENCHMARKS.md, "Where the memory goes"). Fixing the threshold turns the adjustment off.

It is a trade, so it is opt-in: `REWARDTUNE_MMAP_THRESHOLD_MB=1` (say) fixes the threshold; unset or 0
leaves malloc alone. Every large tensor then costs fresh page faults: SST-2 `sft` ran at 125–142 against
155–161 examples/s, and GRPO's peak fell from 3.2 to 2.6 GB (BENCHMARKS.md has both, with commands).

The second setting here is not opt-in: oneDNN (torch's CPU kernels for bf16 matmuls, among others)
keeps every primitive it compiles, up to 1,024 of them, one per input shape. Dynamic padding gives
a new shape for nearly every batch length, and each kept primitive holds its JIT code and buffers:
on full IMDb (256 tokens, bf16) `sft`'s peak resident memory reached 7.3 GB in 150 steps and still grew
(11.8 GB over the whole 704-step run); with a 16-primitive cache it was 5.4 GB, +90 MiB from step 60 to 150
(uncapped: +680 MiB), at the same speed or better (BENCHMARKS.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_applied: int | None = None


def return_freed_memory() -> int:
    """Fix glibc's mmap threshold once per process; returns it in bytes (0 when not applied)."""
    global _applied
    if _applied is not None:
        return _applied
    mb = int(os.environ.get("REWARDTUNE_MMAP_THRESHOLD_MB", "0") or 0)
    _applied = 0
    if mb <= 0 or not sys.platform.startswith("linux") or not (name := ctypes.util.find_library("c")):
        return 0
    try:
        libc = ctypes.CDLL(name)
        if libc.mallopt(M_MMAP_THRESHOLD, mb << 20) == 1:  # 1 = accepted (musl has no mallopt)
            _applied = mb << 20
    except (OSError, AttributeError):
        pass
    return _applied


ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_DEFAULT = 16


def cap_onednn_cache() -> int:
    """Keep at most 16 compiled oneDNN primitives unless the user chose a capacity; returns the capacity.

    oneDNN reads the variable when it creates its first primitive, so this must run before the first
    bf16 matmul of the process (start_run and the command line call it first thing).
    """
    return int(os.environ.setdefault(ONEDNN_CACHE, str(ONEDNN_CACHE_DEFAULT)))
