"""Where one GRPO step on SmolLM2-135M + LoRA goes: seconds and resident memory per phase.

The phases of `train_rl_generate`'s step, called directly on the benchmark's shapes (4 prompts ×
4 samples, 32 new tokens, LoRA r=16 on all linear layers, fp32): sampling, reward-model scoring,
the reference forward (adapter disabled), and the policy forward + backward in micro-batches. Each
configuration runs in its own process so that its peak RSS is its own; the update is run `--repeat`
times and the fastest is reported (the machine's noise is ±10–20%).

    .venv/bin/python benchmarks/probes/grpo_step_profile.py --rm RM_DIR
    .venv/bin/python benchmarks/probes/grpo_step_profile.py --rm RM_DIR --configs "16,0,0 4,1,16"   # mb,checkpointing,mmap MiB
    .venv/bin/python benchmarks/probes/grpo_step_profile.py --rm RM_DIR --samplers --repeat 4   # sampling alone, A/B
    .venv/bin/python benchmarks/probes/grpo_step_profile.py --decode f32,bf16   # prefill sharing, adapter cost
    .venv/bin/python benchmarks/probes/grpo_step_profile.py --ref-ab --repeat 4   # one reference pass vs one per micro-batch
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # benchmarks/, for record.py
from record import peak_rss_mib, record  # noqa: E402

PROMPTS = ["I rented I AM CURIOUS-YELLOW from my video", "This movie was a total waste of time and",
           "An absolutely wonderful film that I will never", "The plot of this film is thin but the"]


def rss() -> tuple[float, float]:
    """(current, peak) resident set in MiB."""
    cur = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return round(cur), round(peak_rss_mib())


def child(args: argparse.Namespace, mb: int, gc: bool, dtype: str = "f32", share: bool = True,
          pack: bool = True) -> dict:
    import torch

    from rewardtune.config import LoraSettings
    from rewardtune.memory import return_freed_memory
    from rewardtune.models import apply_lora, enable_checkpointing, load_causal_lm
    from rewardtune.policies.causal_lm import GenSettings, sample
    from rewardtune.prepack import prepack_frozen_linears
    from rewardtune.rewards import reward_model
    from rewardtune.train.gen_setup import update_plan
    from rewardtune.train.pg_update import accumulate_gradients, reference_logprobs
    from rewardtune.train.gen_config import GenRLSettings, RuntimeSettings
    from rewardtune.train.common import setup_reference

    return_freed_memory()  # reads REWARDTUNE_MMAP_THRESHOLD_MB, as start_run does
    if not share:  # every row its own group: the one-pass forward (what rewardtune did before sharing prompts)
        import rewardtune.policies.causal_lm as policy
        policy.prompt_groups = lambda ids, mask: (torch.arange(len(ids)), torch.arange(len(ids)))
    torch.manual_seed(0)
    out: dict = {"rss_start": rss()}
    base = {"f32": "float32", "bf16": "bfloat16"}[dtype]
    model, tok = load_causal_lm("smollm2-135m-instruct", getattr(torch, base))
    if gc:
        enable_checkpointing(model)
    model = apply_lora(model, LoraSettings(r=16, alpha=32, base_dtype=base)).train()
    if pack:  # as the run's setup does (model.lora.prepack, on by default; fp32 weights only)
        prepack_frozen_linears(model)
    rm = reward_model(args.rm)
    out["rss_loaded"] = rss()
    rl, gen, rt = GenRLSettings(kl_coef=0.04), GenSettings(max_new_tokens=32), RuntimeSettings(micro_batch_size=mb)
    ref = setup_reference(model, rl)
    t = time.time()
    ro = sample(model, tok, PROMPTS, 4, gen, 2000)
    out |= {"s_sample": time.time() - t, "rss_sampled": rss(), "tokens": int(ro.completion_mask.sum())}
    t = time.time()
    rm(ro.prompts, ro.completions)
    out |= {"s_score": time.time() - t}
    t = time.time()
    reference_logprobs(model, ref, ro, 1.0)
    out |= {"s_reference": time.time() - t}
    adv, times = torch.randn(16), []
    for _ in range(args.repeat):  # the update includes its own reference passes (KL loss term)
        t = time.time()
        accumulate_gradients(lambda loss: loss.backward(), model, ref, ro, adv, update_plan(rl, gen, rt), rl.kl_coef)
        times.append(time.time() - t)
        model.zero_grad(set_to_none=True)
    out |= {"s_update_min": min(times), "s_update_all": times, "rss_end": rss()}
    return out


def compare_samplers(repeat: int) -> dict:
    """Seconds to sample 16 × 32 tokens: `generate(do_sample=True, output_logits=True)` (multinomial, logits kept
    for the log-probs, as rewardtune did before) vs rewardtune's `sample` (TokenSampler), interleaved."""
    import torch

    from rewardtune.config import LoraSettings
    from rewardtune.models import apply_lora, load_causal_lm
    from rewardtune.policies.causal_lm import GenSettings, sample

    model, tok = load_causal_lm("smollm2-135m-instruct")
    model = apply_lora(model, LoraSettings(r=16, alpha=32))
    model.generation_config.eos_token_id = None  # always 32 tokens, so both do the same work
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].repeat_interleave(4, 0), enc["attention_mask"].repeat_interleave(4, 0)
    times: dict[str, list[float]] = {"generate_multinomial": [], "token_sampler": []}
    steps: list[int] = []
    with torch.no_grad():
        for _ in range(repeat + 1):  # the first round warms up and is dropped
            t = time.time()
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=32, min_new_tokens=32,
                                 pad_token_id=tok.pad_token_id, return_dict_in_generate=True, output_logits=True)
            torch.stack(out.logits, 1).log_softmax(-1)
            times["generate_multinomial"].append(time.time() - t)
            t = time.time()
            ro = sample(model, tok, PROMPTS, 4, GenSettings(max_new_tokens=32), 2000)
            times["token_sampler"].append(time.time() - t)
            steps.append(ro.completion_ids.shape[1])  # decoding steps: 32 unless every row ended early
    return {k: v[1:] for k, v in times.items()} | {"token_sampler_steps": steps[1:]}


