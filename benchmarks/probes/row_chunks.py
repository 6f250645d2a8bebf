"""What `runtime.inference_batch_size` saves: peak memory and time of sampling and the reference pass of a large
rollout, all rows at once against row chunks, on SmolLM2-135M + LoRA r=16 (fp32, prepacked as runs do).

Each setting runs in its own process, so that its peak RSS is its own. The completions' token ids are hashed:
equal hashes show that the chunks sampled the same tokens as one pass.

    .venv/bin/python benchmarks/probes/row_chunks.py                       # 16 prompts × 8 samples × 64 tokens; rows 0, 16
    .venv/bin/python benchmarks/probes/row_chunks.py --rows "0 32 8" --prompts 8 --k 8 --tokens 128
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # benchmarks/, for record.py
from grpo_step_profile import PROMPTS, rss, trained_lora_policy  # noqa: E402
from record import record  # noqa: E402


def child(rows: int, prompts: int, k: int, tokens: int) -> dict:
    import torch

    from rewardtune.policies.causal_lm import GenSettings, sample
    from rewardtune.train.pg_update import reference_logprobs
    from rewardtune.train.gen_config import GenRLSettings
    from rewardtune.train.common import setup_reference

    torch.manual_seed(0)
    model, tok, _ = trained_lora_policy("f32")
    out: dict = {"rss_loaded": rss()}
    torch.manual_seed(1)
    t0 = time.time()
    ro = sample(model, tok, (PROMPTS * prompts)[:prompts], k, GenSettings(max_new_tokens=tokens), 512, rows=rows)
    out |= {"sample_s": round(time.time() - t0, 2), "rss_after_sample": rss()}
    t0 = time.time()
    ref = setup_reference(model, GenRLSettings())
    logp = reference_logprobs(model, ref, ro, 1.0, rows)
    out |= {"reference_s": round(time.time() - t0, 2), "rss_after_reference": rss(),
            "tokens_hash": hashlib.sha1(ro.completion_ids.numpy().tobytes()).hexdigest()[:12],
            "generated_tokens": int(ro.completion_mask.sum()), "ref_logp_sum": round(float(logp.sum()), 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="0 16", help="inference_batch_size values (0 = all rows at once)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results.jsonl")
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.prompts, args.k, args.tokens)))
        return
    for rows in map(int, args.rows.split()):
        cmd = [sys.executable, __file__, "--child", str(rows), "--prompts", str(args.prompts), "--k", str(args.k),
               "--tokens", str(args.tokens)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        record({"benchmark": "row_chunks", "rows": rows, "prompts": args.prompts, "k": args.k,
                "tokens": args.tokens, **res}, args.out)


if __name__ == "__main__":
    main()
