"""Would bf16 weights speed up generative RL on this CPU? Matmuls, the bare model, the model with LoRA.

Times (best of `--repeat`) a forward pass of SmolLM2-135M-Instruct over 16 × 47 tokens (the GRPO
benchmark's batch) with the weights in fp32 and in bf16, without and with peft LoRA (r=16, all
linear layers; adapter weights in the model's dtype), and the matmul shapes that dominate it.

    .venv/bin/python benchmarks/bf16_probe.py
"""
from __future__ import annotations

import argparse
import time

from record import record


def best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.time()
        fn()
        times.append(time.time() - t)
    return min(times)


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from rewardtune.models import load_causal_lm

    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results.jsonl")
    args = p.parse_args()
    res: dict = {"task": "bf16-probe"}
    for dt in ("float32", "bfloat16"):
        dtype = getattr(torch, dt)
        for m, k, n in ((752, 576, 1536), (16, 576, 1536), (528, 576, 49152)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            res[f"gflops_mm_{m}x{k}x{n}_{dt}"] = 2 * m * k * n / best(lambda: a @ b, 10) / 1e9
        model, _ = load_causal_lm("smollm2-135m-instruct")
        model = model.to(dtype).eval()
        ids = torch.randint(100, 10000, (16, 47))
        fwd = lambda: model(input_ids=ids, logits_to_keep=33)  # noqa: E731
        with torch.no_grad():
            res[f"s_forward_{dt}"] = best(fwd, args.repeat)
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
                                   autocast_adapter_dtype=False)
            res[f"s_forward_lora_{dt}"] = best(fwd, args.repeat)
    record(res, args.out)


if __name__ == "__main__":
    main()
