"""Structured prediction benchmarks (issue 22): `sft`, `rl` from the pretrained encoder, and `sft` → `rl`, on SQuAD v1.1
(span policy) or a classification set (SemEval-2010 T8, Banking77, CLINC150, AG News), from the shipped configs.

One method per process (peak RSS is per method); `run_structured.sh` runs the three methods of a task in order, the
`sft-rl` run starting from the `sft` run's best checkpoint. Each result is one JSON line in results.jsonl.

    python benchmarks/structured_tasks.py --task squad --method sft --max-examples 300 --max-val 150 --seed 0
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from record import peak_rss_mib, record

# task → (sft config, rl config, the metric reported, the keys that subset the data)
TASKS = {
    "squad": ("squad-span-sft", "squad-span-rl", "f1", ("data.max_examples", "data.max_val_examples")),
    "semeval": ("semeval-re-sft", None, "semeval_macro_f1", ("data.max_examples", None)),
    "banking77": ("banking77-sft", None, "accuracy", ("data.max_examples", None)),
    "clinc150": ("clinc150-sft", "clinc150-rl-oos-cost", "in_scope_accuracy", ("data.max_examples", None)),
    "agnews": ("agnews-sft", None, "accuracy", ("data.max_examples", None)),
}
# classifier rl where no rl config ships: the exact expected-reward gradient with the indicator reward
CLASSIFIER_RL = ["policy=classifier", "rl.estimator=expected", "reward.functions=[indicator]"]


def overrides(args: argparse.Namespace, name: str) -> list[str]:
    train_key, val_key = TASKS[args.task][3]
    out = [f"{train_key}={args.max_examples}", f"train.epochs={args.epochs}", f"seed={args.seed}",
           f"data.seed={args.seed}", f"runs_dir={args.runs_dir}", f"name={name}", *args.set]
    if val_key:
        out.append(f"{val_key}={args.max_val}")
    return out


def run(args: argparse.Namespace) -> dict:
    from rewardtune.config import config_path, load_config

    sft_name, rl_name, metric, _ = TASKS[args.task]
    method = args.method + (f"-{args.tag}" if args.tag else "")
    name = f"{args.task}-{method}-s{args.seed}"
    init = Path(args.runs_dir) / f"{args.task}-sft-s{args.seed}" / "checkpoints" / "best"
    if args.method in ("sft", "sft-sft"):  # sft-sft: the control of sft-rl, more cross-entropy from the sft checkpoint
        command, config = "sft", sft_name
        extra = [f"model.name={init}", f"train.lr={args.rl_lr}"] if args.method == "sft-sft" else []
    else:
        command, config = "rl", rl_name or sft_name
        extra = [] if rl_name else CLASSIFIER_RL
        if args.method == "sft-rl":
            extra = [*extra, f"model.name={init}", f"train.lr={args.rl_lr}"]
    cls, train = trainer(args.task, command)
    cfg = load_config(cls, config_path(config), [*extra, *overrides(args, name)])
    t = time.time()
    out = train(cfg, show_progress=False)
    rows = [json.loads(x) for x in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("split") == "val"]
    summary = next(r for r in rows if r.get("split") == "summary")
    return {"bench": "structured", "task": args.task, "method": method, "seed": args.seed,
            "max_examples": args.max_examples, "max_val": args.max_val if TASKS[args.task][3][1] else "split",
            "epochs": args.epochs, "metric": metric, "best": max(r[metric] for r in val), "last": val[-1][metric],
            "start": val[0][metric] if val[0]["step"] == 0 else None,  # rl trainers evaluate their start model
            "last_val": val[-1],  # every metric of the last validation (SQuAD's EM beside F1, CLINC's oos recall)
            "train_examples_per_s": summary["train_examples_per_s"], "train_s": summary["train_s"],
            "wall_s": time.time() - t, "peak_rss_mib": peak_rss_mib(), "date": time.strftime("%Y-%m-%d"),
            "run_dir": out["run_dir"]}


def trainer(task: str, command: str):
    """(config class, train function) of a task's command."""
    if task == "squad":
        from rewardtune.train.span import train_span_rl, train_span_sft
        from rewardtune.train.span_config import SpanRLConfig, SpanSFTConfig

        return (SpanSFTConfig, train_span_sft) if command == "sft" else (SpanRLConfig, train_span_rl)
    from rewardtune.train.rl_classifier import RLClassifierConfig, train_rl_classifier
    from rewardtune.train.sft import SFTConfig, train_sft

    return (SFTConfig, train_sft) if command == "sft" else (RLClassifierConfig, train_rl_classifier)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--method", choices=["sft", "rl", "sft-rl", "sft-sft"], required=True)
    p.add_argument("--max-examples", type=int, default=0, help="training questions/examples, a seeded sample (0 = all)")
    p.add_argument("--max-val", type=int, default=0, help="SQuAD: validation questions, a seeded sample (0 = all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rl-lr", type=float, default=1e-5, help="learning rate of sft-rl and sft-sft (from the sft checkpoint)")
    p.add_argument("--runs-dir", default="runs/structured")
    p.add_argument("--tag", default="", help="a variant's name, added to the method (run folder and result row)")
    p.add_argument("--set", nargs="*", default=[], help="more key=value overrides")
    record(run(p.parse_args()))


if __name__ == "__main__":
    main()
