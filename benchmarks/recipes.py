"""The generative recipes on real data (issue 21): base model, SFT, and SFT → GRPO, scored on held-out rows.

    .venv/bin/python benchmarks/recipes.py --recipe mt --seeds 0 1 2 [--sft-steps N --rl-steps N]

For each recipe: `rewardtune data recipe` writes the rows (all training rows; a seeded 400 of the validation
rows); the first 100 of those pick the best checkpoints (SFT's and RL's held-out evaluations), the other 300 are
only used for the final scores here — no checkpoint was chosen on them. Each phase runs as its own process (its
peak RSS is its own). `rewardtune eval-lm` scores each model greedily: every reward component, corpus chrF/BLEU
where the recipe has references, length and distinct-n, and the KL of its completions to the base model's is what
RL's held-out `kl_greedy` logs (read from RL's metrics.jsonl). Results append to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

from record import record

# reward flags of eval-lm for each recipe: the same rewards its configs train on
EVAL_FLAGS = {"mt": ["--rewards", "chrf", "--reference-column", "reference"],
              "dialogue": ["--rewards", "chrf", "length_penalty", "--weights", "1.0", "0.25", "--reference-column",
                           "reference", "--target-length", "12"],
              "qa": ["--rewards", "token_f1", "exact_match", "--reference-column", "answers"],
              "intent": ["--rewards", "label_match", "--gold-column", "label"],
              "sst2": ["--rewards", "label_match", "--gold-column", "label"]}
# the configs a recipe trains with: sst2 is a label recipe like intent and ships no configs of its own
CONFIGS = {"sst2": "intent"}


def sh(argv: list[str], log: Path) -> float:
    """Run `python -m rewardtune.cli argv` in its own process (output to `log`); its wall seconds."""
    t = time.time()
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "rewardtune.cli", *argv], stdout=fh, stderr=subprocess.STDOUT,
                       check=True)
    return time.time() - t


def prepare(recipe: str, work: Path, report_rows: int) -> Path:
    rows = work / "rows"
    sh(["data", "recipe", recipe, "--out", str(rows), "--val-rows", "400", "--seed", "0"], work / "recipe.log")
    lines = (rows / "val.jsonl").read_text().splitlines()
    random.Random(0).shuffle(lines)  # a dev file may be ordered (by article, by label): both parts are random samples
    (rows / "select.jsonl").write_text("\n".join(lines[:100]) + "\n")
    (rows / "report.jsonl").write_text("\n".join(lines[100:100 + report_rows]) + "\n")
    return rows


def evaluate(recipe: str, model: str, rows: Path, out: Path, max_new_tokens: int) -> dict:
    sh(["eval-lm", model, "--data", str(rows / "report.jsonl"), *EVAL_FLAGS[recipe], "--max-new-tokens",
        str(max_new_tokens), "--out", str(out), 'gen.stop_strings=["\\n"]'], out.with_suffix(".log"))
    return json.loads((out / "metrics.json").read_text())["metrics"]


def last_eval(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") in ("eval", "val", "heldout")][-1]


def shipped(recipe: str, phase: str) -> dict:
    """A recipe's shipped config for `phase` (sft or rl), as written."""
    path = Path("rewardtune/configs") / f"recipe-{CONFIGS.get(recipe, recipe)}-{phase}.yaml"
    return yaml.safe_load(path.read_text())


def budget(recipe: str) -> int:
    """The generation budget of a recipe's RL config (eval-lm scores with the same one)."""
    return shipped(recipe, "rl")["gen"]["max_new_tokens"]


def run_seed(recipe: str, seed: int, rows: Path, work: Path, tokens: int, args: argparse.Namespace) -> None:
    config = CONFIGS.get(recipe, recipe)
    data = [f"data.path={rows / 'train.jsonl'}", f"data.val_path={rows / 'select.jsonl'}", f"runs_dir={work}",
            f"seed={seed}", *args.set]
    # a variant of the RL step (--tag, its own overrides) gets its own run folder and evaluation
    sft_name, rl_name = f"sft-s{seed}", f"rl-{args.tag}-s{seed}" if args.tag else f"rl-s{seed}"
    sft_best = work / sft_name / "checkpoints" / "best"
    if not args.skip_sft:
        t_sft = sh(["sft", "--config", f"recipe-{config}-sft", f"name={sft_name}",
                    f"train.max_steps={args.sft_steps}", *data], work / f"{sft_name}.log")
        score(recipe, "sft", seed, sft_best, t_sft, rows, work, tokens, args, {})  # recorded before RL starts
    t_rl = sh(["rl", "--config", f"recipe-{config}-rl", f"name={rl_name}", f"model.name={sft_best}",
               f"rl.steps={args.rl_steps}", *data, *args.rl_set], work / f"{rl_name}.log")
    rl_phase = "sft_rl" + (f"_{args.tag}" if args.tag else "")
    score(recipe, rl_phase, seed, work / rl_name / "checkpoints" / "best", t_rl, rows, work, tokens, args,
          {"rl_heldout_last": last_eval(work / rl_name), "rl_set": args.rl_set})


def score(recipe: str, phase: str, seed: int, model: Path, secs: float, rows: Path, work: Path, tokens: int,
          args: argparse.Namespace, extra: dict) -> None:
    """Score one phase's best checkpoint on the report rows and append the result row."""
    metrics = evaluate(recipe, str(model), rows, work / f"eval-{phase}-s{seed}", tokens)
    record({"benchmark": "recipe", "recipe": recipe, "phase": phase, "seed": seed, "train_seconds": round(secs, 1),
            "sft_steps": args.sft_steps, "rl_steps": args.rl_steps, **metrics, **extra})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=list(EVAL_FLAGS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sft-steps", type=int, default=0, help="SFT steps (0 = the shipped config's train.max_steps)")
    p.add_argument("--rl-steps", type=int, default=0, help="GRPO steps (0 = the shipped config's rl.steps)")
    p.add_argument("--report-rows", type=int, default=300, help="held-out rows scored at the end (at most 300)")
    p.add_argument("--set", nargs="*", default=[], help="key=value overrides for both sft and rl (e.g. a smoke run: "
                                                        "eval.prompts=4)")
    p.add_argument("--rl-set", nargs="*", default=[], help="key=value overrides for rl only (a variant: use --tag)")
    p.add_argument("--tag", default="", help="the RL variant's name: its run folder rl-TAG-sSEED, phase sft_rl_TAG")
    p.add_argument("--work", default="runs/bench-recipes", help="folder for rows, runs and evaluations")
    p.add_argument("--skip-base", action="store_true", help="do not score the base model (scored by an earlier run)")
    p.add_argument("--skip-sft", action="store_true", help="reuse WORK/RECIPE/sft-sSEED (trained and scored earlier)")
    args = p.parse_args()
    # unset step counts are the shipped configs' own, so a plain run measures what ships
    args.sft_steps = args.sft_steps or shipped(args.recipe, "sft")["train"]["max_steps"]
    args.rl_steps = args.rl_steps or shipped(args.recipe, "rl")["rl"]["steps"]
    work = Path(args.work) / args.recipe
    work.mkdir(parents=True, exist_ok=True)
    rows = prepare(args.recipe, work, args.report_rows)
    tokens = budget(args.recipe)
    if not args.skip_base:
        record({"benchmark": "recipe", "recipe": args.recipe, "phase": "base",
                **evaluate(args.recipe, "smollm2-135m-instruct", rows, work / "eval-base", tokens)})
    for seed in args.seeds:
        run_seed(args.recipe, seed, rows, work, tokens, args)


if __name__ == "__main__":
    main()