def trained_lora_policy(dtype: str = "f32", pack: bool = True) -> tuple:
    """SmolLM2 with LoRA r=16 on all linear layers, in eval mode, its B matrices non-zero (a trained-looking
    adapter, so its matmuls are not skipped); frozen fp32 weights prepacked as the run does.
    → (model, tokenizer, number of packed layers)"""
    import torch

    from rewardtune.config import LoraSettings
    from rewardtune.models import apply_lora, load_causal_lm
    from rewardtune.prepack import prepack_frozen_linears

    base = {"f32": "float32", "bf16": "bfloat16"}[dtype]
    model, tok = load_causal_lm("smollm2-135m-instruct", getattr(torch, base))
    model = apply_lora(model, LoraSettings(r=16, alpha=32, base_dtype=base)).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    return model, tok, prepack_frozen_linears(model) if pack else 0


def decode_costs(repeat: int, dtype: str, pack: bool = True) -> dict:
    """Sampling alone (16 × 32 tokens, LoRA r=16 with a non-zero adapter): rewardtune's decoding loop with
    each prompt prefilled once (the default) vs transformers' `generate` (gen.fast_decode=false), vs
    once per row, and with the adapter disabled (what a free adapter would give), interleaved; then one
    profiled sampling call: the share of the matmuls (`aten::mm`, and oneDNN's packed linear when fp32 weights
    are prepacked, as the run does) and the bytes of weights they read."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rewardtune.policies.causal_lm import GenSettings, sample

    model, tok, packed = trained_lora_policy(dtype, pack)
    gen = GenSettings(max_new_tokens=32)

    def once(share: bool = True, fast: bool = True) -> float:
        torch.manual_seed(0)
        t = time.time()
        sample(model, tok, PROMPTS, 4, replace(gen, fast_decode=fast), 2000, share_prompt=share)
        return time.time() - t
    once()
    once(fast=False)
    times: dict[str, list[float]] = {"shared_prefill": [], "generate": [], "prefill_per_row": [],
                                     "adapter_disabled": []}
    for _ in range(repeat):
        times["shared_prefill"].append(once(True))
        times["generate"].append(once(True, fast=False))  # transformers' generate instead of rewardtune's loop
        times["prefill_per_row"].append(once(False))
        with model.disable_adapter():
            times["adapter_disabled"].append(once(True))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        once()
    ops = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in ops.values())
    mm = sum(ops[k].self_cpu_time_total for k in ("aten::mm", "mkldnn::_linear_pointwise") if k in ops)  # plain, packed
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"base_weights": dtype, "prepacked_layers": packed, **times, "mm_share": mm / total, "mm_s": mm / 1e6,
            "weights_read_gb_per_s": 33 * weight_bytes / (mm / 1e6) / 1e9}  # 33 forwards read every weight once


def reference_once_ab(repeat: int) -> dict:
    """bf16 base weights, micro-batches of 4, KL loss term: the update as `accumulate_gradients` runs it (one
    reference pass over the rollout first) against one reference pass per micro-batch (before the sixth
    session), interleaved in one process."""
    import torch

    from rewardtune.config import LoraSettings
    from rewardtune.memory import cap_onednn_cache
    from rewardtune.models import apply_lora, load_causal_lm
    from rewardtune.policies.causal_lm import GenSettings, sample
    from rewardtune.train.gen_setup import update_plan
    from rewardtune.train.pg_update import accumulate_gradients, policy_loss, reference_logprobs
    from rewardtune.train.gen_config import GenRLSettings, RuntimeSettings
    from rewardtune.train.common import setup_reference

    cap_onednn_cache()
    model, tok = load_causal_lm("smollm2-135m-instruct", torch.bfloat16)
    model = apply_lora(model, LoraSettings(r=16, alpha=32, base_dtype="bfloat16")).train()
    rl, gen, rt = GenRLSettings(kl_coef=0.04), GenSettings(max_new_tokens=32), RuntimeSettings(micro_batch_size=4)
    ref = setup_reference(model, rl)
    torch.manual_seed(0)
    ro, adv = sample(model, tok, PROMPTS, 4, gen, 2000), torch.randn(16)

    def once_first() -> float:
        t = time.time()
        accumulate_gradients(lambda loss: loss.backward(), model, ref, ro, adv, update_plan(rl, gen, rt), rl.kl_coef)
        model.zero_grad(set_to_none=True)
        return time.time() - t

    def per_micro_batch() -> float:
        t = time.time()
        for s in range(0, 16, 4):
            rows = ro.rows(slice(s, s + 4))
            ref_logp = reference_logprobs(model, ref, rows, gen.temperature)
            policy_loss(model, rows, adv[s:s + 4], ro.completion_mask, update_plan(rl, gen, rt), rl.kl_coef, ref_logp=ref_logp)[0].backward()
        model.zero_grad(set_to_none=True)
        return time.time() - t
    once_first(), per_micro_batch()
    times: dict[str, list[float]] = {"per_micro_batch": [], "once_first": []}
    for _ in range(repeat):
        times["per_micro_batch"].append(per_micro_batch())
        times["once_first"].append(once_first())
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rm", help="reward model folder (not needed by --samplers and --decode)")
    p.add_argument("--configs", default="16,0,0 16,0,16 4,0,16 4,1,16",
                   help="micro_batch,checkpointing,mmap_MiB[,f32|bf16 base weights[,share prompts 1|0[,prepack 1|0]]] ...")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--samplers", action="store_true", help="only compare generate's sampling with rewardtune's")
    p.add_argument("--decode", default="", help="only time sampling (f32, bf16 or f32,bf16): prefill sharing, "
                   "adapter cost, share of matmuls")
    p.add_argument("--ref-ab", action="store_true", help="only the reference pass once vs per micro-batch (bf16, mb 4)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results.jsonl")
    args = p.parse_args()
    if args.ref_ab:
        record(reference_once_ab(args.repeat) | {"task": "grpo-reference-once-ab"}, args.out)
        return
    if args.samplers:
        record(compare_samplers(args.repeat) | {"task": "grpo-sampler-compare"}, args.out)
        return
    for dtype in filter(None, args.decode.split(",")):
        record(decode_costs(args.repeat, dtype) | {"task": "grpo-decode-costs"}, args.out)
    if args.decode:
        return
    if not args.rm:
        p.error("--rm RM_DIR is needed to profile a step")
    if args.child:
        mb, gc, _, dtype, share, pack = (args.child.split(",") + ["f32", "1", "1"][len(args.child.split(",")) - 3:])[:6]
        print("RESULT " + json.dumps(child(args, int(mb), bool(int(gc)), dtype, bool(int(share)), bool(int(pack)))),
              flush=True)
        return
    for cfg in args.configs.split():
        mb, gc, mmap, dtype, share, pack = (cfg.split(",") + ["f32", "1", "1"][len(cfg.split(",")) - 3:])[:6]
        env = {**os.environ, "REWARDTUNE_MMAP_THRESHOLD_MB": mmap}
        proc = subprocess.run([sys.executable, __file__, "--rm", args.rm, "--repeat", str(args.repeat), "--child", cfg],
                              env=env, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(proc.stderr[-3000:])
        res = json.loads(line[0][7:]) | {"micro_batch": int(mb), "checkpointing": bool(int(gc)), "mmap_threshold_mib": int(mmap),
                                         "base_weights": dtype, "shared_prompts": bool(int(share)),
                                         "prepacked": bool(int(pack)) and dtype == "f32"}
        record(res | {"task": "grpo-step-profile"}, args.out)


if __name__ == "__main__":
    main()
