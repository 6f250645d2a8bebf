"""Command line: `rewardtune <command>`. Each command is a small function over a config."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from .cli_bandit import add_commands as add_bandit_commands
from . import cli_recipes
from . import cli_export
from . import cli_report
from .cli_config import POLICY_KINDS, REWARDS_KEY, config_args, load_command_config, policy_kind, reward_note
from .config import ConfigError, config_path, shipped_configs
from .quickstart import QuickstartConfig


# ---------------------------------------------------------------- commands
def cmd_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import run_quickstart

    run_quickstart(load_command_config(QuickstartConfig, args, "quickstart"))


def _train_command(config_cls: type, train_fn: Any, command: str, notes: dict[str, str] | None = None) -> Any:
    def cmd(args: argparse.Namespace) -> None:
        result = train_fn(load_command_config(config_cls, args, command, notes))
        print(json.dumps(result, indent=2))
        if result.get("signal"):  # preempted: the conventional 128 + signal number, so schedulers see it
            import signal

            raise SystemExit(128 + int(getattr(signal, result["signal"])))
    return cmd


def _by_policy(args: argparse.Namespace, kinds: dict[str, tuple[type, Any]]) -> str:
    """The policy kind the command runs (`policy` override, else the config file, else classifier), checked."""
    kind = policy_kind(args)
    if kind not in kinds:
        raise ConfigError(f"policy {kind!r} is not one of: {', '.join(POLICY_KINDS)}")
    return kind


def cmd_rl(args: argparse.Namespace) -> None:
    """`policy` picks the config and the trainer."""
    from .train import gen_config, rl_classifier, rl_generate, rl_tagger, span, span_config

    kinds = {"classifier": (rl_classifier.RLClassifierConfig, rl_classifier.train_rl_classifier),
             "causal-lm": (gen_config.GenRLConfig, rl_generate.train_rl_generate),
             "seq2seq": (gen_config.GenRLConfig, rl_generate.train_rl_generate),
             "tagger": (rl_tagger.TaggerRLConfig, rl_tagger.train_rl_tagger),
             "span": (span_config.SpanRLConfig, span.train_span_rl)}
    kind = _by_policy(args, kinds)
    _train_command(*kinds[kind], f"rl policy={kind}", {REWARDS_KEY[kind]: reward_note(kind)})(args)


def cmd_sft(args: argparse.Namespace) -> None:
    """`policy` picks the config and the trainer, as for `rl`."""
    from .train import sft, sft_lm, sft_lm_config, span, span_config, tagger

    kinds = {"classifier": (sft.SFTConfig, sft.train_sft),
             "causal-lm": (sft_lm_config.SFTLMConfig, sft_lm.train_sft_lm),
             "seq2seq": (sft_lm_config.SFTLMConfig, sft_lm.train_sft_lm),
             "tagger": (tagger.TaggerSFTConfig, tagger.train_sft_tagger),
             "span": (span_config.SpanSFTConfig, span.train_span_sft)}
    kind = _by_policy(args, kinds)
    notes = {REWARDS_KEY[kind]: reward_note(kind)} if kind in ("causal-lm", "seq2seq") else None
    _train_command(*kinds[kind], "sft" if kind == "classifier" else f"sft policy={kind}", notes)(args)


def cmd_eval(args: argparse.Namespace) -> None:
    """Report of a classifier, tagger or span checkpoint (or a run folder's best) on a data file (eval.py)."""
    from .eval import eval_command

    eval_command(args)


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


def cmd_eval_lm(args: argparse.Namespace) -> None:
    """Completions of a prompts file by a causal LM, their rewards and corpus metrics (eval_lm.py)."""
    from .eval_lm import EvalLMJob, eval_lm_config, format_table, run_eval_lm

    for name in ("rewards", "labels"):  # a list flag swallows the key=value overrides that follow it: give them back
        values = getattr(args, name) or []
        args.overrides += [v for v in values if _is_override(v)]
        setattr(args, name, [v for v in values if not _is_override(v)] or None)
    reward = {"functions": args.rewards, "weights": args.weights, "reference_column": args.reference_column,
              "rouge_type": args.rouge_type, "gold_column": args.gold_column, "labels": args.labels,
              "regex": args.regex, "target_length": args.target_length, "on_error": args.on_error}
    gen = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "top_p": args.top_p,
           "top_k": args.top_k, "chat_template": args.chat_template or None}
    cfg = eval_lm_config(args.overrides, {"reward": reward, "gen": gen})
    if not args.rewards and not any(o.startswith("reward.functions=") for o in args.overrides):
        raise ConfigError("give the rewards to score with: --rewards NAME ... (built-ins, rm:FOLDER, module:function)")
    job = EvalLMJob(args.checkpoint, args.data, cfg.reward, cfg.gen, args.samples, args.seed, args.prompt_column,
                    args.reference_column or "", args.batch_size, args.out or "")
    result = run_eval_lm(job)
    print(format_table(result))
    if args.out:
        print(f"completions and metrics written to {args.out}/completions.jsonl and {args.out}/metrics.json")


