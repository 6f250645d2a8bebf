"""The device paths, on a CUDA GPU: skipped without one (CI and the 2-core machine have none).

Every other test runs on the CPU, so these are the only ones that reach code that moves models, reward models,
reference copies and random draws to an accelerator, and bf16 autocast on CUDA (whose backward passes run on
another thread). On a GPU machine: `.venv/bin/python -m pytest -q tests/test_gpu.py` (tiny models, well under a
minute). Each run checks that it allocated GPU memory, that its losses are finite and that held-out evaluation
measured the reference. Written on a machine without a GPU: they have only run there with "cuda" replaced by "cpu".
"""
from __future__ import annotations

import json
import math
from contextlib import ExitStack, nullcontext

import pytest
import torch

from rewardtune.config import load_config
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.rl_generate import train_rl_generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (on a GPU machine: "
                                "pytest tests/test_gpu.py)")

PROMPTS = ["the film was", "i really loved the", "this movie is a very", "the acting"]


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    return path


def run(model_dir, prompts, tmp_path, name, *extra):
    cfg = load_config(GenRLConfig, None, [
        f"model.name={model_dir}", f"data.path={prompts}", "rl.prompts_per_step=2", "rl.samples_per_prompt=3",
        "rl.steps=3", "eval.prompts=2", "eval.every=0", "rl.lr=1e-2", "gen.max_new_tokens=6",
        f"runs_dir={tmp_path}", f"name={name}", *extra])
    torch.cuda.reset_peak_memory_stats()
    out = train_rl_generate(cfg, show_progress=False)
    assert torch.cuda.max_memory_allocated() > 0  # it ran on the GPU (accelerate's default when there is one)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 3 and all(math.isfinite(r["loss"]) for r in train), train
    return out, train


@pytest.mark.parametrize("extra", [[], ["runtime.mixed_precision=bf16"], ["rl.algorithm=ppo", "runtime.mixed_precision=bf16"],
                                   ["rl.algorithm=ppo", "rl.kl_mode=loss", "rl.kl_estimator=k3"]])
def test_lora_runs_on_the_gpu(tiny_causal_lm_dir, prompts_file, tmp_path, extra):
    out, train = run(tiny_causal_lm_dir, prompts_file, tmp_path, "lora", "model.lora.r=4", "model.lora.alpha=16", *extra)
    assert "kl_greedy" in out["eval"] and "ref_perplexity" in out["eval"]
    assert all("kl" in r for r in train)


def test_full_fine_tuning_keeps_its_frozen_reference_on_the_gpu(tiny_causal_lm_dir, prompts_file, tmp_path):
    out, _ = run(tiny_causal_lm_dir, prompts_file, tmp_path, "full", "model.lora.r=0", "rl.kl_coef=0.1", "rl.lr=1e-3",
                 "eval.best_metric=kl_greedy", "eval.best_mode=min")
    assert "kl_greedy" in out["eval"]


def test_a_reward_model_scores_on_the_gpu(tiny_encoder_dir, tiny_causal_lm_dir, prompts_file, tmp_path):
    from rewardtune.rewards import build_rewards
    from rewardtune.train.reward_model import RMConfig, train_reward_model

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "", "chosen": f"great film {i}", "rejected": f"awful film {i}"}) + "\n"
                             for i in range(16)))
    train_reward_model(load_config(RMConfig, None, [
        f"model.name={tiny_encoder_dir}", f"data.path={pairs}", "data.val_fraction=0.25", "train.epochs=1",
        "train.batch_size=4", "train.max_length=16", "rm.mode=pairwise", f"runs_dir={tmp_path}", "name=rm"]),
        show_progress=False)
    best = tmp_path / "rm" / "checkpoints" / "best"
    rm = build_rewards((f"rm:{best}",), device=torch.device("cuda")).fns[f"rm:{best}"]
    assert {p.device.type for p in rm.model.parameters()} == {"cuda"}
    run(tiny_causal_lm_dir, prompts_file, tmp_path, "rm-policy", "model.lora.r=4", f"reward.functions=[rm:{best}]")


def test_the_chunked_head_backward_keeps_the_forward_s_autocast_on_cuda():
    """CUDA runs backward on its own thread: the gradient must be the bf16 one computed under the forward's autocast
    (the same whether backward is called inside or outside the autocast block), not an fp32 recomputation."""
    from rewardtune.policies.head import chunked_token_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False).cuda()
    hidden = torch.randn(5, 16, device="cuda", requires_grad=True)
    labels = torch.randint(0, 300, (5,), device="cuda")
    grads = []
    for inside in (True, False):
        hidden.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logp, _ = chunked_token_logprobs(hidden, head, labels, entropy=False)
            if inside:
                logp.sum().backward()
        if not inside:
            logp.sum().backward()
        grads.append(hidden.grad.clone())
    assert torch.equal(grads[0], grads[1])


def cuda_lora_llama(tiny_causal_lm_dir):
    from rewardtune.config import LoraSettings
    from rewardtune.models import apply_lora, load_causal_lm
    from test_decode import trained_looking

    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    return trained_looking(apply_lora(model, LoraSettings(r=4, alpha=8))).cuda(), tok


def debug_mode(mode, fn):
    """fn run with torch.cuda's sync debug mode set to `mode`, the previous mode restored after."""
    def run(*args, **kwargs):
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(before)
    return run


def no_sync_while_stepping(module):
    """`module.run_steps` (the token loop) under sync debug mode "error": any host–device synchronisation in it
    raises. The set-up before it (prefill, buffers), the one cut after it and the graph's capture, once per decode
    (`torch.cuda.graph` synchronises the device before capturing), may synchronise."""
    from unittest import mock

    from rewardtune.policies.decode_graph import Replay

    stack = ExitStack()
    stack.enter_context(mock.patch.object(module, "run_steps", debug_mode("error", module.run_steps)))
    stack.enter_context(mock.patch.object(Replay, "capture", debug_mode("default", Replay.capture)))
    return stack


@pytest.mark.parametrize("bf16", [False, True])
def test_decoding_does_not_synchronise_per_token_and_the_graph_replays_what_the_loop_decodes(tiny_causal_lm_dir, bf16):
    from dataclasses import replace

    from rewardtune.policies import decode, decode_graph
    from rewardtune.policies.causal_lm import GenSettings, sample
    from test_decode import assert_same
    from test_decode_sync import static_rollout

    model, tok = cuda_lora_llama(tiny_causal_lm_dir)
    gen = GenSettings(max_new_tokens=12, temperature=1.3, top_k=20, top_p=0.9, check_every=-1)
    out = {}
    for name, changes in {"loop": {}, "graph": {"cuda_graph": True}, "checked": {"check_every": 0}}.items():
        strict = name != "checked"  # auto looks every 32 tokens: a synchronisation, wanted
        torch.manual_seed(5)
        with no_sync_while_stepping(decode) if strict else nullcontext(), \
                no_sync_while_stepping(decode_graph) if strict else nullcontext(), \
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out[name] = sample(model, tok, PROMPTS, 3, replace(gen, **changes), 100)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        static = static_rollout(model, tok, gen, False)  # the captured step, run eagerly: the same kernels
    assert_same(out["graph"], static, atol=0.0)
    assert_same(out["checked"], out["loop"], atol=0.0)
    if not bf16:  # (in bf16, attention over the whole static cache rounds otherwise than over the slots so far)
        assert_same(out["graph"], out["loop"])
    assert out["loop"].completion_ids.device.type == "cuda"

