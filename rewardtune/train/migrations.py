"""Checkpoints written by earlier versions of generative RL, resumed as they ran.

A checkpoint's state carries a "format" number; a resumed run whose checkpoint is older than STATE_FORMAT goes
through `go_on_as_before`, so that what changed since does not silently change a run half-way.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

from ..config import dump_config
from ..run import RunContext
from .gen_config import GenRLConfig

# 2: PPO follows rl.kl_mode and rl.kl_estimator; held-out rewards are raw. Checkpoints without "format" are 1.
STATE_FORMAT = 2


def go_on_as_before(run: RunContext, cfg: GenRLConfig, held: Any) -> GenRLConfig:
    """A checkpoint without a state format (written before this code) resumes as it ran.

    PPO whose config says rl.kl_mode=loss (the old default, which PPO ignored: it always put the k1 KL in the
    reward) goes on with k1 in the reward, and the run's config.yaml is rewritten to say so (the change recorded in
    config_changes.jsonl), so later checkpoints and resumptions keep it. Held-out rewards, normalised then and raw
    now, are not compared with a best kept on the old scale: that policy is moved aside, not lost (`held`: the
    run's `heldout.HeldOut`)."""
    rl = cfg.rl
    if rl.algorithm == "ppo" and rl.kl_mode == "loss":
        cfg = replace(cfg, rl=replace(rl, kl_mode="reward", kl_estimator="k1"))
        if run.is_main:
            (run.dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
            with open(run.dir / "config_changes.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"time": time.time(), "why": "PPO from before rl.kl_mode applied to it", "changed": {
                    "rl.kl_mode": [rl.kl_mode, "reward"], "rl.kl_estimator": [rl.kl_estimator, "k1"]}}) + "\n")
        run.print("note: this PPO run started when PPO always put the k1 KL in the reward; it goes on that way "
                  "(config.yaml now says rl.kl_mode=reward, rl.kl_estimator=k1)")
    if cfg.reward.normalize != "none" and cfg.eval.best_metric == "reward":
        old, aside = run.checkpoints / "best", run.checkpoints / "best-normalised-reward"
        if run.is_main and old.is_dir() and not aside.exists():  # (exists: moved by an earlier, aborted resumption)
            old.rename(aside)
        held.best = float("-inf") if cfg.eval.best_mode == "max" else float("inf")
        run.print("note: held-out rewards were normalised when this run started and are raw now (its eval_start is on "
                  "the old scale); the best policy so far is in checkpoints/best-normalised-reward, and "
                  "checkpoints/best starts again")
    return cfg
