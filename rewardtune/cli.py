"""Command line: `rewardtune <command>`. Each command is a small function over a config."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any

from .config import ConfigError, DataSettings, describe, doc, load_config, nested


@dataclass(frozen=True)
class QuickstartConfig:
    """The main job on embedded defaults: bundled models + demo data."""

    data: DataSettings = nested(lambda: DataSettings(val_fraction=0.25), "labelled demo reviews (classifier stages)")
    prompts: str = doc("demo-prompts", "prompt file for the generation stage")
    classifier: str = doc("minilm-l6", "encoder for the classifier and reward model")
    policy: str = doc("smollm2-135m-instruct", "causal LM for generation")
    max_new_tokens: int = doc(24, "tokens generated per completion")
    epochs: int = doc(4, "epochs of each classifier stage")
    lr: float = doc(1e-4, "learning rate of each classifier stage")
    gen_steps: int = doc(8, "steps of the generative RL stage (0 = skip it)")
    gen_lr: float = doc(1e-3, "learning rate of the generative RL stage (LoRA)")
    gen_eval_prompts: int = doc(16, "held-out prompts of the generative RL stage")
    gen_eval_samples: int = doc(4, "completions sampled per held-out prompt, same draws before and after (0 = one greedy)")
    runs_dir: str = doc("runs", "where run folders are created")
    name: str = doc("", "run name; empty = quickstart-<timestamp>")
    seed: int = doc(0, "global seed")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and doc")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest complete checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.path=train.jsonl")


def _resume_args(args: argparse.Namespace) -> None:
    """`--resume RUN_DIR` = its own config.yaml + your overrides + ckpt.resume=auto in that folder."""
    from pathlib import Path

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


def _load(cls: type, args: argparse.Namespace) -> Any:
    if args.help_config:
        print("\n".join(describe(cls)))
        raise SystemExit(0)
    _resume_args(args)
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
    run.print(f"[1/6] run folder {run.dir} (config.yaml written)")
    for name in (cfg.classifier, cfg.policy):
        t = time.time()
        path = M.prepare(name) if name in M.ALIASES else M.resolve(name)
        run.print(f"[2/6] model {name}: ready at {path} ({time.time() - t:.1f} s)")
    ex = D.load_examples(cfg.data.path, cfg.data.text_column, cfg.data.label_column, cfg.data.labels)
    train, val = D.split(ex, cfg.data.val_fraction, cfg.data.seed, cfg.data.stratify)
    prompts = D.load_examples(cfg.prompts, text_column="prompt", label_column=None)
    counts = {n: ex.labels.count(i) for i, n in enumerate(ex.label_names)}
    run.print(f"[3/6] data {ex.source}: {len(ex)} examples {counts}, split {len(train)} train / {len(val)} val; "
              f"{len(prompts)} prompts")
    run.log(0, examples=len(ex), train=len(train), val=len(val), prompts=len(prompts))

    lm, ltok = M.load_causal_lm(cfg.policy)
    batch = ltok(prompts.texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = lm.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=False)
    for prompt, ids in zip(prompts.texts[:2], out[:, batch["input_ids"].shape[1]:]):
        run.print(f"      {cfg.policy} greedy: {prompt!r} -> {ltok.decode(ids, skip_special_tokens=True)!r}")
    del lm
    _quickstart_classifiers(cfg, run)


def _quickstart_classifiers(cfg: QuickstartConfig, run: Any) -> None:
    """Stage 2: supervised baseline, then RL with the exact expected-reward gradient, on the demo reviews."""
    from .train.rl_classifier import RLClassifierConfig, train_rl_classifier
    from .train.sft import SFTConfig, train_sft

    common = [f"model.name={cfg.classifier}", f"data.path={cfg.data.path}", f"data.val_fraction={cfg.data.val_fraction}",
              f"data.seed={cfg.data.seed}", f"train.epochs={cfg.epochs}", f"train.lr={cfg.lr}", "train.batch_size=16",
              "train.max_length=64", f"runs_dir={run.dir}", f"seed={cfg.seed}"]
    run.print(f"\n[4/6] supervised baseline (sft) on {cfg.classifier}")
    sft = train_sft(load_config(SFTConfig, None, common + ["name=sft"]))
    run.print(f"\n[5/6] reward-driven fine-tuning (rl, estimator=expected, reward=indicator) on {cfg.classifier}")
    rl = train_rl_classifier(load_config(RLClassifierConfig, None, common + ["name=rl", "rl.estimator=expected"]))
    run.log(1, sft_best_accuracy=sft["best"], rl_best_accuracy=rl["best"])
    run.print(f"\nvalidation accuracy: sft {sft['best']:.3f}, rl-expected {rl['best']:.3f} "
              f"(runs in {run.dir}/sft and {run.dir}/rl)")
    _quickstart_generation(cfg, run, Path(sft["run_dir"]) / "checkpoints" / "best")


def _quickstart_generation(cfg: QuickstartConfig, run: Any, reward_model_dir: Any) -> None:
    """Stage 3: GRPO on the causal LM (LoRA) with the SFT classifier's P(positive) as the reward."""
    from .train.gen_config import GenRLConfig
    from .train.rl_generate import train_rl_generate

    if cfg.gen_steps <= 0:
        return
    run.print(f"\n[6/6] generative RL (grpo, LoRA r=16) on {cfg.policy}: reward = P(positive) under the sft "
              f"classifier ({reward_model_dir}), {cfg.gen_steps} steps of 4 prompts x 4 samples")
    out = train_rl_generate(load_config(GenRLConfig, None, [
        f"model.name={cfg.policy}", "model.lora.r=16", "model.lora.alpha=32", f"data.path={cfg.prompts}",
        f"rl.rewards=[rm:{reward_model_dir}]", f"rl.steps={cfg.gen_steps}", "rl.eval_every=0",
        f"rl.eval_prompts={cfg.gen_eval_prompts}", f"rl.eval_samples={cfg.gen_eval_samples}", f"rl.lr={cfg.gen_lr}",
        f"gen.max_new_tokens={cfg.max_new_tokens}", f"runs_dir={run.dir}", "name=rl-lm", f"seed={cfg.seed}"]))
    run.log(2, gen_reward_start=out["eval_start"]["reward"], gen_reward_end=out["eval"]["reward"])
    # Sampled with the same draws before and after, a held-out set of 16 x 4 completions moves with the policy,
    # not with which prompts or tokens happened to be drawn (one greedy completion of 8 prompts did not).
    how = (f"{cfg.gen_eval_samples} sampled" if cfg.gen_eval_samples else "greedy") + \
        f" x {out['held_out_prompts']} prompts"  # a prompts file may hold fewer than gen_eval_prompts
    run.print(f"held-out reward ({how}): {out['eval_start']['reward']:.3f} before -> "
              f"{out['eval']['reward']:.3f} after; samples in {out['run_dir']}/samples.jsonl")


