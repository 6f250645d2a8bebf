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


ONEDNN_SCRIPT = r"""
import sys
import torch
from rewardtune.memory import cap_onednn_cache

if sys.argv[1] == "capped":
    print("capacity", cap_onednn_cache())  # before the first bf16 matmul, as start_run does
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

lin = torch.nn.Linear(64, 256)
before = rss_mb()
for n in range(1, 601):  # 600 batch lengths: one oneDNN primitive each, as dynamic padding gives
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin(torch.randn(n, 64)).float().sum().backward()
print("grew", rss_mb() - before)
"""


def onednn_growth(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", ONEDNN_SCRIPT, mode], env=env, capture_output=True, text=True,
                         check=True).stdout
    return float(out.split()[-1])


def test_capped_onednn_cache_stops_memory_growing_with_every_new_shape():
    # observed on the 2-core machine: 721 MiB of growth with oneDNN's default cache, 443 MiB capped at 16
    default, capped = onednn_growth("default"), onednn_growth("capped")
    if default < 300:
        pytest.skip(f"this torch build keeps little per oneDNN primitive ({default:.0f} MiB over 600 shapes)")
    assert capped < default - 150, (capped, default)


def test_a_user_chosen_onednn_capacity_is_kept(monkeypatch):
    from rewardtune.memory import ONEDNN_CACHE, cap_onednn_cache

    monkeypatch.setenv(ONEDNN_CACHE, "256")
    assert cap_onednn_cache() == 256
    monkeypatch.delenv(ONEDNN_CACHE)
    assert cap_onednn_cache() == 16 and os.environ[ONEDNN_CACHE] == "16"
