"""A reward that fails on one process only; tests/test_distributed.py runs it under torchrun.

`reward.functions=[rank_reward:words]`: the completion's length in words / 10, capped at 1; on the process whose RANK is
$FAIL_RANK, the $FAIL_AT-th call returns NaN for its first sample (unset: never).
"""
from __future__ import annotations

import math
import os

CALLS = [0]


def words(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    CALLS[0] += 1
    out = [min(len(c.split()), 10) / 10 for c in completions]
    fail = os.environ.get("RANK") == os.environ.get("FAIL_RANK") and str(CALLS[0]) == os.environ.get("FAIL_AT")
    return [math.nan] + out[1:] if fail else out
