"""The generative sentiment task: SmolLM2-135M-Instruct + LoRA learns to continue IMDb review openings
positively, rewarded by the MiniLM sentiment reward model (P(positive)).

    .venv/bin/python benchmarks/sentiment_curve.py --rm RM_DIR --steps 30 --eval-every 5
    .venv/bin/python benchmarks/sentiment_curve.py --rm RM_DIR --steps 30 --eval-every 5 --eval-samples 4

Prompts: the first 8 words of IMDb unlabeled reviews; a fixed held-out set of 16 (the first 16
usable reviews) and training prompts from review 1,000 on. GRPO, 4 prompts × 4 samples of 32 tokens,
β = 0.04 (k3), lr 1e-4. Prints the held-out curve (greedy: reward, KL on the greedy tokens, perplexity
under the reference; with --eval-samples K, K sampled completions per prompt and the sampled KL estimate) and
before/after samples; appends a summary to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grpo_vs_trl import imdb_prompts  # noqa: E402
from record import record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rm", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-samples", type=int, default=0, help="0: greedy held-out evaluation; K: K samples per prompt")
    p.add_argument("--work", default="/tmp/rewardtune-bench/curve")
    p.add_argument("--out", default="benchmarks/results.jsonl")
    args = p.parse_args()
    from rewardtune.config import load_config
    from rewardtune.train.gen_config import GenRLConfig
    from rewardtune.train.rl_generate import train_rl_generate

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    held, train = imdb_prompts(16), imdb_prompts(4 * args.steps, skip=1000)
    (work / "train.jsonl").write_text("".join(json.dumps({"prompt": x}) + "\n" for x in train))
    (work / "held.jsonl").write_text("".join(json.dumps({"prompt": x}) + "\n" for x in held))
    name = f"curve-{int(time.time())}"
    cfg = load_config(GenRLConfig, None, [
        "model.name=smollm2-135m-instruct", "model.lora.r=16", "model.lora.alpha=32", f"data.path={work / 'train.jsonl'}",
        f"data.val_path={work / 'held.jsonl'}", f"reward.functions=[rm:{args.rm}]", f"rl.steps={args.steps}",
        f"eval.every={args.eval_every}", "eval.prompts=16", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
        f"rl.lr={args.lr}", "rl.kl_coef=0.04", "rl.algorithm=grpo", "gen.max_new_tokens=32", "runtime.micro_batch_size=8",
        f"eval.samples={args.eval_samples}", f"runs_dir={work}", f"name={name}"])
    t = time.time()
    out = train_rl_generate(cfg, show_progress=False)
    run = Path(out["run_dir"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "reward", "kl" if args.eval_samples else "kl_greedy", "ref_perplexity", "distinct_2", "length_words")
    eval_rows = [r for r in rows if r["split"] == "eval"]
    curve = [{k: r.get(k) for k in keys} for r in eval_rows]
    print(f"held-out curve ({eval_rows[-1]['decoding']} decoding, 16 prompts):")
    for c in curve:
        print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()))
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    evals = [s for s in samples if s.get("split") == "eval"]
    for s in evals[:3] + evals[-3:]:
        print(f"step {s['step']:>3}  reward {s['reward']:.3f}  {s['prompt']!r} → {s['completion']!r}")
    record({"task": "sentiment-curve-imdb", "steps": args.steps, "eval_samples": args.eval_samples,
            "wall_s": time.time() - t, "run_dir": str(run), "curve": curve}, args.out, echo=False)


if __name__ == "__main__":
    main()
