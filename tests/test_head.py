"""Chunked LM-head log-probs (rewardtune/policies/head.py) equal the whole-logits computation in value,
entropy and gradient (hidden states and a trainable head), across chunk boundaries; and the policy's
`token_logprobs`, which uses them, equals log-softmax over the model's own logits."""
from __future__ import annotations

import pytest
import torch

from rewardtune.algorithms import entropy_from_logits, logprobs_from_logits
from rewardtune.config import LoraSettings
from rewardtune.models import apply_lora, load_causal_lm
from rewardtune.policies import head as head_mod
from rewardtune.policies.causal_lm import completion_logits, token_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunks_equal_the_whole_logits_in_value_entropy_and_gradient(monkeypatch, temperature):
    monkeypatch.setattr(head_mod, "CHUNK_BYTES", 3 * 4 * 50)  # 3 rows of a 50-word vocabulary per chunk: 4 chunks
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 5))
    logp, ent = head_mod.chunked_token_logprobs(hidden, lin, labels, temperature)
    g = torch.randn(2, 5)
    grads = torch.autograd.grad((logp * g).sum(), [hidden, lin.weight])

    z = lin(hidden) / temperature  # (2, 5, 50) the unchunked reference
    ref = logprobs_from_logits(z, labels)
    ref_grads = torch.autograd.grad((ref * g).sum(), [hidden, lin.weight])
    assert torch.allclose(logp, ref, atol=1e-6)
    assert torch.allclose(ent, entropy_from_logits(z), atol=1e-6) and not ent.requires_grad
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert head_mod.chunked_token_logprobs(hidden, lin, labels, temperature, entropy=False)[1] is None


def test_a_head_with_a_bias_is_refused():
    with pytest.raises(ValueError, match="bias-free"):
        head_mod.chunked_token_logprobs(torch.randn(2, 4), torch.nn.Linear(4, 6), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("lora", [True, False])
def test_policy_token_logprobs_equal_log_softmax_of_the_model_logits(tiny_causal_lm_dir, lora, shared):
    """LoRA (frozen head) and full fine-tuning (the head tied to the embeddings, trained), with rows that share
    their prompt (one prompt pass per group) or not: the final hidden states fed to the chunked head are the
    ones the model's own head sees, and the gradients agree."""
    torch.manual_seed(0)
    model, _ = load_causal_lm(str(tiny_causal_lm_dir))
    if lora:
        model = apply_lora(model, LoraSettings(r=4, alpha=8))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(3, 60, (4, 9))  # 5 prompt tokens, 4 completion tokens
    mask = torch.ones_like(ids)
    mask[2:, 0] = 0  # rows 2-3 left-padded
    if shared:  # two groups of two rows: each prompt goes through the model once
        ids[1, :5], ids[3, :5] = ids[0, :5], ids[2, :5]
    params = [p for p in model.parameters() if p.requires_grad]

    def grads_of(logp: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(logp.sum(), params, allow_unused=True)

    logp, ent = token_logprobs(model, ids, mask, 4, temperature=0.9)
    logits = completion_logits(model, ids, mask, 4).float() / 0.9  # (4, 4, V) through the model's own head
    ref = logprobs_from_logits(logits, ids[:, -4:])
    assert torch.allclose(logp, ref, atol=1e-5) and torch.allclose(ent, entropy_from_logits(logits), atol=1e-5)
    for a, b in zip(grads_of(logp), grads_of(ref)):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-5))


def test_a_model_that_soft_caps_its_logits_keeps_its_own_logits(tmp_path):
    """Gemma 2 soft-caps the head's output (30·tanh(z/30)); the chunked head would miss that, so the check
    sends such models down the whole-logits path, and the log-probs are the model's."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    from rewardtune.policies.head import logits_are_head_outputs

    torch.manual_seed(0)
    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16, max_position_embeddings=32)
    capped = Gemma2ForCausalLM(Gemma2Config(**small, final_logit_softcapping=1.0)).eval()
    plain = LlamaForCausalLM(LlamaConfig(**small)).eval()
    assert not logits_are_head_outputs(capped) and logits_are_head_outputs(plain)
    ids, mask = torch.randint(3, 60, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    for model in (capped, plain):
        logp, _ = token_logprobs(model, ids, mask, 3)
        ref = logprobs_from_logits(completion_logits(model, ids, mask, 3).float(), ids[:, -3:])
        assert torch.allclose(logp, ref, atol=1e-5)


def test_the_check_holds_under_a_bf16_autocast_forward(tiny_causal_lm_dir):
    """accelerate's bf16 mixed precision wraps the prepared model's forward in autocast, and evaluation calls it
    outside any autocast of its own: the check must still find a plain head (it compares the head's output within
    that call; a head recomputed in fp32 differed from the bf16 logits and turned the chunked head off for good)."""
    from rewardtune.policies.head import logits_are_head_outputs

    model, _ = load_causal_lm(str(tiny_causal_lm_dir))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(300)  # logits of a real model's size: bf16 rounding ≫ 1e-3
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)  # as accelerate patches it
    assert logits_are_head_outputs(model)


def test_bf16_base_weights_give_the_whole_logits_log_probs(tiny_causal_lm_dir):
    """bf16 frozen weights (model.lora.base_dtype=bfloat16): the chunked head computes the bf16 logits the
    model's own head would, then works in float32 as the whole-logits path does."""
    torch.manual_seed(0)
    model, _ = load_causal_lm(str(tiny_causal_lm_dir), torch.bfloat16)
    model = apply_lora(model, LoraSettings(r=4, alpha=8, base_dtype="bfloat16"))
    ids, mask = torch.randint(3, 60, (3, 8)), torch.ones(3, 8, dtype=torch.long)
    logp, _ = token_logprobs(model, ids, mask, 3)
    ref = logprobs_from_logits(completion_logits(model, ids, mask, 3).float(), ids[:, -3:])
    assert logp.dtype == torch.float32 and torch.allclose(logp, ref, atol=1e-3)
    logp.sum().backward()  # reaches the float32 adapter through the bf16 head
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_the_backward_pass_runs_under_the_forward_s_autocast():
    """On CUDA the backward pass runs on another thread, outside the caller's autocast. Simulated on the CPU by
    calling backward after leaving autocast: the gradient must be the one computed inside it (bf16 recomputation),
    not an fp32 one."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    hidden, labels = torch.randn(5, 16, requires_grad=True), torch.randint(0, 300, (5,))
    grads = []
    for inside in (True, False):
        hidden.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, _ = head_mod.chunked_token_logprobs(hidden, head, labels, entropy=False)
            if inside:
                logp.sum().backward()
        if not inside:
            logp.sum().backward()
        grads.append(hidden.grad.clone())
    hidden.grad = None
    head_mod.chunked_token_logprobs(hidden, head, labels, entropy=False)[0].sum().backward()  # fp32 throughout
    assert torch.equal(grads[0], grads[1]) and not torch.allclose(grads[1], hidden.grad, atol=1e-4)


def test_the_check_holds_for_a_model_that_ignores_logits_to_keep(tiny_causal_lm_dir):
    from rewardtune.policies.head import logits_are_head_outputs

    model, _ = load_causal_lm(str(tiny_causal_lm_dir))
    forward = model.forward
    model.forward = lambda **kw: forward(**{k: v for k, v in kw.items() if k != "logits_to_keep"})  # every position
    assert logits_are_head_outputs(model)
