"""rewardtune's own decoding loop (`policies/decode.py`) against transformers' `generate`."""
from __future__ import annotations

from dataclasses import replace
from unittest import mock

import pytest
import torch

from rewardtune.config import LoraSettings
from rewardtune.models import apply_lora, load_causal_lm
from rewardtune.policies import decode
from rewardtune.policies.causal_lm import GenSettings, prompt_cache, sample
from rewardtune.prepack import prepack_frozen_linears
from test_causal_lm_policy import byte_level_policy

PROMPTS = ["the film was", "i really loved the", "this movie is a very", "the acting"]
BF16_ATOL = 2e-2  # bf16 rounding differs between a one-position step and generate's (same math, other kernels)


def trained_looking(model):
    """LoRA B matrices are zero at the start, which would hide a wrong adapter path: give them values."""
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model


def tiny(kind: str, tok, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    torch.manual_seed(0)
    settings = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    cfg = config_cls(**(settings | extra))
    return model_cls(cfg).eval()


def both(model, tok, gen: GenSettings, k: int, seed: int = 3, prompts=PROMPTS, **kw):
    """The same rollout twice from the same seed: rewardtune's loop, then `generate` (each checked to have run)."""
    out = []
    for fast in (True, False):
        torch.manual_seed(seed)
        with mock.patch.object(decode, "decode", wraps=decode.decode) as loop:
            out.append(sample(model, tok, prompts, k, replace(gen, fast_decode=fast), 100, **kw))
        assert loop.call_count == int(fast)
    return out


def assert_same(fast, slow, atol: float = 1e-5):
    assert torch.equal(fast.completion_ids, slow.completion_ids), (fast.completion_ids, slow.completion_ids)
    assert torch.equal(fast.completion_mask, slow.completion_mask) and fast.completions == slow.completions
    assert torch.allclose(fast.logprobs, slow.logprobs, atol=atol), (fast.logprobs - slow.logprobs).abs().max()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("k,share,greedy", [(1, True, True), (3, True, False), (3, False, False)])
def test_loop_samples_what_generate_samples(tiny_causal_lm_dir, kind, k, share, greedy):
    _, tok = load_causal_lm(str(tiny_causal_lm_dir))
    model = trained_looking(apply_lora(tiny(kind, tok), LoraSettings(r=4, alpha=8)))
    fast, slow = both(model, tok, GenSettings(max_new_tokens=7, temperature=1.3, top_k=20), k,
                      share_prompt=share, greedy=greedy)
    assert fast.completion_ids.shape == (len(PROMPTS) * k, 7)
    assert_same(fast, slow)
    assert (fast.prompt_mask == 0).any()  # left padding was exercised


def test_loop_matches_generate_with_packed_weights_full_model_and_adapter_off(tiny_causal_lm_dir):
    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    gen = GenSettings(max_new_tokens=6)
    assert_same(*both(model, tok, gen, 2))  # full fine-tuning: plain nn.Linear projections, trainable
    lora = trained_looking(apply_lora(model, LoraSettings(r=4, alpha=8)))
    assert prepack_frozen_linears(lora) > 0
    assert_same(*both(lora, tok, gen, 2))  # base layers through the packed weights in both
    with lora.disable_adapter():  # the reference policy: the adapter must not be added
        off = both(lora, tok, gen, 2)
    assert_same(*off)
    assert not torch.equal(off[0].logprobs, both(lora, tok, gen, 2)[0].logprobs)


def test_loop_with_bf16_base_weights_and_a_float32_adapter(tiny_causal_lm_dir):
    model, tok = load_causal_lm(str(tiny_causal_lm_dir), torch.bfloat16)
    model = trained_looking(apply_lora(model, LoraSettings(r=4, alpha=8, base_dtype="bfloat16")))
    assert_same(*both(model, tok, GenSettings(max_new_tokens=6, temperature=1.2), 2), atol=BF16_ATOL)


def test_loop_under_bf16_autocast_as_the_run_samples(tiny_causal_lm_dir):
    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    model = trained_looking(apply_lora(model, LoraSettings(r=4, alpha=8)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # runtime.mixed_precision=bf16 samples under autocast
        assert_same(*both(model, tok, GenSettings(max_new_tokens=6, temperature=1.2), 2), atol=BF16_ATOL)


@pytest.mark.parametrize("extra", [dict(head_dim=16, attention_bias=True, mlp_bias=True),  # head_dim ≠ 32 / 4
                                   dict(num_key_value_heads=1), dict(num_key_value_heads=4),  # one group; no grouping
                                   dict(rope_scaling={"rope_type": "linear", "factor": 2.0})])
def test_loop_matches_generate_on_llama_variants(tiny_causal_lm_dir, extra):
    _, tok = load_causal_lm(str(tiny_causal_lm_dir))
    model = trained_looking(apply_lora(tiny("llama", tok, **extra), LoraSettings(r=4, alpha=8)))
    assert_same(*both(model, tok, GenSettings(max_new_tokens=6, temperature=1.2), 2))


def test_one_token_prompts_and_the_checkpoints_generation_config(tiny_causal_lm_dir):
    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    lora = trained_looking(apply_lora(model, LoraSettings(r=4, alpha=8)))
    fast, slow = both(lora, tok, GenSettings(max_new_tokens=5), 2, prompts=["film", "movie"])
    assert fast.prompt_ids.shape[1] == 1  # no prefill: the loop starts from an empty cache
    assert_same(fast, slow)
    # A checkpoint's own generation settings must not reach the sampler's scores, on either path
    model.generation_config.repetition_penalty, model.generation_config.no_repeat_ngram_size = 5.0, 1
    fast2, slow2 = both(lora, tok, GenSettings(max_new_tokens=5), 2, prompts=["film", "movie"])
    assert_same(fast2, slow2)
    assert_same(fast2, fast)
    assert model.generation_config.repetition_penalty == 5.0  # and the model's config is left as it was


class Script:
    """A `choose` that plays a fixed token table (B, T), recording nothing: EOS and pad bookkeeping only."""

    def __init__(self, table: torch.Tensor):
        self.table, self.t = table, 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.t += 1
        return self.table[:, self.t - 1]

    def processor(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # the same, for generate
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, self(scores)[:, None], 0.0)


def test_rows_that_emit_eos_get_pad_and_the_loop_stops_when_all_have(tiny_causal_lm_dir):
    from transformers import GenerationConfig, LogitsProcessorList

    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    eos, pad, w = tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("film")
    table = torch.tensor([[w, eos, w, w, w, w], [w, w, w, eos, w, w], [eos, w, w, w, w, w]])  # all end by step 4
    enc = tok(PROMPTS[:3], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    prefix = decode.cache_layers(prompt_cache(model, ids, mask, 1))
    ours = decode.decode(model, ids, mask, prefix, Script(table), 6, [eos], pad)
    assert ours.tolist() == [[w, eos, pad, pad], [w, w, w, eos], [eos, pad, pad, pad]]
    assert prefix == [None, None]  # the prompt's keys/values were handed over, not kept twice
    config = GenerationConfig(do_sample=False, max_new_tokens=6, pad_token_id=pad, eos_token_id=[eos])
    theirs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                            logits_processor=LogitsProcessorList([Script(table).processor]))
    assert torch.equal(ours, theirs[:, ids.shape[1]:])


def test_unsupported_models_take_generate(tiny_causal_lm_dir, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    _, tok = load_causal_lm(str(tiny_causal_lm_dir))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert "gpt2" in decode.unsupported(gpt2)
    mistral = MistralForCausalLM(MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                               sliding_window=8))
    assert "mistral" in decode.unsupported(mistral)
    qwen = tiny("qwen2", tok, use_sliding_window=True, sliding_window=4)
    assert decode.unsupported(qwen) == "sliding-window attention"
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(tiny("llama", tok), LoraConfig(r=2, target_modules="all-linear", use_dora=True))
    assert "DoRA" in decode.unsupported(dora)
    from peft import IA3Config

    ia3 = get_peft_model(tiny("llama", tok), IA3Config(target_modules=["q_proj", "down_proj"],
                                                       feedforward_modules=["down_proj"]))
    assert "IA3" in decode.unsupported(ia3)
    merged = apply_lora(tiny("llama", tok), LoraSettings(r=4, alpha=8))
    merged.merge_adapter()
    assert "merged" in decode.unsupported(merged)
    llama = apply_lora(tiny("llama", tok), LoraSettings(r=4, alpha=8))
    assert decode.unsupported(llama) is None
    calls = []
    real = decode.decode
    monkeypatch.setattr(decode, "decode", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for model, gen in ((gpt2, GenSettings(max_new_tokens=3)), (dora, GenSettings(max_new_tokens=3)),
                       (llama, GenSettings(max_new_tokens=3, fast_decode=False))):
        sample(model, tok, PROMPTS[:2], 1, gen, 50)
    assert not calls
    sample(llama, tok, PROMPTS[:2], 1, GenSettings(max_new_tokens=3), 50)
    assert calls == [1]


@pytest.mark.parametrize("stops,pad_is_eos", [(("e",), False), (("e", "th"), False), (("ing ",), False),
                                              (("e",), True)])
def test_stop_strings_end_rows_where_generate_ends_them(stops, pad_is_eos):
    model, tok = byte_level_policy()  # stop strings need a tokenizer with real token strings
    tok.padding_side = "left"  # as load_causal_lm sets it
    if pad_is_eos:  # as load_causal_lm sets it for tokenizers without a pad token
        tok.pad_token = tok.eos_token
        model.config.pad_token_id = model.generation_config.pad_token_id = tok.eos_token_id
    model = trained_looking(apply_lora(model, LoraSettings(r=4, alpha=8)))
    fast, slow = both(model, tok, GenSettings(max_new_tokens=10, temperature=1.5, stop_strings=stops), 3)
    assert_same(fast, slow)
    free = both(model, tok, GenSettings(max_new_tokens=10, temperature=1.5), 3)[0]  # the same draws, no stops
    stopped = 0
    for c, f, n in zip(fast.completion_ids.tolist(), free.completion_ids.tolist(), fast.completion_mask.sum(-1).tolist()):
        assert c[:n] == f[:n]  # the same tokens up to where the row ended
        text = tok.decode(c[:n])
        if any(s in text for s in stops) and c[n - 1] != tok.eos_token_id:  # ended by a stop string:
            assert not any(s in tok.decode(c[:n - 1]) for s in stops)  # at the first token that completed it
            stopped += 1
    assert stopped == {"e": 2, "th": 3, "ing ": 0}[stops[-1]]  # rows stopped (checked by hand); the others ran on
    if stopped:
        assert not torch.equal(free.completion_mask, fast.completion_mask)
