"""GRPO on SmolLM2-135M-Instruct (fp32, CPU, LoRA r=16 all-linear): rewardtune vs TRL's GRPOTrainer.

Same model, prompts, reward, LoRA, batch (4 prompts × 4 samples = 16 completions of 32 new
tokens per step), β = 0.04 (k3 as a loss term in both), learning rate and step count. Each framework
runs in its own child process so that peak RSS is its own; held-out reward is measured the same way
for both (greedy completions of held-out prompts, scored by the same reward model).

    .venv/bin/pip install --no-deps trl==1.16.0      # benchmark-only dependency
    .venv/bin/python benchmarks/grpo_vs_trl.py --rm RM_DIR --steps 10
    .venv/bin/python benchmarks/grpo_vs_trl.py --rm RM_DIR --steps 10 --bf16-base   # frozen weights in bf16, both
    .venv/bin/python benchmarks/grpo_vs_trl.py --rm RM_DIR --steps 10 --gpu   # on a GPU, bf16 autocast in both (untried)

TRL gets the model as `from_pretrained` gives it; `--trl-contiguous-head` adds rewardtune's LM-head
hook (`models.contiguous_head_input`) to TRL's model, to show what that fix alone is worth there.

Prompts: the first 8 words of IMDb unlabeled reviews (../shared/data/imdb/unsup.jsonl.gz).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from record import peak_rss_mib, record

UNSUP = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb" / "unsup.jsonl.gz"


def imdb_prompts(n: int, skip: int = 0) -> list[str]:
    """First 8 words of unlabeled IMDb reviews (`<br />` tags removed)."""
    out = []
    with gzip.open(UNSUP, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < skip:
                continue
            words = json.loads(line)["text"].replace("<br />", " ").split()
            if len(words) >= 8:
                out.append(" ".join(words[:8]))
            if len(out) == n:
                break
    return out


def heldout_reward(model, tok, prompts: list[str], rm, max_new_tokens: int) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        enc = tok(prompts, padding=True, return_tensors="pt").to(model.device)
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    completions = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return float(sum(rm(prompts, completions)) / len(prompts))


def run_rewardtune(args: argparse.Namespace, train: list[str], held: list[str]) -> dict:
    from rewardtune.config import load_config
    from rewardtune.train.gen_config import GenRLConfig
    from rewardtune.train.rl_generate import train_rl_generate

    path, held_path = Path(args.work) / "prompts.jsonl", Path(args.work) / "heldout.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in train))
    held_path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in held))
    cfg = load_config(GenRLConfig, None, [
        "model.name=smollm2-135m-instruct", "model.lora.r=16", "model.lora.alpha=32", f"data.path={path}",
        f"data.val_path={held_path}", f"reward.functions=[rm:{args.rm}]", f"rl.steps={args.steps}", "eval.every=0", f"eval.prompts={len(held)}",
        "rl.prompts_per_step=4", "rl.samples_per_prompt=4", f"rl.lr={args.lr}", "rl.kl_coef=0.04",
        "rl.kl_estimator=k3", "rl.aggregation=seq_mean_token_mean", "rl.algorithm=grpo", "rl.max_grad_norm=1.0",
        "gen.max_new_tokens=32", f"runs_dir={args.work}", f"name=rewardtune-{int(time.time())}",
        f"model.lora.base_dtype={'bfloat16' if args.bf16_base else 'float32'}",
        f"runtime.mixed_precision={'bf16' if args.gpu else 'no'}", *args.set])
    t = time.time()
    out = train_rl_generate(cfg, show_progress=False)
    wall = time.time() - t
    rss = peak_rss_mib()  # training's peak, before the held-out measurement loads a second copy
    # Held-out reward measured exactly as for TRL: HF generate, greedy, on the trained adapter.
    from peft import PeftModel

    from rewardtune.models import load_causal_lm
    from rewardtune.rewards import reward_model

    base, tok = load_causal_lm("smollm2-135m-instruct", base_dtype(args))
    rm = reward_model(args.rm)
    start = heldout_reward(base, tok, held, rm, 32)
    tuned = PeftModel.from_pretrained(base, Path(out["run_dir"]) / "checkpoints" / "final")
    end = heldout_reward(tuned, tok, held, rm, 32)
    rows = [json.loads(line) for line in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    step_s = [r["time_generate"] + r["time_score"] + r["time_update"] for r in train_rows]
    return {"s_per_step": sum(step_s) / len(step_s), "wall_s": wall, "peak_rss_mib": rss, **gpu_peak(),
            "tokens_per_s": sum(r["tokens_per_s"] for r in train_rows) / len(train_rows),
            "train_reward_first": train_rows[0]["reward"], "train_reward_last": train_rows[-1]["reward"],
            "heldout_reward_start": start, "heldout_reward": end,
            "heldout_reward_own_eval": [out["eval_start"]["reward"], out["eval"]["reward"]],
            "breakdown_s": {k: sum(r[k] for r in train_rows) / len(train_rows)
                            for k in ("time_generate", "time_score", "time_update")}}


def gpu_peak() -> dict:
    """The peak of torch's GPU allocator in MiB, when a GPU was used (RSS does not count GPU memory)."""
    import torch

    return {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


def base_dtype(args: argparse.Namespace):
    import torch

    return torch.bfloat16 if args.bf16_base else torch.float32


def run_trl(args: argparse.Namespace, train: list[str], held: list[str]) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from transformers import AutoModelForCausalLM

    from rewardtune.models import contiguous_head_input, load_tokenizer, resolve
    from rewardtune.rewards import reward_model

    if args.trl_free_memory:  # the allocator setting rewardtune can apply at the start of a run (memory.py)
        from rewardtune.memory import return_freed_memory
        os.environ.setdefault("REWARDTUNE_MMAP_THRESHOLD_MB", "16")
        return_freed_memory()
    rm = reward_model(args.rm)
    path = resolve("smollm2-135m-instruct")  # the model as a TRL user loads it
    model, tok = AutoModelForCausalLM.from_pretrained(path, dtype=base_dtype(args)), load_tokenizer(path)
    tok.padding_side = "left"
    model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else tok.pad_token_id
    if args.trl_contiguous_head:
        contiguous_head_input(model)

    def reward(prompts, completions, **_):  # the same contract as rewardtune's
        return rm(prompts, completions)

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, s, c, **k):
            self.t = time.time()

        def on_step_end(self, a, s, c, **k):
            times.append(time.time() - self.t)

    cfg = GRPOConfig(output_dir=str(Path(args.work) / "trl"), per_device_train_batch_size=16, num_generations=4,
                     max_completion_length=32, beta=0.04, learning_rate=args.lr, max_steps=args.steps,
                     lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, loss_type="grpo",
                     scale_rewards="group", num_iterations=1, gradient_accumulation_steps=1, temperature=1.0,
                     logging_steps=1, use_cpu=not args.gpu, bf16=args.gpu, report_to=[], save_strategy="no", seed=0,
                     disable_tqdm=True)
    ds = datasets.Dataset.from_list([{"prompt": p} for p in train])
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                          peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
                          callbacks=[Clock()])
    start = heldout_reward(trainer.model, tok, held, rm, 32)
    dtypes = sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad})
    t = time.time()
    trainer.train()
    wall = time.time() - t
    rss = peak_rss_mib()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"s_per_step": sum(times) / len(times), "wall_s": wall, "peak_rss_mib": rss, **gpu_peak(),
            "tokens_per_s": None, "train_reward_first": logs[0]["reward"], "train_reward_last": logs[-1]["reward"],
            "heldout_reward_start": start, "heldout_reward": heldout_reward(trainer.model, tok, held, rm, 32),
            "adapter_dtypes": dtypes}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rm", required=True, help="reward model folder (e.g. from benchmarks/imdb_reward_models.py)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--frameworks", default="rewardtune,trl")
    p.add_argument("--trl-free-memory", action="store_true", help="TRL: fix glibc's mmap threshold as REWARDTUNE_MMAP_THRESHOLD_MB does (16 MiB unless set)")
    p.add_argument("--bf16-base", action="store_true", help="both: frozen base weights in bf16 (LoRA adapters as each framework keeps them)")
    p.add_argument("--gpu", action="store_true", help="both on the GPU with bf16 autocast (TRL: use_cpu=False, bf16=True; "
                   "rewardtune: runtime.mixed_precision=bf16); not yet run")
    p.add_argument("--trl-contiguous-head", action="store_true", help="TRL: add rewardtune's contiguous LM-head input hook")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--set", nargs="*", default=[], help="extra rewardtune overrides")
    p.add_argument("--work", default="/tmp/rewardtune-bench/grpo")
    p.add_argument("--out", default="benchmarks/results.jsonl")
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.child:
        held, train = imdb_prompts(args.heldout), imdb_prompts(4 * args.steps, skip=1000)
        res = (run_trl if args.child == "trl" else run_rewardtune)(args, train, held)
        res |= {"framework": args.child}
        print("RESULT " + json.dumps(res), flush=True)
        return
    for fw in args.frameworks.split(","):
        cmd = [sys.executable, __file__, "--child", fw] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            sys.exit(f"{fw} failed")
        record(json.loads(line[0][7:]) | {"task": "grpo-imdb-sentiment", "steps": args.steps, "lr": args.lr,
                                          "trl_free_memory": args.trl_free_memory, "bf16_base": args.bf16_base,
                                          "gpu": args.gpu,
                                          "trl_contiguous_head": args.trl_contiguous_head,
                                          "env_mmap_threshold_mb": os.environ.get("REWARDTUNE_MMAP_THRESHOLD_MB", "")}, args.out)


if __name__ == "__main__":
    main()
