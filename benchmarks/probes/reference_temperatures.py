"""What held-out evaluation at a temperature τ ≠ 1 saves by taking log π_ref at τ (for the KL) and at 1 (for the
perplexity) from one reference pass (`reference_logprobs_at`) instead of two: seconds per evaluation's reference
work on SmolLM2-135M + LoRA r=16 (fp32), and whether the results are bit-identical.

    .venv/bin/python benchmarks/probes/reference_temperatures.py                  # 16 prompts × 4 samples × 24 tokens, τ 0.7
    .venv/bin/python benchmarks/probes/reference_temperatures.py --repeat 3 --temperature 1.5
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import torch

    from rewardtune.config import LoraSettings
    from rewardtune.models import apply_lora, load_causal_lm
    from rewardtune.policies.causal_lm import GenSettings, sample
    from rewardtune.train.pg_update import reference_logprobs, reference_logprobs_at

    model, tok = load_causal_lm("smollm2-135m-instruct")
    model = apply_lora(model, LoraSettings(r=16, alpha=32))
    demo = Path(__file__).resolve().parents[2] / "rewardtune" / "demo" / "prompts.jsonl"
    prompts = [json.loads(line)["prompt"] for line in demo.read_text().splitlines()][:args.prompts]
    torch.manual_seed(0)
    t = args.temperature
    with torch.no_grad():
        ro = sample(model, tok, prompts, args.k, GenSettings(max_new_tokens=args.tokens, temperature=t), 10**9)
    ref = model.disable_adapter
    reference_logprobs(model, ref, ro, 1.0)  # warm-up (and the one-off head probe)
    for _ in range(args.repeat):
        start = time.perf_counter()
        apart = [reference_logprobs(model, ref, ro, x) for x in (t, 1.0)]
        two = time.perf_counter() - start
        start = time.perf_counter()
        both = reference_logprobs_at(model, ref, ro, (t, 1.0))
        one = time.perf_counter() - start
        same = all(torch.equal(a, b) for a, b in zip(apart, both))
        print(f"{len(prompts)} prompts x {args.k} samples x {args.tokens} tokens at T={t}: two passes {two:.2f} s, "
              f"one pass {one:.2f} s, bit-identical {same}")


if __name__ == "__main__":
    main()
