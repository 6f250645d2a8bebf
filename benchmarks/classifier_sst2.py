"""SST-2 (train → dev) with minilm-l6: rewardtune sft / rl estimators and HF Trainer, same settings.

Usage (one JSON line per method is appended to --out; see BENCHMARKS.md for the numbers):
    .venv/bin/python benchmarks/classifier_sst2.py --methods sft,trainer --epochs 1 --out benchmarks/results.jsonl

Throughput is training examples per second, measured over the training loop only (evaluation
excluded for both). Peak memory is the process's peak RSS (ru_maxrss), so run one method per process
(`--methods` with one name) when comparing memory.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from record import peak_rss_mib, record

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def common(args: argparse.Namespace, name: str) -> list[str]:
    return ["model.name=minilm-l6", f"data.path={DATA / 'train.tsv'}", f"data.val_path={DATA / 'dev.tsv'}",
            "data.text_column=sentence", f"data.max_examples={args.max_examples}",
            f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
            "train.max_length=66", "train.log_every=200", f"runs_dir={args.runs_dir}", f"name={name}-{int(time.time())}",
            *args.set]


def run_rewardtune(method: str, args: argparse.Namespace) -> dict:
    from rewardtune.config import load_config
    from rewardtune.train.rl_classifier import RLClassifierConfig, train_rl_classifier
    from rewardtune.train.sft import SFTConfig, train_sft

    if method == "sft":
        out = train_sft(load_config(SFTConfig, None, common(args, method)), show_progress=False)
    else:
        est = method.split("-", 1)[1]
        out = train_rl_classifier(load_config(RLClassifierConfig, None, common(args, method) + [f"rl.estimator={est}"]),
                                  show_progress=False)
    rows = [json.loads(line) for line in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("split") == "val"]
    best = max(val, key=lambda r: r["accuracy"])
    summary = [r for r in rows if r.get("split") == "summary"][-1]
    return {"accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "train_s": summary["train_s"],
            "examples_per_s": summary["train_examples_per_s"]}


def run_trainer(args: argparse.Namespace) -> dict:
    """HF Trainer + AutoModelForSequenceClassification, same model, data, batch, lr, epochs, max length."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from rewardtune.data import load_examples
    from rewardtune.eval import evaluate_classifier
    from rewardtune.models import load_classifier

    train = load_examples(DATA / "train.tsv", "sentence")
    if args.max_examples:
        train = train.subset(range(args.max_examples))
    dev = load_examples(DATA / "dev.tsv", "sentence", labels=train.label_names)
    model, tok = load_classifier("minilm-l6", 2, dict(enumerate(train.label_names)))

    def ds(ex):
        enc = tok(ex.texts, truncation=True, max_length=66)
        return [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(enc["input_ids"], enc["attention_mask"], ex.labels)]

    steps = -(-len(train) // args.batch_size) * args.epochs  # same warm-up as rewardtune (6% of steps)
    targs = TrainingArguments(output_dir=str(Path(args.runs_dir) / "trainer"), per_device_train_batch_size=args.batch_size,
                              per_device_eval_batch_size=128, learning_rate=args.lr, num_train_epochs=args.epochs,
                              weight_decay=0.01, warmup_steps=int(0.06 * steps), lr_scheduler_type="linear", max_grad_norm=1.0,
                              train_sampling_strategy="group_by_length", save_strategy="no", eval_strategy="no", report_to=[],
                              logging_steps=200, use_cpu=True, disable_tqdm=True, seed=0, bf16=args.bf16)
    trainer = Trainer(model=model, args=targs, train_dataset=ds(train), data_collator=DataCollatorWithPadding(tok))
    t = time.time()
    trainer.train()
    train_s = time.time() - t
    # Evaluated by the same code as rewardtune's runs (Trainer.predict would reorder rows: its eval
    # sampler also groups by length when train_sampling_strategy="group_by_length").
    metrics = evaluate_classifier(trainer.model, tok, dev.texts, dev.labels, dev.label_names, 66).metrics
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "train_s": train_s,
            "examples_per_s": len(train) * args.epochs / train_s}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="sft,trainer", help="comma list of sft, rl-expected, rl-reinforce, rl-value, trainer")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-examples", type=int, default=0, help="0 = all 67,349 training sentences")
    p.add_argument("--runs-dir", default="/tmp/rewardtune-bench")
    p.add_argument("--out", default="benchmarks/results.jsonl")
    p.add_argument("--set", nargs="*", default=[], help="extra rewardtune overrides, e.g. train.mixed_precision=bf16")
    p.add_argument("--bf16", action="store_true", help="Trainer: bf16 autocast (compare with train.mixed_precision=bf16)")
    args = p.parse_args()
    if not DATA.exists():
        sys.exit(f"SST-2 not found at {DATA}")
    for method in args.methods.split(","):
        res = run_trainer(args) if method == "trainer" else run_rewardtune(method, args)
        res |= {"method": method, "overrides": args.set, "trainer_bf16": args.bf16, "task": "sst2", "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "max_examples": args.max_examples, "peak_rss_mib": peak_rss_mib()}
        record(res, args.out)


if __name__ == "__main__":
    main()
