"""Off-policy evaluation of a classifier policy on a bandit log: IPS, SNIPS and DR values with intervals.

Used by `rewardtune ope` and by `rewardtune bandit train` (its validation log picks the best checkpoint). The
target policy is what would be deployed: `greedy` (the top label, a deterministic policy: w_i = 1[a_i = argmax]
/ p_i) or `softmax` (labels sampled from the classifier's probabilities).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..algorithms.ope import (OPE_ESTIMATORS, OffPolicyData, bootstrap_interval, effective_sample_size,
                              importance_weights, normal_interval)
from ..config import ConfigError
from .direct import cross_fit, embed
from .log import BanditLog, LogColumns, load_log


def greedy_policy(probs: torch.Tensor) -> torch.Tensor:
    """π(a|x) = 1[a = argmax p(·|x)]: (N, A) → (N, A)."""
    return torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).double()


def softmax_policy(probs: torch.Tensor) -> torch.Tensor:
    """π(a|x) = p(a|x): the classifier sampled."""
    return probs.double()


TARGET_POLICIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"greedy": greedy_policy, "softmax": softmax_policy}


def restrict(probs: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    """The classifier's probabilities renormalised over each row's candidate actions: (N, A), mask (N, A) or None."""
    if candidates is None:
        return probs
    masked = probs.double() * candidates
    return masked / masked.sum(-1, keepdim=True).clamp_min(1e-300)


def off_policy_data(log: BanditLog, pi: torch.Tensor, q_hat: torch.Tensor | None, clip: float = 0.0) -> OffPolicyData:
    """The estimators' inputs from the log and the target policy's table π(·|x_i) (N, A) (and q̂ (N, A))."""
    target = pi.gather(-1, log.actions[:, None]).squeeze(-1)  # (N,) π(a_i|x_i)
    w = importance_weights(target, log.propensities, clip)  # (N,)
    if q_hat is None:
        return OffPolicyData(w, log.rewards)
    q_logged = q_hat.gather(-1, log.actions[:, None]).squeeze(-1)  # (N,)
    return OffPolicyData(w, log.rewards, q_logged, (pi * q_hat).sum(-1))


def estimates(d: OffPolicyData, names: Sequence[str], level: float = 0.95, bootstrap: int = 0,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """name → {value, stderr, low, high} (normal interval at `level`), plus boot_low/boot_high with `bootstrap`
    resamples; and `ess`, the weights' effective sample size, under the key '_weights'."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        fn = OPE_ESTIMATORS[name]
        e = normal_interval(fn(d), level)
        out[name] = {"value": e.value, "stderr": e.stderr, "low": e.low, "high": e.high}
        if bootstrap:
            out[name]["boot_low"], out[name]["boot_high"] = bootstrap_interval(d, fn, bootstrap, seed, level)
    out["_weights"] = {"ess": effective_sample_size(d.w), "mean": d.w.mean().item(), "max": d.w.max().item(),
                       "n": float(d.w.numel())}
    return out


def flat_metrics(est: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'snips': v, 'snips_low': ..., 'weights_ess': ...}: one metrics.jsonl row."""
    out: dict[str, float] = {}
    for name, row in est.items():
        for key, v in row.items():
            out[f"weights_{key}" if name == "_weights" else (name if key == "value" else f"{name}_{key}")] = v
    return out


def format_estimates(est: dict[str, dict[str, float]], level: float, truth: float | None = None) -> str:
    """A small table: estimator, value, standard error, interval (and the bootstrap one), and, given the true
    value, whether the interval holds it."""
    lines = [f"{'estimator':9} {'value':>8} {'stderr':>8}  {int(level * 100)}% interval" +
             ("        truth in it" if truth is not None else "")]
    for name, row in est.items():
        if name == "_weights":
            continue
        line = f"{name:9} {row['value']:8.4f} {row['stderr']:8.4f}  [{row['low']:.4f}, {row['high']:.4f}]"
        if "boot_low" in row:
            line += f" bootstrap [{row['boot_low']:.4f}, {row['boot_high']:.4f}]"
        if truth is not None:
            line += f"  {'yes' if row['low'] <= truth <= row['high'] else 'no'}"
        lines.append(line)
    w = est["_weights"]
    lines.append(f"weights: mean {w['mean']:.3f} (1 in expectation), max {w['max']:.2f}, effective sample size "
                 f"{w['ess']:.0f} of {w['n']:.0f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class OPEJob:
    """`rewardtune ope`: which policy, which log, which estimates."""

    checkpoint: str
    log: str
    columns: LogColumns = LogColumns()
    estimators: tuple[str, ...] = ("ips", "snips", "dr")
    policy: str = "greedy"
    clip: float = 0.0
    level: float = 0.95
    bootstrap: int = 0
    seed: int = 0
    dr_l2: float = 1.0
    batch_size: int = 64


def evaluate_checkpoint(job: OPEJob) -> dict[str, Any]:
    """The checkpoint's value on the log by each estimator. The log is read and checked against the checkpoint's
    label set before the model loads; DR's q̂ reads the checkpoint's own encoder, cross-fitted on the log."""
    from ..eval import predict
    from ..models import load_trained_classifier

    unknown = sorted(set(job.estimators) - set(OPE_ESTIMATORS))
    if unknown or job.policy not in TARGET_POLICIES:
        raise ConfigError(f"estimators {unknown} / policy {job.policy!r}: choose estimators from "
                          f"{', '.join(OPE_ESTIMATORS)} and a policy from {', '.join(TARGET_POLICIES)}")
    meta_file = Path(job.checkpoint) / "rewardtune.json"
    if not meta_file.exists():
        raise ConfigError(f"{job.checkpoint}: no rewardtune.json; give a checkpoint folder written by rewardtune "
                          "(e.g. runs/NAME/checkpoints/best)")
    meta = json.loads(meta_file.read_text())
    log = load_log(job.log, job.columns, meta["label_names"])
    model, tok = load_trained_classifier(job.checkpoint)
    max_length, truncation = meta.get("max_length", 128), meta.get("truncation", "head")
    probs = restrict(predict(model, tok, log.texts, max_length, truncation, job.batch_size).double(), log.candidates)
    pi = TARGET_POLICIES[job.policy](probs)  # (N, A)
    q_hat = None
    if {"dr", "dm"} & set(job.estimators):
        feats = embed(model, tok, log.texts, max_length, job.batch_size)
        q_hat = cross_fit(feats, log.actions, log.rewards, len(log.action_names), job.dr_l2, seed=job.seed)
    est = estimates(off_policy_data(log, pi, q_hat, job.clip), job.estimators, job.level, job.bootstrap, job.seed)
    return {"checkpoint": job.checkpoint, "log": log.source, "rows": len(log), "policy": job.policy,
            "level": job.level, "estimates": est}
