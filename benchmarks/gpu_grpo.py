"""GRPO steps of rewardtune and TRL on one model, each step under a time limit; one JSON line per step (gpu_suite.sh).

    python benchmarks/gpu_grpo.py --framework rewardtune --model DIR --sizes 4x4x32,16x8x256 --out FILE
    python benchmarks/gpu_grpo.py --framework trl --model DIR --sizes 4x4x32,16x8x256 --out FILE
    python benchmarks/gpu_grpo.py --table FILE

A size PxKxT is P prompts × K samples (B = P·K rows) × T new tokens. Both: LoRA r=16 (α 32, all linear layers)
over bf16 base weights, bf16 autocast on a GPU, β = 0.04 (k3 in the loss), one optimiser step per rollout, the same
cheap reward (`even_words`). rewardtune runs `GenRLRun.step` directly (no held-out evaluation, no
checkpoints), once per `--variants` entry (eager: its defaults; graph: gen.cuda_graph=true); TRL runs
`GRPOTrainer.train` with its defaults (gradient checkpointing on, HF generate, no vLLM). Each step is ended by
SIGALRM after `--step-timeout` seconds, which ends that run (a row with "timeout": true). Peak GPU memory is the
allocator's peak since the run began (`torch.cuda.max_memory_allocated`); the table skips each run's first step
(warm-up, capture).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_models import prompts  # noqa: E402


class StepTimeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise StepTimeout()


def even_words(prompts, completions, **_):
    """The cheap reward both frameworks get: the share of words tN with N even (random weights: it varies within a
    group, so advantages are not all zero)."""
    return [sum(w[1:].isdigit() and int(w[1:]) % 2 == 0 for w in c.split()) / max(len(c.split()), 1)
            for c in completions]


def peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def reset_peak() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def write(out: Path, row: dict) -> None:
    with out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def parse_size(size: str) -> tuple[int, int, int]:
    P, K, T = (int(x) for x in size.split("x"))
    return P, K, T


def rewardtune_config(args: argparse.Namespace, size: str, variant: str, work: Path, extra: tuple = ()):
    from dataclasses import replace

    from rewardtune.config import load_config
    from rewardtune.train.gen_config import GenRLConfig

    P, K, T = parse_size(size)
    data = work / f"prompts-{P}.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(P * (args.steps + 1), args.vocab)))
    gpu = not args.cpu
    cfg = load_config(GenRLConfig, None, [
        f"model.name={args.model}", "model.lora.r=16", "model.lora.alpha=32", "model.lora.base_dtype=bfloat16",
        f"runtime.mixed_precision={'bf16' if gpu else 'no'}", f"data.path={data}", f"eval.prompts={P}",
        f"rl.prompts_per_step={P}", f"rl.samples_per_prompt={K}", f"gen.max_new_tokens={T}", "rl.kl_coef=0.04",
        "rl.kl_estimator=k3", "rl.aggregation=seq_mean_token_mean", "rl.algorithm=grpo", "rl.steps=100000",
        "eval.every=0", "eval.sample_every=0", f"gen.cuda_graph={variant == 'graph'}", f"runs_dir={work}",
        f"name=rt-{Path(args.model).name}-{size}-{variant}-{int(time.time())}", *extra])
    return replace(cfg, reward=replace(cfg.reward, functions=(even_words,)))


def run_rewardtune(args: argparse.Namespace, size: str, variant: str, out: Path) -> None:
    from rewardtune.run import seed_this_process
    from rewardtune.train.rl_generate import GenRLRun

    reset_peak()
    run = GenRLRun.setup(rewardtune_config(args, size, variant, Path(args.work)))
    seed_this_process(run.run)
    batches, metrics = run.prompt_batches(0), run.run.dir / "metrics.jsonl"
    base = {"framework": "rewardtune", "variant": variant, "model": Path(args.model).name, "size": size}
    for step in range(1, args.steps + 1):
        signal.alarm(args.step_timeout)
        t = time.perf_counter()
        try:
            run.step(step, next(batches))
            sync()
        except StepTimeout:
            write(out, {**base, "step": step, "timeout": True, "limit_s": args.step_timeout})
            return
        finally:
            signal.alarm(0)
        row = json.loads(metrics.read_text().splitlines()[-1])
        write(out, {**base, "step": step, "s": time.perf_counter() - t, "sample_s": row["time_generate"],
                    "tokens_per_s": row["tokens_per_s"], "peak_mib": peak_mib()})


def trl_trainer(args: argparse.Namespace, size: str, clock):
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    import torch

    P, K, T = parse_size(size)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    cfg = GRPOConfig(output_dir=str(Path(args.work) / "trl"), per_device_train_batch_size=P * K, num_generations=K,
                     max_completion_length=T, beta=0.04, learning_rate=1e-4, max_steps=args.steps,
                     lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, loss_type="grpo",
                     scale_rewards="group", num_iterations=1, gradient_accumulation_steps=1, temperature=1.0,
                     logging_steps=1, use_cpu=args.cpu, bf16=not args.cpu, report_to=[], save_strategy="no",
                     seed=0, disable_tqdm=True)
    ds = datasets.Dataset.from_list([{"prompt": p} for p in prompts(P * (args.steps + 1), args.vocab)])
    return GRPOTrainer(model=model, reward_funcs=even_words, args=cfg, train_dataset=ds, processing_class=tok,
                       peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
                       callbacks=[clock])


def run_trl(args: argparse.Namespace, size: str, out: Path) -> None:
    from transformers import TrainerCallback

    base = {"framework": "trl", "variant": "defaults", "model": Path(args.model).name, "size": size}

    class Clock(TrainerCallback):  # one row per step, the alarm re-armed per step
        def on_step_begin(self, a, s, c, **k):
            signal.alarm(args.step_timeout)
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **k):
            sync()
            write(out, {**base, "step": s.global_step, "s": time.perf_counter() - self.t, "peak_mib": peak_mib()})

    reset_peak()
    trainer = trl_trainer(args, size, Clock())
    try:
        trainer.train()
    except StepTimeout:
        write(out, {**base, "timeout": True, "limit_s": args.step_timeout})
    finally:
        signal.alarm(0)


def table(path: Path) -> str:
    """The results as a Markdown table: mean s/step and tokens/s over the steps after the first, peak memory, and
    TRL's s/step over this row's (× TRL)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["model"], r["size"], r["framework"], r["variant"]), []).append(r)
    lines = ["| model | P×K×T | framework | s/step | × TRL | sampling tokens/s | peak GPU MiB | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (model, size, fw, variant), rs in sorted(runs.items()):
        done = [r for r in rs if not r.get("timeout")]
        timed = done[1:] or done  # the first step warms up (and captures the graph)
        s = sum(r["s"] for r in timed) / len(timed) if timed else None
        trl = [r for r in runs.get((model, size, "trl", "defaults"), []) if not r.get("timeout")]
        trl_s = sum(r["s"] for r in (trl[1:] or trl)) / len(trl[1:] or trl) if trl else None
        tps = [r["tokens_per_s"] for r in timed if r.get("tokens_per_s")]
        peaks = [r["peak_mib"] for r in done if r.get("peak_mib") is not None]
        note = "timed out after step %d" % len(done) if any(r.get("timeout") for r in rs) else ""
        note += "" if len(done) > 1 else (" (one step: includes warm-up)" if done else "no step finished")
        fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {model} | {size} | {fw} ({variant}) | {fmt(s, '.2f')} | "
                     f"{fmt(trl_s / s if s and trl_s else None, '.2f')} | "
                     f"{fmt(sum(tps) / len(tps) if tps else None, ',.0f')} | {fmt(max(peaks) if peaks else None, ',.0f')} "
                     f"| {note.strip()} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--framework", choices=["rewardtune", "trl"])
    p.add_argument("--model", help="a model folder from gpu_models.py")
    p.add_argument("--sizes", default="4x4x32,16x8x256", help="P×K×T per run, comma-separated")
    p.add_argument("--variants", default="eager,graph", help="rewardtune: eager (defaults), graph (gen.cuda_graph)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--step-timeout", type=int, default=60)
    p.add_argument("--vocab", type=int, default=49152, help="the model's vocabulary (prompt words are drawn from it)")
    p.add_argument("--cpu", action="store_true", help="no GPU: fp32, no autocast (the dry run)")
    p.add_argument("--work", default="/tmp/rewardtune-gpu-suite")
    p.add_argument("--out", default="/tmp/rewardtune-gpu-suite/results.jsonl")
    p.add_argument("--table", help="print the table of this results file and exit")
    args = p.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    signal.signal(signal.SIGALRM, _alarm)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    for size in args.sizes.split(","):
        if args.framework == "trl":
            run_trl(args, size, out)
            continue
        for variant in args.variants.split(","):
            run_rewardtune(args, size, variant, out)


if __name__ == "__main__":
    main()
