"""Memory bounds of generative RL that must not change the result: sampling and the no-gradient passes in
row chunks (`runtime.inference_batch_size`), and PPO's micro-batches (`runtime.micro_batch_size`)."""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace
from unittest import mock

import pytest
import torch

from rewardtune.config import LoraSettings, load_config
from rewardtune.models import apply_lora, load_causal_lm
from rewardtune.policies import causal_lm
from rewardtune.policies.causal_lm import GenSettings, sample, token_logprobs, token_logprobs_at
from rewardtune.train.pg_update import no_grad_rows, reference_logprobs, reference_logprobs_at
from rewardtune.policies.causal_lm import completion_logits
from rewardtune.train.gen_config import PPOSettings
from rewardtune.train.ppo import ValueHead, logprobs_and_values, old_values, ppo_update
from rewardtune.collectives import average_gradients
from rewardtune.train.gen_config import GenRLConfig, GenRLSettings
from rewardtune.train.common import setup_reference
from rewardtune.train.gen_setup import update_plan
from rewardtune.train.rl_generate import train_rl_generate

PROMPTS = ["the film was", "i really loved the", "this movie is a very", "the acting"]  # different lengths


@pytest.fixture()
def policy(tiny_causal_lm_dir):
    torch.manual_seed(0)
    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    model = apply_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a non-zero adapter, so that the policy differs from the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model, tok


def _same(a, b, atol=1e-5):
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    assert torch.equal(a.completion_mask, b.completion_mask) and a.prompts == b.prompts
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.allclose(a.logprobs, b.logprobs, atol=atol)


@pytest.mark.parametrize("fast_decode", [True, False])
def test_sampling_in_row_chunks_samples_what_one_pass_samples(policy, fast_decode):
    model, tok = policy
    gen = GenSettings(max_new_tokens=8, temperature=1.5, fast_decode=fast_decode)  # hot: many different tokens
    out, calls = [], []
    real = causal_lm._sample
    with mock.patch.object(causal_lm, "_sample", side_effect=lambda *a: calls.append(len(a[2])) or real(*a)):
        for rows in (0, 3, 7):  # all 12 rows; 3 → one prompt per pass; 7 → two prompts (6 rows) per pass
            torch.manual_seed(5)
            out.append(sample(model, tok, PROMPTS, 3, gen, 100, rows=rows))
    assert calls == [4, 1, 1, 1, 1, 2, 2]  # prompts per pass: the chunking happened
    _same(out[0], out[1])
    _same(out[0], out[2])
    # Not a vacuous match: the rows of one prompt differ from each other (they use different draws).
    assert len({tuple(r) for r in out[0].completion_ids[:3].tolist()}) > 1


@pytest.mark.parametrize("rows", [0, 3])
def test_a_share_of_the_prompts_samples_their_rows_of_the_whole(policy, rows):
    """`sample(only=...)`, a process's share of a held-out set: the rows of those prompts as sampling all of them
    gives (the same draws), decoded alone; with row chunks too."""
    model, tok = policy
    gen = GenSettings(max_new_tokens=8, temperature=1.5)
    torch.manual_seed(5)
    whole = sample(model, tok, PROMPTS, 3, gen, 100)
    torch.manual_seed(5)
    part = sample(model, tok, PROMPTS, 3, gen, 100, rows=rows, only=slice(1, 3))
    assert part.prompts == [p for p in PROMPTS[1:3] for _ in range(3)]
    T = part.completion_ids.shape[1]
    assert torch.equal(part.completion_ids, whole.completion_ids[3:9, :T]) and not whole.completion_mask[3:9, T:].any()
    assert torch.allclose(part.logprobs, whole.logprobs[3:9, :T], atol=1e-5) and part.completions == whole.completions[3:9]


def test_chunked_rollout_pads_completions_that_ended_early(policy):
    model, tok = policy
    eos = tok.eos_token_id
    # The first pass's first step puts all the mass on EOS: its rows (the first prompt's) end at once.
    orig, hit = causal_lm.TokenSampler.choose, []

    def choose(self, scores):
        if not self.logprobs and not hit:
            hit.append(scores.shape[0])
            scores = scores.clone()
            scores[:, eos] = 1e4
        return orig(self, scores)
    with mock.patch.object(causal_lm.TokenSampler, "choose", choose):
        torch.manual_seed(1)
        ro = sample(model, tok, PROMPTS[:2], 2, GenSettings(max_new_tokens=5), 100, rows=2)
    assert hit == [2] and ro.completion_ids.shape == (4, 5)  # the first pass stopped after one token, the second did not
    assert ro.completion_mask[:2].tolist() == [[1, 0, 0, 0, 0]] * 2
    assert (ro.completion_ids[:2, 1:] == tok.pad_token_id).all() and (ro.logprobs[:2, 1:] == 0).all()
    assert ro.completion_mask[2:].sum() > 2


