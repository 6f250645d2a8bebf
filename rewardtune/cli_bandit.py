"""Commands for logged bandit feedback: `rewardtune bandit train|convert` and `rewardtune ope`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli_config import config_args, load_command_config


def cmd_bandit_train(args: argparse.Namespace) -> None:
    from .train.bandit import BanditConfig, train_bandit

    result = train_bandit(load_command_config(BanditConfig, args, "bandit train"))
    print(json.dumps(result, indent=2))
    if result.get("signal"):  # preempted: 128 + signal number, as `rl` and `sft` exit
        import signal

        raise SystemExit(128 + int(getattr(signal, result["signal"])))


def cmd_bandit_convert(args: argparse.Namespace) -> None:
    """A labelled file → a bandit log under a logging classifier with exploration (bandit/convert.py)."""
    from .bandit.convert import convert
    from .data import load_examples
    from .eval import predict
    from .models import load_trained_classifier

    ex = load_examples(args.data, args.text_column, args.label_column)  # read and checked before the model loads
    if args.max_rows and args.max_rows < len(ex):
        ex = ex.subset(range(args.max_rows))
    model, tok = load_trained_classifier(args.logger)
    meta = json.loads((Path(args.logger) / "rewardtune.json").read_text())
    probs = predict(model, tok, ex.texts, args.max_length or meta.get("max_length", 128), meta.get("truncation", "head"))
    info = convert(ex, probs, meta["label_names"], args.out, args.exploration, args.temperature, args.epsilon, args.seed)
    print(json.dumps({"logger": args.logger, "data": ex.source, "exploration": args.exploration,
                      "temperature": args.temperature, "epsilon": args.epsilon, "seed": args.seed, **info}, indent=2))


def cmd_ope(args: argparse.Namespace) -> None:
    """IPS/SNIPS/DR estimates of a checkpoint's value on a log, with intervals (bandit/evaluate.py)."""
    from .bandit.evaluate import OPEJob, evaluate_checkpoint, format_estimates
    from .bandit.log import LogColumns

    cols = LogColumns(args.text_column, args.action_column, args.reward_column, args.propensity_column,
                      args.candidates_column)
    job = OPEJob(args.checkpoint, args.log, cols, tuple(args.estimators), args.policy, args.clip, args.level,
                 args.bootstrap, args.seed, args.dr_l2)
    out = evaluate_checkpoint(job)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['checkpoint']} ({out['policy']} policy) on {out['log']} ({out['rows']} rows)")
    print(format_estimates(out["estimates"], out["level"]))


def _log_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default="text")
    p.add_argument("--action-column", default="action")
    p.add_argument("--reward-column", default="reward")
    p.add_argument("--propensity-column", default="propensity")
    p.add_argument("--candidates-column", default="", help="each row's candidate actions ('' = all)")


def add_commands(sub: Any) -> None:
    """`bandit train`, `bandit convert` and `ope` on the top-level parser's subcommands."""
    bandit = sub.add_parser("bandit", help="learn a classifier policy from logged bandit feedback; make such logs")
    bandit = bandit.add_subparsers(dest="sub", required=True)
    p = bandit.add_parser("train", help="off-policy learning from a log (bandit.estimator=ips|snips|dr|banditnet)")
    config_args(p)
    p.set_defaults(func=cmd_bandit_train)
    p = bandit.add_parser("convert", help="a labelled file -> a bandit log sampled by a logging classifier "
                                          "(reward 1 for the right label, propensity recorded)")
    p.add_argument("logger", help="the logging policy: a classifier checkpoint, e.g. runs/weak/checkpoints/best")
    p.add_argument("--data", required=True, help="labelled file (text, label)")
    p.add_argument("--out", required=True, help="the log to write (JSON lines)")
    p.add_argument("--exploration", choices=["softmax", "epsilon"], default="softmax")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax: μ ∝ p^(1/τ)")
    p.add_argument("--epsilon", type=float, default=0.1, help="epsilon: μ = (1-ε)·greedy + ε/A")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled actions")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-rows", type=int, default=0, help="the file's first N rows (0 = all)")
    p.add_argument("--max-length", type=int, default=0, help="0 = as the logger was trained")
    p.set_defaults(func=cmd_bandit_convert)
    p = sub.add_parser("ope", help="off-policy evaluation: IPS/SNIPS/DR value of a checkpoint on a log, "
                                   "with confidence intervals")
    p.add_argument("checkpoint", help="a classifier checkpoint, e.g. runs/bandit/checkpoints/best")
    p.add_argument("--log", required=True, help="logged feedback (text, action, reward, propensity)")
    p.add_argument("--estimators", nargs="+", default=["ips", "snips", "dr"], help="of: ips snips dr dm")
    p.add_argument("--policy", choices=["greedy", "softmax"], default="greedy", help="the policy valued")
    p.add_argument("--clip", type=float, default=0.0, help="weight clipping M (0 = none)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level")
    p.add_argument("--bootstrap", type=int, default=0, help="also a percentile interval from N resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of DR's cross-fitting folds")
    p.add_argument("--dr-l2", type=float, default=1.0, help="ridge penalty of DR's reward model")
    p.add_argument("--json", action="store_true")
    _log_columns(p)
    p.set_defaults(func=cmd_ope)
