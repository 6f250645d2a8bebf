"""IMDb reward models with minilm-l6: pointwise sentiment (accuracy, AUC) and pairwise from star ratings.

Split: IMDb train, stratified 10% validation, seed 0 (as ../shared/data/README.md asks).
Pairs: two reviews whose ratings differ by at least 4 stars, the higher-rated one `chosen`;
training pairs use training reviews only, validation pairs validation reviews only.

    .venv/bin/python benchmarks/imdb_reward_models.py --mode pointwise --train-examples 4000
    .venv/bin/python benchmarks/imdb_reward_models.py --mode pairwise --train-pairs 3000 --val-pairs 1000
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from record import peak_rss_mib, record

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb" / "train.jsonl.gz"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["pointwise", "pairwise"], required=True)
    p.add_argument("--train-examples", type=int, default=0, help="pointwise: 0 = all 22,500 training reviews")
    p.add_argument("--train-pairs", type=int, default=3000)
    p.add_argument("--val-pairs", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. train.mixed_precision=bf16")
    p.add_argument("--runs-dir", default="/tmp/rewardtune-bench")
    p.add_argument("--out", default="benchmarks/results.jsonl")
    args = p.parse_args()
    if not DATA.exists():
        sys.exit(f"IMDb not found at {DATA}")

    from rewardtune.config import load_config
    from rewardtune.data import load_examples, split
    from rewardtune.pairs import make_pairs  # the rules `rewardtune data pairs` uses
    from rewardtune.train.reward_model import RMConfig, train_reward_model

    imdb = load_examples(DATA, keep_columns=["rating"])
    train, val = split(imdb, 0.1, seed=0, stratify=True)
    work = Path(args.runs_dir) / f"imdb-{args.mode}-{int(time.time())}"
    work.mkdir(parents=True)
    common = ["model.name=minilm-l6", f"train.max_length={args.max_length}", "train.truncation=head+tail",
              f"train.epochs={args.epochs}", f"train.lr={args.lr}", f"train.batch_size={args.batch_size}",
              "train.log_every=50", f"runs_dir={work}", "name=rm", *args.set]
    if args.mode == "pointwise":
        def dump(ex, path):
            path.write_text("".join(json.dumps({"text": t, "label": ex.label_names[y]}) + "\n"
                                    for t, y in zip(ex.texts, ex.labels)))
        # a seeded random subset: the file is ordered by label, so its head would be one class
        tr = train.subset(sorted(random.Random(0).sample(range(len(train)), args.train_examples))) if args.train_examples else train
        dump(tr, work / "train.jsonl")
        dump(val, work / "val.jsonl")
        cfg = load_config(RMConfig, None, common + [f"data.path={work / 'train.jsonl'}", f"data.val_path={work / 'val.jsonl'}",
                                                    "rm.mode=pointwise", "rm.positive_label=1", "train.best_metric=auc"])
        n_train = len(tr)
    else:
        for name, ex, n, seed in (("train", train, args.train_pairs, 0), ("val", val, args.val_pairs, 1)):
            rows = make_pairs(ex.texts, ex.columns["rating"], n, seed)
            (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = load_config(RMConfig, None, common + [f"data.path={work / 'train.jsonl'}", f"data.val_path={work / 'val.jsonl'}",
                                                    "rm.mode=pairwise"])
        n_train = args.train_pairs
    t = time.time()
    out = train_reward_model(cfg, show_progress=False)
    rows = [json.loads(line) for line in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    best_val = max((r for r in rows if r.get("split") == "val"),
                   key=lambda r: r.get("auc", r.get("pairwise_accuracy", 0)))
    res = {"task": f"imdb-rm-{args.mode}", "train_size": n_train, "val_size": len(val) if args.mode == "pointwise" else args.val_pairs,
           "wall_s": time.time() - t, "peak_rss_mib": peak_rss_mib(),
           "rm_dir": str(Path(out["run_dir"]) / "checkpoints" / "best"),
           **{k: best_val[k] for k in ("accuracy", "auc", "macro_f1", "pairwise_accuracy", "mean_margin") if k in best_val}}
    record(res, args.out)


if __name__ == "__main__":
    main()
