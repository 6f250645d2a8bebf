"""Real-log check of the off-policy estimators on the Open Bandit Dataset sample (../shared/data/bandit/obd).

The Bernoulli Thompson-sampling (BTS) policy's click rate is estimated from the uniform-random policy's log with
IPS, SNIPS and DR (algorithms/ope.py) and compared with BTS's on-policy click rate in its own log.

Target policy. BTS ignores the user context, so its choice is a distribution over items per position; it is
estimated from the BTS log itself as each item's share of that position's impressions (`--pi frequency`, default),
or from the logged propensities averaged per item and position, renormalised per position (`--pi propensity`).
Caveat: TS updates its posterior during the logging period, so both give its *time-averaged* action distribution;
the on-policy click rate averages over the same period, but users and items of the two logs' periods differ.

Reward model of DR: per-(item, position) click rate on the random log, shrunk towards the position's click rate with
a prior of `--prior` impressions, cross-fitted over 2 folds (each row's q̂ fitted without its fold). Only 38 of the
random log's 10,000 impressions are clicks, so intervals are wide; the truth's own binomial interval is printed too.

    .venv/bin/python benchmarks/bandit_obd.py [--pi frequency|propensity] [--prior 200] [--bootstrap 2000]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from record import record
from rewardtune.algorithms.ope import OffPolicyData, normal_interval
from rewardtune.bandit.evaluate import estimates
from rewardtune.data import read_table

OBD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bandit" / "obd"
ITEMS, POSITIONS = 80, 3


def load(policy: str) -> dict[str, torch.Tensor]:
    """item (N,), position 0..2 (N,), click (N,), propensity (N,) of one OBD log."""
    t = read_table(OBD / policy / "all.csv.gz")
    col = lambda name, kind: torch.tensor([kind(r[name]) for r in t.rows])  # noqa: E731
    return {"item": col("item_id", int), "pos": col("position", int) - 1, "click": col("click", float).double(),
            "prop": col("propensity_score", float).double()}


def target_policy(bts: dict[str, torch.Tensor], how: str) -> torch.Tensor:
    """π(item | position) (3, 80) of the BTS policy, from its own log."""
    cell = bts["pos"] * ITEMS + bts["item"]  # (N,)
    if how == "frequency":
        table = torch.bincount(cell, minlength=POSITIONS * ITEMS).double()
    else:  # mean logged propensity per cell
        total = torch.zeros(POSITIONS * ITEMS, dtype=torch.float64).index_add_(0, cell, bts["prop"])
        table = total / torch.bincount(cell, minlength=POSITIONS * ITEMS).clamp_min(1)
    table = table.reshape(POSITIONS, ITEMS)
    return table / table.sum(-1, keepdim=True)


def reward_model(log: dict[str, torch.Tensor], rows: torch.Tensor, prior: float) -> torch.Tensor:
    """q̂(item, position) (3, 80) from `rows` of the log: cell click rate shrunk to the position's rate."""
    cell = log["pos"][rows] * ITEMS + log["item"][rows]
    n = torch.bincount(cell, minlength=POSITIONS * ITEMS).double().reshape(POSITIONS, ITEMS)
    clicks = torch.zeros(POSITIONS * ITEMS, dtype=torch.float64).index_add_(0, cell, log["click"][rows])
    clicks = clicks.reshape(POSITIONS, ITEMS)
    pos_rate = clicks.sum(-1, keepdim=True) / n.sum(-1, keepdim=True)  # (3, 1)
    return (clicks + prior * pos_rate) / (n + prior)


def cross_fitted_q(log: dict[str, torch.Tensor], prior: float, seed: int = 0) -> torch.Tensor:
    """q̂(·, position_i) (N, 80) for each row, from the fold it is not in."""
    n = len(log["item"])
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % 2
    out = torch.empty(n, ITEMS, dtype=torch.float64)
    for k in (0, 1):
        q = reward_model(log, torch.nonzero(fold != k).squeeze(-1), prior)  # (3, 80)
        held = fold == k
        out[held] = q[log["pos"][held]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pi", choices=["frequency", "propensity"], default="frequency")
    ap.add_argument("--prior", type=float, default=200.0, help="DR reward model: pseudo-impressions at the position's rate")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--level", type=float, default=0.95)
    args = ap.parse_args()
    rand, bts = load("random"), load("bts")
    pi = target_policy(bts, args.pi)  # (3, 80)
    pi_rows = pi[rand["pos"]]  # (N, 80): π(·|position_i)
    q_hat = cross_fitted_q(rand, args.prior)  # (N, 80)
    target = pi_rows.gather(-1, rand["item"][:, None]).squeeze(-1)
    d = OffPolicyData(target / rand["prop"], rand["click"], q_hat.gather(-1, rand["item"][:, None]).squeeze(-1),
                      (pi_rows * q_hat).sum(-1))
    est = estimates(d, ["ips", "snips", "dr", "dm"], args.level, args.bootstrap, seed=0)
    truth = normal_interval(bts["click"], args.level)
    print(f"BTS on-policy click rate: {truth.value:.5f} [{truth.low:.5f}, {truth.high:.5f}] "
          f"({int(bts['click'].sum())} clicks / {len(bts['click'])}); random log: {rand['click'].mean():.5f} "
          f"({int(rand['click'].sum())} clicks)")
    print(f"{'estimator':9} {'value':>8} {'rel.err':>8}  {int(args.level * 100)}% normal interval   bootstrap     truth in")
    for name in ("ips", "snips", "dr", "dm"):
        e = est[name]
        rel = (e["value"] - truth.value) / truth.value
        inside = e["low"] <= truth.value <= e["high"]
        print(f"{name:9} {e['value']:8.5f} {rel:+8.1%}  [{e['low']:.5f}, {e['high']:.5f}]  "
              f"[{e['boot_low']:.5f}, {e['boot_high']:.5f}]  {'yes' if inside else 'no'}")
        record({"bench": "bandit_obd", "pi": args.pi, "prior": args.prior, "estimator": name, **e,
                "truth": truth.value, "truth_low": truth.low, "truth_high": truth.high, "relative_error": rel,
                "truth_in_interval": inside}, echo=False)
    w = est["_weights"]
    print(f"weights: mean {w['mean']:.3f}, max {w['max']:.1f}, effective sample size {w['ess']:.0f} of {w['n']:.0f}; "
          f"π from the BTS log by {args.pi}")
    if not math.isclose(w["mean"], 1.0, abs_tol=0.1):
        print("note: the mean weight is far from 1: π and the random log's positions disagree")


if __name__ == "__main__":
    main()
