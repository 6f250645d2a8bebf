"""Command line: `rewardtune <command>`. Each command is a small function over a config."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from .config import ConfigError, DataSettings, describe, doc, load_config, nested


@dataclass(frozen=True)
class QuickstartConfig:
    """The main job on embedded defaults: bundled models + demo data."""

    data: DataSettings = nested(DataSettings, "labelled demo reviews (classifier stages)")
    prompts: str = doc("demo-prompts", "prompt file for the generation stage")
    classifier: str = doc("minilm-l6", "encoder for the classifier and reward model")
    policy: str = doc("smollm2-135m-instruct", "causal LM for generation")
    max_new_tokens: int = doc(20, "tokens generated per demo prompt")
    runs_dir: str = doc("runs", "where run folders are created")
    name: str = doc("", "run name; empty = quickstart-<timestamp>")
    seed: int = doc(0, "global seed")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and doc")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.path=train.jsonl")


def _load(cls: type, args: argparse.Namespace) -> Any:
    if args.help_config:
        print("\n".join(describe(cls)))
        raise SystemExit(0)
    return load_config(cls, args.config, args.overrides)


# ---------------------------------------------------------------- commands
def cmd_quickstart(args: argparse.Namespace) -> None:
    import torch

    from . import data as D
    from . import models as M
    from .run import start_run

    cfg: QuickstartConfig = _load(QuickstartConfig, args)
    cfg = replace(cfg, name=cfg.name or time.strftime("quickstart-%Y%m%d-%H%M%S"))  # resolved name in config.yaml
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed)
    run.print(f"[1/4] run folder {run.dir} (config.yaml written)")
    for name in (cfg.classifier, cfg.policy):
        t = time.time()
        path = M.prepare(name) if name in M.ALIASES else M.resolve(name)
        run.print(f"[2/4] model {name}: ready at {path} ({time.time() - t:.1f} s)")
    ex = D.load_examples(cfg.data.path, cfg.data.text_column, cfg.data.label_column, cfg.data.labels)
    train, val = D.split(ex, cfg.data.val_fraction, cfg.data.seed, cfg.data.stratify)
    prompts = D.load_examples(cfg.prompts, text_column="prompt", label_column=None)
    counts = {n: ex.labels.count(i) for i, n in enumerate(ex.label_names)}
    run.print(f"[3/4] data {ex.source}: {len(ex)} examples {counts}, split {len(train)} train / {len(val)} val; "
              f"{len(prompts)} prompts")
    run.log(0, examples=len(ex), train=len(train), val=len(val), prompts=len(prompts))

    clf, tok = M.load_classifier(cfg.classifier, len(ex.label_names), dict(enumerate(ex.label_names)))
    with torch.no_grad():
        logits = clf(**tok(val.texts[:8], padding=True, truncation=True, return_tensors="pt")).logits
    run.print(f"[4/4] {cfg.classifier} classifier (untrained head) logits on 8 val texts: shape {tuple(logits.shape)}")
    lm, ltok = M.load_causal_lm(cfg.policy)
    batch = ltok(prompts.texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = lm.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=False)
    for prompt, ids in zip(prompts.texts[:2], out[:, batch["input_ids"].shape[1]:]):
        run.print(f"      {cfg.policy} greedy: {prompt!r} -> {ltok.decode(ids, skip_special_tokens=True)!r}")
    run.print("Training stages (sft, rl, rm) are not implemented yet; see README 'Status'.")


def cmd_models_list(args: argparse.Namespace) -> None:
    from .models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'alias':24} {'kind':10} {'prepared':9} {'size':>9}  path")
    for r in rows:
        size = f"{r['bytes'] / 2**20:.0f} MiB" if r["bytes"] else "-"
        print(f"{r['name']:24} {r['kind']:10} {'yes' if r['prepared'] else 'no':9} {size:>9}  {r['path']}")


def cmd_models_prepare(args: argparse.Namespace) -> None:
    from .models import prepare

    t = time.time()
    path = prepare(args.name, progress=True)
    print(f"{args.name}: ready at {path} ({time.time() - t:.1f} s)")


def cmd_data_inspect(args: argparse.Namespace) -> None:
    from .data import inspect_table, read_table

    info = inspect_table(read_table(args.path, args.split), args.text_column, args.label_column)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"source:  {info['source']}\nrows:    {info['rows']}\ncolumns: {', '.join(info['columns'])}")
    if "label_counts" in info:
        print(f"labels ({info['label_column']}): " + ", ".join(f"{k}: {v}" for k, v in info["label_counts"].items()))
    if "length_words" in info:
        for unit in ("words", "chars"):
            pct = info[f"length_{unit}"]
            print(f"length of {info['text_column']!r} in {unit}: " + ", ".join(f"{k} {v}" for k, v in pct.items()))


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardtune", description="Reward-driven fine-tuning of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="prepare the bundled models, load the demo data, run the main job")
    _config_args(p)
    p.set_defaults(func=cmd_quickstart)

    models = sub.add_parser("models", help="list and prepare bundled models").add_subparsers(dest="sub", required=True)
    p = models.add_parser("list", help="aliases, whether each is prepared, size and path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("prepare", help="convert/verify an alias once (GGUF → safetensors)")
    p.add_argument("name")
    p.set_defaults(func=cmd_models_prepare)

    data = sub.add_parser("data", help="look at data files").add_subparsers(dest="sub", required=True)
    p = data.add_parser("inspect", help="row count, columns, label counts, text-length percentiles")
    p.add_argument("path", help="file (jsonl[.gz], csv, tsv, parquet), aclImdb folder, 'demo' or hub name")
    p.add_argument("--split", default="train", help="split for folders and hub datasets")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .data import DataError
    from .models import ModelError

    try:
        args.func(args)
    except (ConfigError, DataError, ModelError, FileExistsError) as e:
        print(f"rewardtune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
