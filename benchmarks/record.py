"""What every benchmark script shares: its peak memory, and one JSON line per result with its command.

Scripts run as `python benchmarks/NAME.py`, so this folder is on `sys.path` and `from record import ...` works;
the probes in `probes/` put this folder on `sys.path` first.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

RESULTS = "benchmarks/results.jsonl"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record(res: dict[str, Any], out: str | Path = RESULTS, echo: bool = True) -> None:
    """Append `res` (with the command line that produced it) to `out`; print it too unless `echo` is off."""
    res.setdefault("command", " ".join(sys.argv))
    if echo:
        print(json.dumps(res), flush=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(res) + "\n")
