"""Would bf16 weights speed up generative RL on this CPU? Matmuls, the bare model, the model with LoRA.

Times (best of `--repeat`) a forward pass of SmolLM2-135M-Instruct over 16 × 47 tokens (the GRPO
benchmark's batch) with the weights in fp32 and in bf16, without and with peft LoRA (r=16, all
linear layers; adapter weights in the model's dtype), and the matmul shapes that dominate it.

    .venv/bin/python benchmarks/probes/bf16_probe.py
    .venv/bin/python benchmarks/probes/bf16_probe.py --decode-floor   # is decoding bound by memory bandwidth?

`--decode-floor` measures instead what one decoding step's matmuls cost with torch's kernels: every linear
layer of SmolLM2-135M (30 × q, k, v, o, gate, up, down, and the 49k-wide head) on 16 rows, random weights of
the model's shapes, in fp32 and bf16; beside it the machine's read bandwidth (`sum` over 1 GiB). If the
matmuls read their weights far slower than `sum` reads memory, they are bound by the kernels, not by DRAM.
"""
from __future__ import annotations

import argparse
import time

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # benchmarks/, for record.py
from record import record  # noqa: E402


def best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.time()
        fn()
        times.append(time.time() - t)
    return min(times)


LAYER_SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # (out, in)


def decode_floor(repeat: int) -> dict:
    """Seconds per decoding step of SmolLM2-135M's matmuls alone, and GB/s of weights they read."""
    import torch
    import torch.nn.functional as F

    x = torch.ones(2**28)  # 1 GiB of fp32
    res: dict = {"task": "decode-floor", "sum_read_gb_per_s": x.numel() * 4 / best(x.sum, repeat) / 1e9}
    del x
    for dt in (torch.float32, torch.bfloat16):
        layers = [[torch.randn(o, i, dtype=dt) * 0.02 for o, i in LAYER_SHAPES] for _ in range(30)]
        head = torch.randn(49152, 576, dtype=dt) * 0.02
        name = str(dt).split(".")[-1]
        for rows in (16, 32):
            xs = {n: torch.randn(rows, n, dtype=dt) for n in (576, 1536)}

            def token() -> None:
                for layer in layers:
                    for w in layer:
                        F.linear(xs[w.shape[1]], w)
                F.linear(xs[576], head)
            s = best(token, repeat)
            n_weights = 30 * sum(o * i for o, i in LAYER_SHAPES) + head.numel()
            res |= {f"ms_per_token_{name}_rows{rows}": s * 1e3,
                    f"weights_read_gb_per_s_{name}_rows{rows}": n_weights * head.element_size() / s / 1e9,
                    f"gflops_{name}_rows{rows}": 2 * rows * n_weights / s / 1e9}
        res[f"ms_head_{name}_rows16"] = best(lambda: F.linear(xs[576][:16], head), repeat) * 1e3
    res |= packed_floor(repeat)
    return res


def packed_floor(repeat: int) -> dict:
    """The same fp32 matmuls through weights prepacked once for oneDNN (rewardtune/prepack.py), and one
    576 → 1536 layer and the head on the update's 572 / 528 rows, plain vs packed."""
    import torch
    import torch.nn.functional as F

    from rewardtune import prepack

    if not prepack.available():
        return {"packed": "unavailable"}
    pack = lambda w: torch.ops.mkldnn._reorder_linear_weight(w, 16)  # noqa: E731
    lin = lambda x, p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")  # noqa: E731
    layers = [[pack(torch.randn(o, i) * 0.02) for o, i in LAYER_SHAPES] for _ in range(30)]
    plain_head = torch.randn(49152, 576) * 0.02
    head = pack(plain_head)
    xs = {n: torch.randn(16, n) for n in (576, 1536)}

    def token() -> None:
        for layer in layers:
            for w, (_, n_in) in zip(layer, LAYER_SHAPES):
                lin(xs[n_in], w)
        lin(xs[576], head)
    res = {"ms_per_token_float32_rows16_packed": best(token, repeat) * 1e3,
           "ms_head_float32_rows16_packed": best(lambda: lin(xs[576], head), repeat) * 1e3}
    gate, x = torch.randn(1536, 576) * 0.02, torch.randn(572, 576)
    packed_gate = pack(gate)
    res |= {"ms_gate_rows572": best(lambda: F.linear(x, gate), repeat) * 1e3,
            "ms_gate_rows572_packed": best(lambda: lin(x, packed_gate), repeat) * 1e3,
            "ms_head_rows528": best(lambda: F.linear(x[:528], plain_head), repeat) * 1e3,
            "ms_head_rows528_packed": best(lambda: lin(x[:528], head), repeat) * 1e3}
    return res


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from rewardtune.models import load_causal_lm

    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results.jsonl")
    p.add_argument("--decode-floor", action="store_true", help="only the matmul floor of a decoding step")
    args = p.parse_args()
    if args.decode_floor:
        record(decode_floor(max(args.repeat, 5)), args.out)
        return
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
