"""The decoding loop without a host–device synchronisation per token, and its static (CUDA-graph) step, on the CPU.

On a CPU nothing waits, so a synchronisation is counted instead: every Python-level call that makes the host read a
device value (`.item()`, `.tolist()`, `.cpu()`, `bool()`/`int()`/`float()` of a tensor, `.nonzero()`) is patched to
count, and the count must not grow with max_new_tokens. tests/test_gpu.py decodes on CUDA under
`torch.cuda.set_sync_debug_mode("error")`, which also catches synchronisations inside ops.
"""
from __future__ import annotations

import warnings
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from unittest import mock

import pytest
import torch

from rewardtune.config import LoraSettings
from rewardtune.models import apply_lora, load_causal_lm
from rewardtune.policies import decode
from rewardtune.policies.causal_lm import GenSettings, prompt_cache, sample, stop_check
from rewardtune.policies.decode_graph import decode_static
from rewardtune.policies.decode_rows import check_interval
from rewardtune.policies.sampling import TokenSampler, draw_uniforms
from test_causal_lm_policy import byte_level_policy
from test_decode import PROMPTS, assert_same, tiny, trained_looking

SYNCING = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def counted_syncs():
    """Counts the calls of SYNCING made from Python while inside (the yielded Counter)."""
    counts: Counter = Counter()

    def counting(name, real):
        def call(self, *args, **kwargs):
            counts[name] += 1
            return real(self, *args, **kwargs)
        return call
    with ExitStack() as stack:
        for name in SYNCING:
            stack.enter_context(mock.patch.object(torch.Tensor, name, counting(name, getattr(torch.Tensor, name))))
        yield counts


def lora_llama(tiny_causal_lm_dir):
    _, tok = load_causal_lm(str(tiny_causal_lm_dir))
    return trained_looking(apply_lora(tiny("llama", tok), LoraSettings(r=4, alpha=8))), tok


def syncs_of_a_decode(model, tok, steps: int, check_every: int, static: bool = False, stops=()) -> int:
    """The synchronisations of one decode of `steps` tokens that no row ends early (EOS never chosen)."""
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    prefix = decode.cache_layers(prompt_cache(model, ids, mask, 1))
    sampler = TokenSampler(1.0, uniforms=draw_uniforms(steps, len(PROMPTS)))
    stop = stop_check(tok, GenSettings(stop_strings=stops))
    no_eos = [len(tok) + 7]  # an id no logit can pick: every row runs to the end
    with counted_syncs() as counts:
        if static:
            out = decode_static(model, ids, mask, prefix, sampler, steps, no_eos, tok.pad_token_id, stop, check_every,
                                graph=False)
        else:
            out = decode.decode(model, ids, mask, prefix, sampler.choose, steps, no_eos, tok.pad_token_id, stop,
                                check_every)
    assert out.shape == (len(PROMPTS), steps)
    return sum(counts.values())


@pytest.mark.parametrize("static", [False, True])
def test_the_loop_does_not_synchronise_per_token(tiny_causal_lm_dir, static):
    model, tok = lora_llama(tiny_causal_lm_dir)
    never = [syncs_of_a_decode(model, tok, n, -1, static) for n in (4, 12)]
    assert never[0] == never[1] <= 2, never  # the cut after the last row's end, once
    every4 = [syncs_of_a_decode(model, tok, n, 4, static) for n in (4, 12)]
    assert every4[1] - every4[0] == 2, every4  # 12 tokens: checks after 4 and 8 (none after the last)
    # The check that can fail: one look per token is what the loop did before, and it is counted.
    every1 = [syncs_of_a_decode(model, tok, n, 1, static) for n in (4, 12)]
    assert every1[1] - every1[0] == 8, every1


def test_stop_strings_are_checked_without_a_synchronisation_per_token():
    model, tok = byte_level_policy()
    tok.padding_side = "left"
    counts = [syncs_of_a_decode(model, tok, n, -1, stops=("e", "th")) for n in (4, 12)]
    assert counts[0] == counts[1] <= 2, counts


def rollouts(model, tok, gen: GenSettings, variants: dict, k: int = 3, greedy: bool = False):
    """One rollout per settings variant, from the same seed."""
    out = {}
    for name, changes in variants.items():
        torch.manual_seed(5)
        out[name] = sample(model, tok, PROMPTS, k, replace(gen, **changes), 100, greedy=greedy)
    return out


@pytest.mark.parametrize("greedy", [False, True])
def test_every_check_interval_and_the_static_step_sample_what_the_loop_samples(tiny_causal_lm_dir, greedy):
    model, tok = lora_llama(tiny_causal_lm_dir)
    gen = GenSettings(max_new_tokens=9, temperature=1.3, top_k=20, top_p=0.9)
    with mock.patch.object(decode, "decode", wraps=decode.decode) as loop:
        got = rollouts(model, tok, gen, {"every": {"check_every": 1}, "never": {"check_every": -1},
                                         "three": {"check_every": 3}, "auto": {}}, greedy=greedy)
    assert loop.call_count == 4
    for name in ("never", "three", "auto"):
        assert_same(got[name], got["every"], atol=0.0)
    static = static_rollout(model, tok, gen, greedy)
    assert_same(static, got["every"])
    if not greedy:  # (greedy rows of this model never pick EOS)
        assert (got["every"].completion_mask == 0).any()  # some rows ended early: the cut was exercised


def static_rollout(model, tok, gen, greedy):
    """`sample` with the static step run eagerly in place of the loop (what a CUDA graph replays)."""
    def static(model, ids, mask, prefix, sampler, steps, eos_ids, pad, stop, check_every, _cuda_graph):
        return decode_static(model, ids, mask, prefix, sampler, steps, eos_ids, pad, stop,
                             check_interval(check_every, ids.device), graph=False)
    torch.manual_seed(5)
    with mock.patch("rewardtune.policies.causal_lm.decode_any", static):
        return sample(model, tok, PROMPTS, 3, gen, 100, greedy=greedy)


@pytest.mark.parametrize("stops", [("e",), ("e", "th")])
def test_stop_strings_checked_in_batches_end_rows_where_every_token_checks_end_them(stops):
    model, tok = byte_level_policy()
    tok.padding_side = "left"
    model = trained_looking(apply_lora(model, LoraSettings(r=4, alpha=8)))
    gen = GenSettings(max_new_tokens=10, temperature=1.5, stop_strings=stops)
    got = rollouts(model, tok, gen, {"every": {"check_every": 1}, "never": {"check_every": -1},
                                     "four": {"check_every": 4}})
    assert_same(got["never"], got["every"], atol=0.0)
    assert_same(got["four"], got["every"], atol=0.0)
    assert_same(static_rollout(model, tok, gen, False), got["every"])
    assert (got["every"].completion_mask.sum(-1) < 10).any()  # a stop string ended a row


def test_a_cuda_graph_asked_for_on_the_cpu_warns_and_decodes_eagerly(tiny_causal_lm_dir):
    model, tok = lora_llama(tiny_causal_lm_dir)
    gen = GenSettings(max_new_tokens=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = rollouts(model, tok, gen, {"graph": {"cuda_graph": True}, "eager": {}})
    assert any("gen.cuda_graph" in str(w.message) and "CUDA device" in str(w.message) for w in caught)
    assert_same(got["graph"], got["eager"], atol=0.0)