def _is_override(text: str) -> bool:
    return text.startswith(("reward.", "gen.")) and "=" in text


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


def cmd_data_pairs(args: argparse.Namespace) -> None:
    from .pairs import write_rating_pairs

    info = write_rating_pairs(args.path, args.out, args.train_pairs, args.val_pairs, args.min_gap, args.val_fraction,
                              args.rating_column, args.text_column, args.label_column)
    print(f"{info['source']}: {info['train_texts']} train / {info['val_texts']} val texts -> {info['train_pairs']} "
          f"pairs in {info['train']}, {info['val_pairs']} in {info['val']}")


def _first_comment(text: str) -> str:
    return next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")), "")


def cmd_configs_list(args: argparse.Namespace) -> None:
    """Each shipped config: its name and what it runs (the file's first comment line)."""
    shipped = shipped_configs()
    width = max(map(len, shipped), default=0)
    for name, path in shipped.items():
        print(f"{name:{width}}  {_first_comment(path.read_text(encoding='utf-8'))}")


def cmd_configs_show(args: argparse.Namespace) -> None:
    if args.name not in shipped_configs():  # a name only: `show` is not a file viewer
        raise ConfigError(f"no shipped config is called {args.name!r}; the shipped configs are: "
                          f"{', '.join(shipped_configs())}")
    print(config_path(args.name).read_text(encoding="utf-8"), end="")


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="rewardtune", description="Reward-driven fine-tuning of language models.")
    parser.add_argument("--version", action="version", version=f"rewardtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _training_commands(sub)
    _model_and_data_commands(sub)
    add_bandit_commands(sub)
    cli_export.add_commands(sub)
    cli_report.add_commands(sub)
    configs = sub.add_parser("configs", help="the configs that ship with rewardtune (use one with --config NAME)")
    configs = configs.add_subparsers(dest="sub", required=True)
    configs.add_parser("list", help="name and what each runs").set_defaults(func=cmd_configs_list)
    p = configs.add_parser("show", help="print a shipped config's YAML (copy it to start your own)")
    p.add_argument("name")
    p.set_defaults(func=cmd_configs_show)
    return parser


def _training_commands(sub: Any) -> None:
    from .train.reward_model import RMConfig, train_reward_model

    p = sub.add_parser("quickstart", help="prepare the bundled models, load the demo data, run the main job")
    config_args(p)
    p.set_defaults(func=cmd_quickstart)
    p = sub.add_parser("sft", help="supervised fine-tuning: policy=classifier (default; cross-entropy on labels) or "
                                   "policy=causal-lm or seq2seq (cross-entropy on completions)")
    config_args(p)
    p.set_defaults(func=cmd_sft)
    p = sub.add_parser("rl", help="reward-driven fine-tuning: policy=classifier (default), causal-lm or seq2seq")
    config_args(p)
    p.set_defaults(func=cmd_rl)
    p = sub.add_parser("eval", help="classification report, confusion matrix and predictions of a checkpoint")
    p.add_argument("checkpoint", help="a run folder (its checkpoints/best) or a checkpoint folder")
    p.add_argument("--data", required=True, help="data file to evaluate on")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split", default="train", help="split for folders and hub datasets")
    p.add_argument("--max-length", type=int, default=0, help="0 = as trained")
    p.add_argument("--out", help="write per-example predictions to this JSONL file")
    p.set_defaults(func=cmd_eval)

    _eval_lm_command(sub)

    rm = sub.add_parser("rm", help="train and use reward models").add_subparsers(dest="sub", required=True)
    p = rm.add_parser("train", help="pointwise (labels), regression (scores) or pairwise (chosen/rejected) reward model")
    config_args(p)
    p.set_defaults(func=_train_command(RMConfig, train_reward_model, "rm train"))
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


def _eval_lm_command(sub: Any) -> None:
    p = sub.add_parser("eval-lm", help="a causal LM's completions of a prompts file: rewards, BLEU/chrF/ROUGE, "
                                       "length, distinct-n; JSONL + metrics")
    p.add_argument("checkpoint", help="alias, model folder, or a run's checkpoints/best|final (weights or LoRA adapter)")
    p.add_argument("--data", required=True, help="prompts file (the prompt column and any columns the rewards use)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--rewards", nargs="+", help="reward functions as reward.functions takes them: built-ins, "
                                                "rm:FOLDER, module:function")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per reward (default 1 each)")
    p.add_argument("--reference-column", help="reference text(s) per row: corpus BLEU/chrF and ROUGE against it, and "
                                              "reward.reference_column (default: 'reference' when the file has it)")
    p.add_argument("--rouge-type", choices=["rouge1", "rouge2", "rougeL"], help="reward.rouge_type")
    p.add_argument("--gold-column", help="reward.gold_column (label_match)")
    p.add_argument("--labels", nargs="+", help="reward.labels (label_match)")
    p.add_argument("--regex", help="reward.regex")
    p.add_argument("--target-length", type=int, help="reward.target_length (length_penalty)")
    p.add_argument("--on-error", choices=["raise", "skip"], help="reward.on_error")
    p.add_argument("--samples", type=int, default=0, help="0 = one greedy completion per prompt; K = K sampled")
    p.add_argument("--temperature", type=float, help="gen.temperature (sampled)")
    p.add_argument("--max-new-tokens", type=int, help="gen.max_new_tokens")
    p.add_argument("--top-p", type=float, help="gen.top_p")
    p.add_argument("--top-k", type=int, help="gen.top_k")
    p.add_argument("--chat-template", action="store_true", help="gen.chat_template: prompts as user turns")
    p.add_argument("--seed", type=int, default=0, help="the run's seed: draws from seed + EVAL_SEED_OFFSET, as a "
                                                       "run's held-out evaluation")
    p.add_argument("--batch-size", type=int, default=0, help="rows decoded at once (0 = all); memory only")
    p.add_argument("--out", help="folder for completions.jsonl and metrics.json (default: print only)")
    p.add_argument("overrides", nargs="*", help="reward.* and gen.* key=value overrides, e.g. gen.stop_strings=[.]")
    p.set_defaults(func=cmd_eval_lm)


def _model_and_data_commands(sub: Any) -> None:
    from .pairs import DEFAULT_OUT

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
    p = data.add_parser("pairs", help="chosen/rejected pairs from rated texts (IMDb stars) for a pairwise reward model")
    p.add_argument("path", help="file with a text, a label and a numeric rating column, e.g. imdb/train.jsonl.gz")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for train.jsonl and val.jsonl")
    p.add_argument("--train-pairs", type=int, default=1500)
    p.add_argument("--val-pairs", type=int, default=500)
    p.add_argument("--min-gap", type=float, default=4, help="least rating difference within a pair")
    p.add_argument("--val-fraction", type=float, default=0.1, help="texts held out (stratified, seed 0) for val pairs")
    p.add_argument("--rating-column", default="rating")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label", help="stratifies the split ('' for none)")
    p.set_defaults(func=cmd_data_pairs)
    cli_recipes.add_commands(data)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .memory import cap_onednn_cache

    cap_onednn_cache()  # before any model runs (eval, quickstart): see memory.py
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # After CHECKPOINT, argparse takes no more positionals: eval-lm's overrides after its options come back as extras
    if extra and not (args.func is cmd_eval_lm and all(_is_override(e) for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
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
