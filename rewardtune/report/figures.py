"""Which metrics the report plots, and each plot's series: every run that logged a metric is one line of its plot,
so runs given together (SFT and RL, two algorithms) are compared on the same axes.

Training (`split: train` rows): reward, each reward component (`reward/<name>`), KL, loss, entropy and completion
length first; every other number a trainer logs goes to a folded "more" group. Held-out (`val` and `eval` rows):
every number but the per-label ones (those are in the classification tables).
"""
from __future__ import annotations

from typing import Any, Sequence

from .plots import Series, line_plot
from .runs import RunData, numeric

HEADLINE = ("reward", "kl", "loss", "entropy", "completion_len")
NOT_PLOTTED = ("step", "epoch", "batch", "target_tokens")
HELD_OUT = ("val", "eval")
PER_LABEL = ("_precision", "_recall", "_f1")


def _keys(rows: Sequence[dict[str, Any]], skip: Sequence[str] = NOT_PLOTTED) -> list[str]:
    """The numeric keys of the rows, in the order they first appear."""
    seen: dict[str, None] = {}
    for r in rows:
        seen |= {k: None for k in r if k not in skip and numeric(r, k) is not None}
    return list(seen)


def train_keys(runs: Sequence[RunData]) -> tuple[list[str], list[str]]:
    """(headline keys, the other keys) of the runs' train rows."""
    keys = _keys([r for run in runs for r in run.split("train")])
    components = [k for k in keys if k.startswith("reward/")]
    headline = [k for k in ("reward", *components, *HEADLINE[1:]) if k in keys]
    return headline, [k for k in keys if k not in headline]


def held_out_keys(runs: Sequence[RunData]) -> list[str]:
    """The numbers of the runs' held-out rows, without the per-label precision/recall/F1 and the weighted averages."""
    out: list[str] = []
    for run in runs:
        per_label = {f"{n}{m}" for n in run.label_names for m in PER_LABEL}
        for k in _keys([r for s in HELD_OUT for r in run.split(s)]):
            if k not in out and k not in per_label and not k.startswith("weighted_") and \
                    k not in ("macro_precision", "macro_recall"):
                out.append(k)
    return out


def series(runs: Sequence[RunData], splits: Sequence[str], key: str) -> list[Series]:
    """One series per run (and per decoding, where a run evaluated both greedy and sampled) of `key` over steps."""
    out = []
    for i, run in enumerate(runs):
        groups: dict[str, list[tuple[float, float]]] = {}
        for r in (r for r in run.rows if r.get("split") in splits):
            v = numeric(r, key)
            if v is not None:
                groups.setdefault(str(r.get("decoding") or ""), []).append((float(r.get("step", 0)), v))
        for j, (decoding, points) in enumerate(groups.items()):
            label = run.label + (f" ({decoding})" if decoding and decoding != "greedy" else "")
            out.append(Series(label, i, [p[0] for p in points], [p[1] for p in points], dashed=j > 0))
    return out


def plot_group(runs: Sequence[RunData], splits: Sequence[str], keys: Sequence[str]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of each key that some run logged."""
    out = []
    for key in keys:
        s = series(runs, splits, key)
        if s:
            out.append((key, line_plot(key, s, legend=len(runs) > 1)))  # which run a lone line is
    return out
