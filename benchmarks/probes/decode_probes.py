"""Small probes behind the seventh session's decoding work (BENCHMARKS.md, "rewardtune's own decoding loop").

    .venv/bin/python benchmarks/probes/decode_probes.py --profile sample|generate|update  # top ops of one call (fp32)
    .venv/bin/python benchmarks/probes/decode_probes.py --rows                    # sampling 16 vs 32 rows (K = 4 vs 8)
    .venv/bin/python benchmarks/probes/decode_probes.py --attention               # one decoding attention: SDPA vs matmuls
    .venv/bin/python benchmarks/probes/decode_probes.py --bf16-pack               # SmolLM2's decoding matmuls, 16 rows

SmolLM2-135M-Instruct with LoRA r=16 on all linear layers and a non-zero adapter, as in grpo_step_profile.py.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # benchmarks/, for record.py
from grpo_step_profile import PROMPTS, trained_lora_policy  # noqa: E402
from record import record  # noqa: E402


def policy() -> tuple:
    model, tok, _ = trained_lora_policy()  # fp32, prepacked, a non-zero adapter
    return model, tok


def profile_ops(what: str) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rewardtune.policies.causal_lm import GenSettings, sample
    from rewardtune.train.gen_setup import update_plan
    from rewardtune.train.pg_update import accumulate_gradients
    from rewardtune.train.gen_config import GenRLSettings
    from rewardtune.train.common import setup_reference

    model, tok = policy()
    rl, gen = GenRLSettings(kl_coef=0.04), GenSettings(max_new_tokens=32)
    ref, adv = setup_reference(model.train(), rl), torch.randn(16)
    ro = sample(model, tok, PROMPTS, 4, gen, 2000)

    def once() -> None:
        if what in ("sample", "generate"):
            sample(model, tok, PROMPTS, 4, replace(gen, fast_decode=what == "sample"), 2000)
        else:
            accumulate_gradients(lambda loss: loss.backward(), model, ref, ro, adv, update_plan(rl, gen), rl.kl_coef)
            model.zero_grad(set_to_none=True)
    once()  # warm-up (packing, oneDNN primitives)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.time()
        once()
        wall = time.time() - t
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    ops = prof.key_averages()
    top = {e.key: round(e.self_cpu_time_total / 1e6, 3) for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:8]}
    record({"task": "decode-probe-profile", "what": what, "wall_s": wall, "op_calls": sum(e.count for e in ops),
            "op_self_s": sum(e.self_cpu_time_total for e in ops) / 1e6, "top_ops_self_s": top})


def rows(repeat: int) -> None:
    import torch

    from rewardtune.policies.causal_lm import GenSettings, sample

    model, tok = policy()
    gen, times = GenSettings(max_new_tokens=32), {4: [], 8: []}

    def once(k: int) -> float:
        torch.manual_seed(0)
        t = time.time()
        sample(model, tok, PROMPTS, k, gen, 2000)
        return time.time() - t
    once(4), once(8)
    for _ in range(repeat):
        for k in (4, 8):
            times[k].append(once(k))
    record({"task": "decode-probe-rows", "s_16_rows": times[4], "s_32_rows": times[8]})


def attention(calls: int = 2000) -> None:
    import torch
    import torch.nn.functional as F

    B, Hk, G, D, L = 16, 3, 3, 64, 48  # SmolLM2: 9 query heads over 3 key/value heads; ≈48 cached positions
    q, k, v = torch.randn(B, Hk, G, D), torch.randn(B, Hk, L, D), torch.randn(B, Hk, L, D)
    keep = torch.ones(B, 1, 1, L, dtype=torch.bool)
    keep[:3, ..., :4] = False  # some left padding

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=D ** -0.5)

    def matmuls() -> torch.Tensor:
        s = torch.matmul(q, k.transpose(-1, -2)).mul_(D ** -0.5)
        return torch.matmul(s.masked_fill_(~keep, float("-inf")).softmax(-1), v)
    assert torch.allclose(sdpa(), matmuls(), atol=1e-5)
    us: dict[str, list[float]] = {"sdpa": [], "matmuls": []}
    for _ in range(2):
        for f in (sdpa, matmuls):
            t = time.perf_counter()
            for _ in range(calls):
                f()
            us[f.__name__].append((time.perf_counter() - t) / calls * 1e6)
    record({"task": "decode-probe-attention", "us_per_call": us})


def bf16_pack(repeat: int) -> None:
    import torch

    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)] * 30
    shapes.append((49152, 576))  # SmolLM2's 30 layers and its LM head
    res: dict[str, list[float]] = {}
    for name, dtype, pack in (("bf16", torch.bfloat16, False), ("bf16_packed", torch.bfloat16, True),
                              ("f32_packed", torch.float32, True)):
        ws = [torch.randn(o, i).to(dtype) for o, i in shapes]
        xs = {i: torch.randn(16, i).to(dtype) for i in (576, 1536)}
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in ws] if pack else ws
        res[name] = _token_ms(packed, ws, xs, pack, repeat)
    record({"task": "decode-probe-bf16-pack", "ms_per_token": res})


def _token_ms(packed: list, ws: list, xs: dict, pack: bool, repeat: int) -> list[float]:
    """Milliseconds for one decoding step's matmuls (every weight once), `repeat` times after a warm-up."""
    import torch

    def token() -> None:
        for p, w in zip(packed, ws):
            if pack:
                torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")
            else:
                torch.nn.functional.linear(xs[w.shape[1]], w)
    token()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        token()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["sample", "generate", "update"], help="sample: rewardtune's decoding loop; "
                    "generate: the same through transformers' generate (gen.fast_decode=false)")
    ap.add_argument("--rows", action="store_true")
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--bf16-pack", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.profile:
        profile_ops(args.profile)
    if args.rows:
        rows(args.repeat)
    if args.attention:
        attention()
    if args.bf16_pack:
        bf16_pack(args.repeat)


if __name__ == "__main__":
    main()
