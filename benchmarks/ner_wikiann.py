"""NER on a seeded subset of WikiANN-en: `sft`, `rl` from the pretrained encoder, and `sft` → `rl`, each reporting
entity-level micro F1 on a seeded subset of dev, training examples/s and this process's peak RSS.

Run from the repository root, one method per process (peak memory per method); `sft-rl` starts from the best
checkpoint of the `sft` run of the same --prefix, so run `sft` first (benchmarks/ner_wikiann.sh runs all three):
    python benchmarks/ner_wikiann.py --method sft --train 2000 --dev 1000
Each result is appended to benchmarks/results.jsonl with its command.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from record import peak_rss_mib, record

from rewardtune.config import load_config
from rewardtune.train.rl_tagger import TaggerRLConfig, train_rl_tagger
from rewardtune.train.tagger import TaggerSFTConfig, train_sft_tagger


# --dataset → its folder under ../shared/data/ner (the tag set comes from the files: WikiANN 3 types, WNUT-17 6)
DATASETS = {"wikiann-en": "wikiann-en", "wnut17": "wnut17"}


def overrides(args: argparse.Namespace, name: str, lr: float) -> list[str]:
    ner = Path("..") / "shared" / "data" / "ner" / DATASETS[args.dataset]
    return [f"data.path={ner / 'train.jsonl.gz'}", f"data.val_path={ner / 'dev.jsonl.gz'}",
            f"data.max_examples={args.train}", f"data.max_val_examples={args.dev}", f"data.seed={args.seed}",
            f"seed={args.seed}", f"train.lr={lr}", f"train.epochs={args.epochs}", f"runs_dir={args.runs}",
            f"name={args.prefix}-{name}", "train.log_every=20"]


def run(args: argparse.Namespace) -> dict:
    """One method's run → its summary (best dev F1, examples/s, seconds)."""
    t = time.time()
    sft_best = Path(args.runs) / f"{args.prefix}-sft" / "checkpoints" / "best"
    if args.method in ("sft", "sft-sft"):  # sft-sft: the control of sft-rl, as many more epochs of cross-entropy
        more = [f"model.name={sft_best}"] if args.method == "sft-sft" else []
        lr = args.rl_lr if args.method == "sft-sft" else args.lr
        cfg = load_config(TaggerSFTConfig, "rewardtune/configs/wikiann-tagger-sft.yaml",
                          overrides(args, args.method, lr) + more)
        out = train_sft_tagger(cfg, show_progress=False)
    else:
        extra = [f"rl.samples={args.samples}", f"rl.baseline={args.baseline}"]
        if args.method == "sft-rl":
            extra.append(f"model.name={sft_best}")
        lr = args.rl_lr if args.method == "sft-rl" else args.lr
        cfg = load_config(TaggerRLConfig, "rewardtune/configs/wikiann-tagger-rl.yaml",
                          overrides(args, args.method, lr) + extra)
        out = train_rl_tagger(cfg, show_progress=False)
    rows = [json.loads(line) for line in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if r.get("split") == "val"]
    val = vals[-1]
    summary = [r for r in rows if r.get("split") == "summary"][-1]
    return {"bench": "ner_wikiann", "method": args.method, "train_sentences": args.train, "dev_sentences": args.dev,
            "seed": args.seed, "epochs": args.epochs, "dataset": args.dataset, "dev_f1": val["f1"],
            "dev_best_f1": max(r["f1"] for r in vals), "dev_macro_f1": val["macro_f1"],
            "dev_token_accuracy": val["token_accuracy"], **{k: val[k] for k in val if k.startswith("f1/")},
            "train_examples_per_s": summary["train_examples_per_s"], "train_s": summary["train_s"],
            "wall_s": time.time() - t, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=["sft", "rl", "sft-rl", "sft-sft"], required=True)
    p.add_argument("--train", type=int, default=2000, help="seeded subset of WikiANN-en train (sentences)")
    p.add_argument("--dev", type=int, default=1000, help="seeded subset of WikiANN-en dev (sentences)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-5, help="sft, and rl from the pretrained encoder")
    p.add_argument("--rl-lr", type=float, default=1e-5, help="rl from the sft checkpoint")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--baseline", default="rloo", choices=["rloo", "greedy", "none"])
    p.add_argument("--runs", default="runs/bench-ner")
    p.add_argument("--prefix", default="wikiann")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="wikiann-en")
    record(run(p.parse_args()))


if __name__ == "__main__":
    main()
