"""How a command of the command line finds, loads and describes its config: `--config FILE|NAME`, `--resume`,
`key=value` overrides, `--help-config`, and which config `rl` takes (`policy`).

Apart from cli.py so that the commands in other modules (quickstart.py) and the parser share one way of loading.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import ConfigError, config_path, describe, load_config

# The classifier's built-in reward names (train/rl_classifier.py keeps them inside its `setup_reward`, so they are
# listed here for the help; tests/test_cli_help.py checks them against its "unknown reward" message). The causal
# LM's are the keys of train/gen_setup.BUILTIN_REWARDS, read when the help is printed.
CLASSIFIER_REWARDS = ("indicator", "cost_matrix")
POLICY_KINDS = ("classifier", "causal-lm", "seq2seq", "tagger", "span")
REWARDS_KEY = {kind: "reward.functions" for kind in POLICY_KINDS}  # the key naming the reward functions


def reward_note(kind: str) -> str:
    """What the reward functions' key (`REWARDS_KEY`) takes under policy `kind`, for `--help-config`."""
    return f"built-ins: {', '.join(builtin_rewards(kind))}; or rm:FOLDER (a reward model), module:function"


def builtin_rewards(kind: str) -> tuple[str, ...]:
    """The built-in reward names of policy `kind` (the generative ones imported only when asked: heavy imports)."""
    if kind in ("causal-lm", "seq2seq"):
        from .train.gen_setup import BUILTIN_REWARDS

        return tuple(BUILTIN_REWARDS)
    if kind == "tagger":
        from .train.rl_tagger import REWARDS

        return tuple(REWARDS)
    if kind == "span":
        from .train.span_config import SPAN_REWARDS

        return SPAN_REWARDS
    return CLASSIFIER_REWARDS


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file, or the name of a shipped config (`rewardtune configs list`)")
    p.add_argument("--help-config", action="store_true",
                   help="list every config key with the value a run would use (its default, unless --config or "
                        "overrides set it), its doc, and the values a choice field takes")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest complete checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.path=train.jsonl")


def prepare_args(args: argparse.Namespace) -> None:
    """`--resume RUN_DIR` → its config.yaml and overrides; `--config NAME` → the shipped file. Idempotent."""
    _resume_args(args)
    if args.config:
        args.config = str(config_path(args.config))


def _resume_args(args: argparse.Namespace) -> None:
    """`--resume RUN_DIR` = its own config.yaml + your overrides + ckpt.resume=auto in that folder."""
    if not getattr(args, "resume", None):
        return
    run = Path(args.resume)
    if args.config:
        raise ConfigError("give --resume or --config, not both: a resumed run uses its own config.yaml")
    if not (run / "config.yaml").exists():
        raise ConfigError(f"--resume {run}: no config.yaml there; is it a run folder (runs/<name>)?")
    args.config = str(run / "config.yaml")
    # A pause (ckpt.stop_after) is for the invocation that asked for it, not for every resumption.
    args.overrides = ["ckpt.stop_after=0", *args.overrides, "ckpt.resume=auto", f"runs_dir={run.parent}",
                      f"name={run.name}"]
    args.resume = None


def load_command_config(cls: type, args: argparse.Namespace, command: str, notes: dict[str, str] | None = None) -> Any:
    """The config `command` runs with; with `--help-config`, print it instead and exit 0.

    The help prints the values of the very config the run would get (the class's defaults, then --config, then the
    overrides), so it can never show another command's defaults."""
    prepare_args(args)
    cfg = load_config(cls, args.config, args.overrides)
    if args.help_config:
        given = " + ".join(([f"--config {args.config}"] if args.config else []) + (["overrides"] if args.overrides else []))
        print(f"# rewardtune {command} ({cls.__name__}): key = value  # doc; values are the defaults"
              + (f" + {given}" if given else ""))
        print("\n".join(describe(cls, defaults=cfg, notes=notes)))
        raise SystemExit(0)
    return cfg


def policy_kind(args: argparse.Namespace) -> str:
    """`policy` from the overrides, else from the YAML file, else 'classifier'."""
    import yaml

    prepare_args(args)
    for item in reversed(args.overrides):
        if item.startswith("policy="):
            return item.split("=", 1)[1].strip()
    if args.config:
        try:
            data = yaml.safe_load(open(args.config, encoding="utf-8")) or {}
        except (OSError, ValueError, yaml.YAMLError):
            data = {}  # load_config reports the problem with its line number
        if isinstance(data, dict) and data.get("policy"):
            return str(data["policy"])
    return "classifier"