def test_reference_pass_in_row_chunks_equals_one_pass(policy):
    model, tok = policy
    torch.manual_seed(2)
    ro = sample(model, tok, PROMPTS, 3, GenSettings(max_new_tokens=6), 100)
    ref = setup_reference(model, GenRLSettings())
    whole = reference_logprobs(model, ref, ro, 1.0)
    seen = []
    with mock.patch("rewardtune.policies.causal_lm.token_logprobs_at",
                    side_effect=lambda *a, **k: seen.append(a[1].shape[0]) or token_logprobs_at(*a, **k)):
        chunked = reference_logprobs(model, ref, ro, 1.0, rows=no_grad_rows(3, 7))  # K = 3, 7 rows asked
    assert seen == [6, 6]  # 7 rows rounded down to whole groups of 3
    assert torch.allclose(whole, chunked, atol=1e-6)
    with model.disable_adapter():  # and it is the reference's, not the policy's
        base, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, 6, entropy=False)
    policy_logp, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, 6, entropy=False)
    m = ro.completion_mask.bool()
    assert torch.allclose(chunked[m], base[m], atol=1e-5) and not torch.allclose(chunked[m], policy_logp[m], atol=1e-3)


@pytest.mark.parametrize("chunked_head", [True, False])
def test_reference_at_two_temperatures_is_one_pass_equal_to_two(policy, chunked_head):
    """Held-out evaluation at τ ≠ 1 needs log π_ref at τ (the KL) and at 1 (the perplexity): one body pass."""
    model, tok = policy
    torch.manual_seed(3)
    ro = sample(model, tok, PROMPTS, 2, GenSettings(max_new_tokens=5, temperature=1.5), 100)
    ref = setup_reference(model, GenRLSettings())
    calls = []
    hook = model.get_base_model().model.register_forward_hook(lambda *a: calls.append(1))  # the decoder body
    assert causal_lm.chunkable_head(model) is not None  # the tiny model takes the chunked head unless told not to
    whole_logits = mock.patch.object(causal_lm, "chunkable_head", return_value=None)  # the path without the chunked head
    with nullcontext() if chunked_head else whole_logits:
        reference_logprobs(model, ref, ro, 1.0)  # the first call also probes the head once (logits_are_head_outputs)
        calls[:] = []
        apart = [reference_logprobs(model, ref, ro, t) for t in (1.5, 1.0)]
        n_apart, calls[:] = len(calls), []
        both = reference_logprobs_at(model, ref, ro, (1.5, 1.0))
        n_both = len(calls)
        with model.disable_adapter():  # each is token_logprobs' result at its temperature, bit for bit
            direct = [token_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_ids.shape[1], t,
                                     entropy=False)[0] for t in (1.5, 1.0)]
    hook.remove()
    assert n_apart == 2 * n_both and n_both  # half the body passes
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(apart, both, direct))
    assert not torch.allclose(both[0], both[1])


def test_no_grad_rows_are_whole_prompt_groups():
    rows = lambda n, k: no_grad_rows(k, n)  # noqa: E731
    assert (rows(0, 4), rows(16, 4), rows(18, 4), rows(3, 4), rows(5, 1)) == (0, 16, 16, 4, 5)


def test_ppo_logprobs_and_values_equal_the_whole_logits_path(policy):
    model, tok = policy
    torch.manual_seed(3)
    ro = sample(model, tok, PROMPTS, 2, GenSettings(max_new_tokens=5), 100)
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight)
    T = ro.completion_ids.shape[1]
    logp, values, ent = logprobs_and_values(model, head, ro.input_ids, ro.attention_mask, T, 0.7)
    with mock.patch.object(causal_lm, "chunkable_head", return_value=None):  # the model's own logits
        logp2, values2, ent2 = logprobs_and_values(model, head, ro.input_ids, ro.attention_mask, T, 0.7)
    assert torch.allclose(logp, logp2, atol=1e-5) and torch.allclose(values, values2, atol=1e-5)
    assert torch.allclose(ent, ent2, atol=1e-5) and ent.min() > 0  # the entropy PPO logs, both ways
    assert values.abs().max() > 0
    # The value pass before the update: the same values, in one pass or two rows at a time, without the LM head.
    seen = []
    with mock.patch.object(causal_lm, "completion_logits",
                           side_effect=lambda *a, **k: seen.append(a[1].shape[0]) or completion_logits(*a, **k)):
        whole, chunked = old_values(model, head, ro), old_values(model, head, ro, rows=2)
    assert seen == [8, 2, 2, 2, 2]
    assert torch.allclose(whole, values, atol=1e-5) and torch.allclose(chunked, values, atol=1e-5)