def _train_command(config_cls: type, train_fn: Any) -> Any:
    def cmd(args: argparse.Namespace) -> None:
        result = train_fn(_load(config_cls, args))
        print(json.dumps(result, indent=2))
        if result.get("signal"):  # preempted: the conventional 128 + signal number, so schedulers see it
            import signal

            raise SystemExit(128 + int(getattr(signal, result["signal"])))
    return cmd


def _policy_kind(args: argparse.Namespace) -> str:
    """`policy` from the overrides, else from the YAML file, else 'classifier'."""
    import yaml

    _resume_args(args)
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


def cmd_rl(args: argparse.Namespace) -> None:
    from .train.rl_classifier import RLClassifierConfig, train_rl_classifier
    from .train.gen_config import GenRLConfig
    from .train.rl_generate import train_rl_generate

    kinds = {"classifier": (RLClassifierConfig, train_rl_classifier), "causal-lm": (GenRLConfig, train_rl_generate)}
    kind = _policy_kind(args)
    if kind not in kinds:
        raise ConfigError(f"policy {kind!r} is not one of: {', '.join(kinds)}")
    _train_command(*kinds[kind])(args)


def cmd_eval(args: argparse.Namespace) -> None:
    """Classification report, confusion matrix and per-example predictions of a checkpoint on a data file."""
    from pathlib import Path

    from .data import load_examples
    from .eval import evaluate_classifier, format_confusion
    from .models import load_trained_classifier

    meta = json.loads((Path(args.checkpoint) / "rewardtune.json").read_text()) if (Path(args.checkpoint) / "rewardtune.json").exists() else None
    model, tok = load_trained_classifier(args.checkpoint)
    names = meta["label_names"]
    ex = load_examples(args.data, args.text_column, args.label_column, names, args.split)
    max_length = args.max_length or meta.get("max_length", 128)
    rep = evaluate_classifier(model, tok, ex.texts, ex.labels, names, max_length, meta.get("truncation", "head"))
    print(f"{args.checkpoint} on {ex.source} ({len(ex)} examples)\n{rep.text}\n{format_confusion(rep.confusion, names)}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for text, gold, pred, probs in zip(ex.texts, ex.labels, rep.predictions, rep.probabilities):
                fh.write(json.dumps({"text": text, "label": names[gold], "prediction": names[pred],
                                     "probabilities": dict(zip(names, probs))}) + "\n")
        print(f"predictions written to {args.out}")


def cmd_rm_score(args: argparse.Namespace) -> None:
    """Score a data file with a reward model (its own tokenizer), write JSONL, print the distribution."""
    from pathlib import Path

    from .data import DataError, read_table
    from .rewards.model import reward_model

    table = read_table(args.data)
    if args.completion_column not in table.columns:
        raise DataError(f"{table.source}: no column {args.completion_column!r}; the columns are: {', '.join(table.columns)}")
    rm = reward_model(args.rm_dir, batch_size=args.batch_size, max_length=args.max_length or None,
                      truncation_side=args.truncation_side)
    completions = [str(r.get(args.completion_column) or "") for r in table.rows]
    prompts = [str(r.get(args.prompt_column) or "") for r in table.rows]
    scores = rm(prompts, completions)
    out = Path(args.out) if args.out else Path(args.rm_dir).resolve().parents[1] / "scores.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for row, score in zip(table.rows, scores):
            fh.write(json.dumps({**row, "score": score}) + "\n")
    ordered = sorted(scores)
    pct = {q: ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in (0, 10, 50, 90, 100)}
    print(f"scored {len(scores)} rows of {table.source} with {args.rm_dir}: mean {sum(scores) / len(scores):.4f}; "
          + ", ".join(f"p{q} {v:.4f}" for q, v in pct.items()))
    print(f"scores written to {out}")


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

    from .train.sft import SFTConfig, train_sft

    p = sub.add_parser("sft", help="supervised baseline: cross-entropy fine-tuning of a classifier")
    _config_args(p)
    p.set_defaults(func=_train_command(SFTConfig, train_sft))
    p = sub.add_parser("rl", help="reward-driven fine-tuning: policy=classifier (default) or policy=causal-lm")
    _config_args(p)
    p.set_defaults(func=cmd_rl)
    p = sub.add_parser("eval", help="classification report, confusion matrix and predictions of a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/sft/checkpoints/best")
    p.add_argument("--data", required=True, help="data file to evaluate on")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split", default="train", help="split for folders and hub datasets")
    p.add_argument("--max-length", type=int, default=0, help="0 = as trained")
    p.add_argument("--out", help="write per-example predictions to this JSONL file")
    p.set_defaults(func=cmd_eval)

    from .train.reward_model import RMConfig, train_reward_model

    rm = sub.add_parser("rm", help="train and use reward models").add_subparsers(dest="sub", required=True)
    p = rm.add_parser("train", help="pointwise (labels), regression (scores) or pairwise (chosen/rejected) reward model")
    _config_args(p)
    p.set_defaults(func=_train_command(RMConfig, train_reward_model))
    p = rm.add_parser("score", help="score (prompt, completion) rows with a reward model; write JSONL")
    p.add_argument("rm_dir")
    p.add_argument("--data", required=True, help="file with a completion column (and optionally prompts)")
    p.add_argument("--completion-column", default="text")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--max-length", type=int, default=0, help="0 = as trained")
    p.add_argument("--truncation-side", choices=["left", "right"], default="right")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", help="JSONL with each row and its score (default: RM_DIR/../../scores.jsonl)")
    p.set_defaults(func=cmd_rm_score)

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
    from .memory import cap_onednn_cache

    cap_onednn_cache()  # before any model runs (eval, quickstart): see memory.py
    args = build_parser().parse_args(argv)
    from .data import DataError
    from .models import ModelError
    from .checkpoint import CheckpointError, NonFiniteError
    from .rewards import RewardError

    had_group, done = _process_group_up(), False
    try:
        args.func(args)
        done = True
    except (ConfigError, DataError, ModelError, FileExistsError, RewardError, NonFiniteError, CheckpointError) as e:
        print(f"rewardtune: error: {e}", file=sys.stderr)
        return 2
    finally:
        if not had_group and _process_group_up():  # the group this command formed (torchrun, accelerate launch)
            # Left to interpreter shutdown, gloo's threads can abort a finished run ("terminate called
            # without an active exception", exit code -6) after it succeeded. After a success every process
            # waits for the others first: one tearing its group down while another still talks to it aborted
            # a finished run too (seen once in ~10 runs of the 2-process tests). After an error, no wait: the
            # others may never get here. The run's DDP model and accelerator can outlive the command in reference
            # cycles, holding gloo work objects whose tensors, freed only during interpreter finalisation, abort
            # the process there (exit -6 again, seen once in ~35 launches after the barrier): collect them now.
            import gc

            import torch.distributed as dist

            gc.collect()
            if done:
                dist.barrier()
            dist.destroy_process_group()
    return 0


def _process_group_up() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


if __name__ == "__main__":
    sys.exit(main())
