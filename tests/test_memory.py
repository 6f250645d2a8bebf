"""Freed tensors go back to the OS: glibc's mmap threshold is fixed at the start of a run."""
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import torch
from rewardtune.memory import return_freed_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

print("threshold", return_freed_memory())
x = torch.empty(8 << 20, dtype=torch.uint8).fill_(1)
del x  # an mmapped block freed: glibc raises its threshold
before = rss_mb()
big, pins = [], []
for _ in range(40):  # 320 MiB of 8 MiB tensors, each followed by a small live one, as in a training step
    big.append(torch.empty(8 << 20, dtype=torch.uint8).fill_(1))
    pins.append(torch.ones(1000))
peak = rss_mb()
del big
print("held", peak - before, "kept", rss_mb() - before)
"""


def run(threshold_mb: str) -> dict[str, float]:
    env = {**os.environ, "REWARDTUNE_MMAP_THRESHOLD_MB": threshold_mb}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True).stdout
    words = out.split()
    return {"threshold": float(words[1]), "held": float(words[3]), "kept": float(words[5])}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_tensors_leave_the_resident_set():
    fixed = run("4")
    assert fixed["threshold"] == 4 << 20 and fixed["held"] > 300
    assert fixed["kept"] < 20, fixed  # the 320 MiB went back to the OS
    default = run("0")  # malloc left alone: the same pattern keeps the memory (what the fix is for)
    assert default["threshold"] == 0
    if default["kept"] < 300:
        pytest.skip(f"this libc already returns freed blocks ({default})")
