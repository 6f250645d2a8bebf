"""A run folder as the report reads it: config.yaml, metrics.jsonl rows, samples.jsonl rows, the label names.

Only what the trainers write is read (run.py, train/*.py); nothing is loaded from a checkpoint but its small
`rewardtune.json`. A half-written last line (a killed run) is skipped, not fatal: a report of a crashed run is when
one is most wanted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


class ReportError(ValueError):
    """A folder the report cannot read (not a run folder)."""


@dataclass
class RunData:
    """One run folder's config, metrics and samples."""

    dir: Path
    label: str  # the name shown in legends and tables
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.jsonl
    samples: list[dict[str, Any]] = field(default_factory=list)  # samples.jsonl
    label_names: list[str] = field(default_factory=list)  # a classifier's labels, in order

    def split(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("split") == name]

    @property
    def kind(self) -> str:
        """What trained it, read from its config: `sft (classifier)`, `rl grpo (causal-lm)`, `rm pairwise`, ..."""
        c = self.config
        if "rm" in c:
            return f"rm {c['rm'].get('mode', '')}".strip()
        if "gen" in c:
            return f"rl {c.get('rl', {}).get('algorithm', '')} (causal-lm)"
        if "rl" in c:
            return f"rl {c['rl'].get('estimator', '')} (classifier)"
        if "gen_steps" in c:
            return "quickstart"
        return f"sft ({c.get('policy', 'classifier')})"


def _number(v: Any) -> Any:
    """JSON has no NaN: run.py writes non-finite numbers as 'nan'/'inf' text; read them back as floats."""
    if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf"):
        return float(v)
    return v


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file; a line that is not a JSON object (a half-written last line) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append({k: _number(v) for k, v in row.items()})
    return rows


def load_run(folder: Path, label: str = "") -> RunData:
    """Read one run folder; a folder without metrics.jsonl is refused with what to give instead."""
    import yaml

    if not (folder / "metrics.jsonl").is_file():
        raise ReportError(f"{folder}: not a run folder (no metrics.jsonl); give a folder under runs/, "
                          "e.g. `rewardtune report runs/sft runs/rl`")
    config_file = folder / "config.yaml"
    config = (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}) if config_file.exists() else {}
    return RunData(folder, label or folder.name, config, read_jsonl(folder / "metrics.jsonl"),
                   read_jsonl(folder / "samples.jsonl"), _label_names(folder, config))


def _label_names(folder: Path, config: dict[str, Any]) -> list[str]:
    """A classifier's labels: from its best checkpoint's rewardtune.json, else the config's data.labels."""
    meta = folder / "checkpoints" / "best" / "rewardtune.json"
    if meta.exists():
        names = json.loads(meta.read_text(encoding="utf-8")).get("label_names")
        if names:
            return [str(n) for n in names]
    return [str(n) for n in (config.get("data") or {}).get("labels") or []]


def collect_runs(folders: Sequence[str | Path]) -> list[RunData]:
    """The runs of the folders given, in order. A folder holding run folders (the quickstart's) stands for them,
    and for itself only if it logged training rows of its own. Labels are folder names, with the parent's where two
    would be the same."""
    found: list[Path] = []
    for f in map(Path, folders):
        if not f.is_dir():
            raise ReportError(f"{f}: no such folder; give run folders, e.g. `rewardtune report runs/sft runs/rl`")
        inner = sorted((p for p in f.iterdir() if (p / "metrics.jsonl").is_file()), key=lambda p: p.stat().st_mtime)
        own = (f / "metrics.jsonl").is_file() and any(r.get("split") == "train" for r in read_jsonl(f / "metrics.jsonl"))
        found += ([f] if own or not inner else []) + inner
    names = [p.name for p in found]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in found]
    return [load_run(p, label) for p, label in zip(found, labels)]


def numeric(row: dict[str, Any], key: str) -> float | None:
    """The row's value of `key` as a float, None when absent or not a number."""
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)