def test_average_gradients_replaces_each_gradient_by_its_mean_over_processes():
    head = ValueHead(4)
    for p in head.parameters():
        p.grad = torch.full_like(p, 1.0)  # this process's gradient: 1; the other process's: 3
    average_gradients(list(head.parameters()), lambda g: (g + torch.full_like(g, 3.0)) / 2)  # a simulated all-reduce
    assert all(torch.all(p.grad == 2.0) for p in head.parameters())


@pytest.mark.parametrize("micro", [1, 3])
def test_ppo_micro_batches_do_not_change_the_steps(policy, micro):
    model, tok = policy
    torch.manual_seed(4)
    ro = sample(model, tok, PROMPTS, 2, GenSettings(max_new_tokens=5), 100)  # 8 rows, different lengths
    scores = torch.randn(8)
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    ppo = PPOSettings(epochs=2, minibatches=2, vf_coef=0.5)
    runs = []
    for mb in (0, micro):
        grads, losses = [], []

        def step(loss):  # record each minibatch's gradient and loss; no parameter change between them
            grads.append([p.grad.clone() for p in params])
            losses.append(float(loss))
            for p in params:
                p.grad = None
        torch.manual_seed(7)  # the same minibatch permutations
        stats = ppo_update(lambda loss: loss.backward(), step, model, head, ro, scores, None, 0.0, ppo,
                           replace(update_plan(GenRLSettings(algorithm="ppo"), GenSettings(max_new_tokens=5), ppo=ppo),
                                   micro_batch_size=mb, no_grad_rows=2))
        runs.append((grads, losses, stats))
    (g0, l0, s0), (g1, l1, s1) = runs
    assert len(g0) == len(g1) == 4
    for a, b in zip(g0, g1):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, atol=1e-6, rtol=1e-4)
    assert l0 == pytest.approx(l1, abs=1e-6)
    assert s0["loss"] + s0["value_loss"] == pytest.approx(sum(l0) / 4, abs=1e-6)  # means over all 4 steps
    assert s0.keys() == s1.keys() and all(s0[k] == pytest.approx(s1[k], abs=1e-6) for k in s0)


def test_a_run_with_row_chunks_and_micro_batches_logs_what_one_pass_logs(tiny_causal_lm_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    rows = []
    for name, extra in (("whole", []), ("chunked", ["runtime.inference_batch_size=3", "runtime.micro_batch_size=2"])):
        cfg = load_config(GenRLConfig, None, [
            f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
            "rl.samples_per_prompt=3", "rl.steps=2", "eval.prompts=4", "eval.every=0", "rl.lr=1e-2",
            "gen.max_new_tokens=6", "gen.temperature=1.5", f"runs_dir={tmp_path}", f"name={name}", *extra])
        train_rl_generate(cfg, show_progress=False)
        rows.append([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    keys = ("reward", "kl", "entropy", "completion_len", "loss")
    for a, b in zip(*rows):
        for k in keys:
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (a["step"], k)  # float rounding only
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] and len(rows[0]) >= 3
    evals = [r for r in rows[1] if r["split"] == "eval"]  # 4 held-out prompts at 3 rows per pass
    assert len(evals) == 2 and all("kl_greedy" in r for r in evals)


def test_ppo_over_two_processes_takes_one_global_token_mean(policy):
    """Two processes simulated by two threads, each with its own copy of the policy and half the rows, joined by an
    all-reduce made of a barrier: averaging their gradients (what DDP does) gives one process's gradient over all
    rows, although their token counts differ (dividing by each process's own count, as before, did not)."""
    import copy
    import threading

    model, tok = policy
    torch.manual_seed(6)
    ro = sample(model, tok, PROMPTS, 2, GenSettings(max_new_tokens=6), 100)
    ro.completion_mask[:4, 2:] = 0  # the first process holds far fewer tokens
    scores, ppo = torch.randn(8), PPOSettings(epochs=1, minibatches=1, vf_coef=0.5)
    head = ValueHead(model.config.hidden_size)

    def grads(net, value_head, rows, all_sum):
        ppo_update(lambda loss: loss.backward(), lambda loss: None, net, value_head, ro.rows(rows), scores[rows], None,
                   0.0, ppo, update_plan(GenRLSettings(algorithm="ppo"), GenSettings(max_new_tokens=6), ppo=ppo), all_sum)
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    full = grads(copy.deepcopy(model), copy.deepcopy(head), slice(0, 8), None)

    def two_processes():
        barrier, box, out = threading.Barrier(2), {}, {}

        def all_sum(t):
            box[threading.get_ident()] = t
            barrier.wait()
            total = sum(box.values())
            barrier.wait()  # both have read before either writes again
            return total

        def work(r):
            out[r] = grads(copy.deepcopy(model), copy.deepcopy(head), slice(4 * r, 4 * r + 4), all_sum)
        threads = [threading.Thread(target=work, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {n: (out[0][n] + out[1][n]) / 2 for n in full}

    together = two_processes()
    for n in full:
        assert torch.allclose(together[n], full[n], atol=1e-6, rtol=1e-4), n
