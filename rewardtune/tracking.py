"""Experiment trackers (`report_to`): every metrics.jsonl row also goes to TensorBoard, W&B, MLflow or trackio
through accelerate's trackers, and the progress bar shows the row's reward, KL and loss.

`RunContext.log` is the one place a row is written, so it is the one place it is forwarded: nothing is logged
twice and no trainer knows about trackers. Where each tracker writes, offline by default where it can:
- tensorboard: `<run>/tensorboard/`;
- mlflow: a file store `<run>/mlruns/` unless `MLFLOW_TRACKING_URI` names another;
- wandb: `<run>/wandb/`; online or offline as `WANDB_MODE` says (`offline` needs no network or account);
- trackio: its local database (`TRACKIO_DIR`, default `~/.cache/huggingface/trackio`).
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Iterable

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}  # name → module
PROJECT = "rewardtune"  # the W&B / MLflow / trackio project; each run is named after its folder
BAR_KEYS = ("reward", "kl", "loss")  # what the progress bar shows of a train row


def check_report_to(names: Iterable[str]) -> tuple[str, ...]:
    """The trackers asked for, each known and installed; otherwise a ConfigError naming the fix (raised before the
    run folder is made)."""
    from .config import ConfigError

    names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))  # no tracker twice
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(TRACKERS)} (e.g. report_to=[tensorboard])")
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        raise ConfigError(f"report_to: {', '.join(missing)} is not installed; "
                          f"pip install {' '.join(TRACKERS[n] for n in missing)}  (or 'rewardtune[tracking]')")
    return names


def accelerator_settings(names: tuple[str, ...], run_dir: Path) -> dict[str, Any]:
    """Accelerator(...) keyword arguments that attach the trackers, logging under the run folder."""
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": list(names), "project_config": ProjectConfiguration(
        project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))}


def start_trackers(accelerator: Any, names: tuple[str, ...], run_dir: Path, config: dict[str, Any]) -> None:
    """Open one tracker run per tracker (main process only, as accelerate does), with the flat config as its
    hyper-parameters."""
    if not names:
        return
    if "mlflow" in names and not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        # MLflow 3 refuses a file store unless told it is wanted: it is, a folder needs no server or database.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
    name = run_dir.name
    accelerator.init_trackers(PROJECT, config=flat_config(config), init_kwargs={
        "wandb": {"name": name, "dir": str(run_dir)}, "mlflow": {"run_name": name}, "trackio": {"name": name}})


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'rl': {'lr': 1e-3}} → {'rl.lr': 1e-3}; lists become text (TensorBoard's hyper-parameters take scalars only)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out |= flat_config(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def tracker_values(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row as tracker metrics: each number named `<split>/<key>` (`train/reward`, `val/accuracy`),
    sampled held-out evaluations apart from greedy ones (`eval_sampled/reward`); text and lists left out. A key's own
    `/` becomes `.` (`train/reward.lexicon`): MLflow's file store keeps a metric per file, and `train/reward` could
    not be both a file and the folder of `train/reward/lexicon`."""
    split = str(row.get("split", "")).replace(" ", "_")
    if row.get("decoding", "greedy") != "greedy":
        split += "_sampled"
    prefix = f"{split}/" if split else ""
    return {prefix + k.replace("/", "."): float(v) for k, v in row.items()
            if k not in ("step", "split", "decoding") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def bar_postfix(row: dict[str, Any]) -> dict[str, str]:
    """The reward, KL and loss of a train row, short, for the progress bar."""
    if row.get("split") != "train":
        return {}
    return {k: _short(row[k]) for k in BAR_KEYS if isinstance(row.get(k), (int, float))}


def _short(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)
