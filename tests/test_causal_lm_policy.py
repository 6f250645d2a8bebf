"""Generative RL on a tiny random Llama: rollout log-probs, reference, micro-batching, each algorithm."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.config import LoraSettings, load_config
from rewardtune.models import apply_lora, enable_checkpointing, load_causal_lm
from rewardtune.policies.causal_lm import GenSettings, completion_logits, completion_mask, sample, token_logprobs
from rewardtune.policies.head import logits_are_head_outputs
from rewardtune.policies.causal_lm import checkpointing as checkpointing_on
from rewardtune.rewards import RewardError
from rewardtune.train.gen_setup import update_plan
from rewardtune.train.pg_update import accumulate_gradients
from rewardtune.train.gen_config import GenRLConfig, GenRLSettings, RuntimeSettings
from rewardtune.train.common import setup_reference
from rewardtune.train.rl_generate import train_rl_generate

PROMPTS = ["the film was", "i really loved the", "this movie is a very", "the acting"]


@pytest.fixture()
def policy(tiny_causal_lm_dir):
    torch.manual_seed(0)
    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    return apply_lora(model, LoraSettings(r=4, alpha=8)), tok


def test_completion_mask_keeps_tokens_through_first_eos():
    ids = torch.tensor([[5, 9, 2, 7, 2], [5, 6, 7, 8, 9]])  # eos = 2
    assert completion_mask(ids, [2], 0).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("mode,atol", [("fp32", 1e-4), ("prepacked", 1e-4), ("bf16-autocast", 2e-2)])
def test_rollout_logprobs_match_a_fresh_forward_pass(policy, mode, atol):
    """The log-probs recorded while sampling are what the update's forward pass gives (so the update reuses them):
    a trained-looking adapter, temperature, top-k and top-p (recorded under the tempered, untruncated policy), the
    frozen weights prepacked or not, and under bf16 autocast (where both passes round; 0.0 apart on this model)."""
    from rewardtune.prepack import prepack_frozen_linears

    model, tok = policy
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    if mode == "prepacked":
        assert prepack_frozen_linears(model) > 0
    torch.manual_seed(1)
    gen = GenSettings(max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-autocast"):
        ro = sample(model, tok, PROMPTS, 2, gen, 100)
        fresh, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_ids.shape[1], 0.7)
    assert ro.completion_ids.shape[0] == 8 and ro.prompts[:2] == [PROMPTS[0]] * 2  # prompt-major order
    m = ro.completion_mask.bool()
    assert m.sum() > 8 and torch.allclose(fresh[m], ro.logprobs[m], atol=atol), (fresh[m] - ro.logprobs[m]).abs().max()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prompt_prefill_samples_what_one_prefill_per_row_samples(policy, checkpointing):
    model, tok = policy
    if checkpointing:  # training mode with checkpointing, as the run sets it up
        enable_checkpointing(model.get_base_model())
        model.train()
    gen, out = GenSettings(max_new_tokens=6, temperature=1.5), []
    for share in (True, False):
        torch.manual_seed(4)
        out.append(sample(model, tok, PROMPTS, 3, gen, 100, share_prompt=share))
    shared, plain = out
    assert torch.equal(shared.completion_ids, plain.completion_ids) and shared.completions == plain.completions
    assert torch.equal(shared.prompt_ids, plain.prompt_ids) and torch.equal(shared.prompt_mask, plain.prompt_mask)
    assert torch.allclose(shared.logprobs, plain.logprobs, atol=1e-5)
    calls = []  # the prompt's positions go through the model once per prompt, not once per sample
    hook = model.get_base_model().model.embed_tokens.register_forward_hook(lambda m, i, o: calls.append(i[0].numel()))
    sample(model, tok, PROMPTS, 3, gen, 100)
    hook.remove()
    tp = shared.prompt_ids.shape[1]
    assert calls[:2] == [4 * (tp - 1), 12] and all(c == 12 for c in calls[2:]), calls


def test_top_k_1_sampling_equals_greedy_decoding(policy):
    model, tok = policy
    torch.manual_seed(2)
    greedy = sample(model, tok, PROMPTS, 1, GenSettings(max_new_tokens=5), 100, greedy=True)
    top1 = sample(model, tok, PROMPTS, 1, GenSettings(max_new_tokens=5, temperature=1.3, top_k=1), 100)
    assert torch.equal(greedy.completion_ids, top1.completion_ids)
    # the recorded log-prob is under the tempered, untruncated policy, not under top-k's point mass
    assert (top1.logprobs[top1.completion_mask.bool()] < 0).all()


def byte_level_policy():
    """A tiny Llama over a byte-level BPE vocabulary (HF's stop strings need real token strings)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator(PROMPTS * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    return LlamaForCausalLM(cfg), tok


def test_stop_strings_with_a_tokenizer_they_cannot_read_fail_clearly(tiny_causal_lm_dir):
    """A word-level tokenizer: transformers' StopStringCriteria fails inside with "substring not found"; the error
    names the setting and what to do instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardtune.config import ConfigError

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir), AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    with pytest.raises(ConfigError, match=r"gen.stop_strings=\['the'\]: .*failed with this tokenizer.*substring not "
                                          r"found.*EOS"):
        sample(model, tok, PROMPTS[:1], 1, GenSettings(max_new_tokens=4, stop_strings=("the",)), 100)


def test_stop_strings_end_the_completion():
    model, tok = byte_level_policy()
    gen = GenSettings(max_new_tokens=8)
    free = sample(model, tok, PROMPTS[:1], 1, gen, 100, greedy=True)
    ids = free.completion_ids[0].tolist()
    assert tok.eos_token_id not in ids[:4]
    end = ids.index(ids[3])  # the first time the 4th token was generated
    stop = tok.decode(ids[:end + 1])[-1]  # the last character of the text up to it
    assert stop.strip() and stop not in tok.decode(ids[:end])  # (checks the chosen seed gives a usable case)
    # with a second prompt that runs on, the stopped row is filled with pad (≠ EOS here) to the batch's length
    stopped = sample(model, tok, PROMPTS[:1] + PROMPTS[3:], 1, replace(gen, stop_strings=(stop,)), 100, greedy=True)
    assert stopped.completion_ids.shape[1] > end + 1
    assert int(stopped.completion_mask[0].sum()) == end + 1  # up to and including the stop string
    assert stopped.completion_ids[0, :end + 1].tolist() == ids[:end + 1]
    assert stopped.completions[0].endswith(stop)


def test_left_padding_uses_generation_positions(policy):
    model, tok = policy
    ro = sample(model, tok, PROMPTS, 1, GenSettings(max_new_tokens=4), 100)
    T = ro.completion_ids.shape[1]
    batched, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, T)
    i = int(ro.prompt_mask.sum(-1).argmin())  # the most padded row, alone and unpadded
    keep = ro.attention_mask[i].bool()
    alone, _ = token_logprobs(model, ro.input_ids[i:i + 1, keep], ro.attention_mask[i:i + 1, keep], int(ro.completion_mask[i].sum()))
    n = int(ro.completion_mask[i].sum())
    assert torch.allclose(batched[i, :n], alone[0], atol=1e-5)


def test_adapter_disabled_reference_equals_base_model(tiny_causal_lm_dir, policy):
    model, tok = policy
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # make the adapter matter
    base, _ = load_causal_lm(str(tiny_causal_lm_dir))
    ids = tok(PROMPTS, padding=True, return_tensors="pt")
    ref = setup_reference(model, GenRLSettings(kl_coef=0.1))
    with torch.no_grad(), ref():
        via_ref, _ = token_logprobs(model, ids["input_ids"], ids["attention_mask"], 2)
    with torch.no_grad():
        expected, _ = token_logprobs(base, ids["input_ids"], ids["attention_mask"], 2)
        with_adapter, _ = token_logprobs(model, ids["input_ids"], ids["attention_mask"], 2)
    assert torch.allclose(via_ref, expected, atol=1e-6)
    assert not torch.allclose(with_adapter, expected, atol=1e-3)  # the adapter does change the policy


def test_shared_prompt_pass_equals_one_pass_per_row_in_value_and_gradient(policy):
    model, tok = policy
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # make the adapter matter, so the prompt's keys/values carry a gradient
    torch.manual_seed(3)
    ro = sample(model, tok, PROMPTS, 3, GenSettings(max_new_tokens=5), 100)  # 4 groups of 3 rows
    T, m = ro.completion_ids.shape[1], ro.completion_mask.float()
    assert logits_are_head_outputs(model)  # the one-off 3-token check, done before positions are counted
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda mod, a, out: seen.append(a[0].numel()))
    shared, ent = token_logprobs(model, ro.input_ids, ro.attention_mask, T)
    hook.remove()
    Tp = ro.prompt_ids.shape[1]
    assert sum(seen) == 4 * Tp + 12 * (T - 1)  # each prompt once, then every row's completion
    (shared * m).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    rows = [token_logprobs(model, ro.input_ids[i:i + 1], ro.attention_mask[i:i + 1], T) for i in range(12)]
    alone = torch.cat([r[0] for r in rows])  # one row at a time: nothing to share, the one-pass path
    (alone * m).sum().backward()
    assert torch.allclose(shared * m, alone * m, atol=1e-5), (shared * m - alone * m).abs().max()
    assert torch.allclose(ent * m, torch.cat([r[1] for r in rows]) * m, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[n], p.grad, atol=1e-5), n
    assert any(g.abs().max() > 0 for n, g in grads.items() if "lora_A" in n)


def lm_head_bmm_calls(model, ids, mask) -> int:
    """How many batched matmuls the LM head's logits took in one whole-logits `completion_logits` call (the
    path of sampling's prefill, PPO and models whose head is not chunked)."""
    from torch.profiler import ProfilerActivity, profile

    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        completion_logits(model, ids, mask, 2)
    # only the head's: a bmm with the vocabulary in an operand (older transformers' rotary embedding has one too)
    return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
               if e.key == "aten::bmm" and any(vocab in shape for shape in e.input_shapes if shape))


def test_lm_head_gets_a_contiguous_input_so_no_weight_is_broadcast(policy):
    model, tok = policy  # LoRA: the head's weight is frozen, the case in which matmul stops folding
    ids = tok(PROMPTS, padding=True, return_tensors="pt")
    with_hook = completion_logits(model, ids["input_ids"], ids["attention_mask"], 2)
    assert lm_head_bmm_calls(model, ids["input_ids"], ids["attention_mask"]) == 0
    model.get_output_embeddings()._forward_pre_hooks.clear()  # as transformers leaves it
    assert lm_head_bmm_calls(model, ids["input_ids"], ids["attention_mask"]) == 1  # the fallback the hook avoids
    without = completion_logits(model, ids["input_ids"], ids["attention_mask"], 2)
    assert torch.allclose(with_hook, without, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batch_size_does_not_change_the_gradient(policy, aggregation):
    model, tok = policy
    torch.manual_seed(2)
    with torch.no_grad():  # a trained-looking adapter: the policy differs from the reference, so the KL term has
        for n, p in model.named_parameters():  # a gradient (with B = 0 the k3 gradient is exactly 0)
            if "lora_B" in n:
                p.normal_(0, 0.5)
    gen = GenSettings(max_new_tokens=5)
    ro = sample(model, tok, PROMPTS, 2, gen, 100)
    ro.completion_mask[1, 2:] = 0  # rows of different completion lengths, whatever the tiny model samples
    ro.completion_mask[5, 1:] = 0
    adv = torch.randn(8)
    grads, stats = [], []
    for mb in (0, 3):  # the whole batch at once, then micro-batches of 3, 3, 2
        rl = GenRLSettings(aggregation=aggregation, kl_coef=0.1)
        model.zero_grad(set_to_none=True)
        stats.append(accumulate_gradients(lambda loss: loss.backward(), model, setup_reference(model, rl), ro, adv,
                                          update_plan(rl, gen, RuntimeSettings(micro_batch_size=mb)), rl.kl_coef))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4), n
    assert stats[0]["kl"] > 1e-3  # the KL term took part
    for k in ("loss", "kl", "entropy"):  # the logged token means are the whole rollout's too
        assert stats[1][k] == pytest.approx(stats[0][k], rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("baseline", ["mean", "ema"])
def test_reinforce_baselines_over_processes_are_the_global_batch_s(baseline):
    from rewardtune.algorithms import EMABaseline
    from rewardtune.train.pg_update import advantages

    rl = GenRLSettings(algorithm="reinforce", baseline=baseline)
    steps = [torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]),  # (P=4, K=2): global batch means
             torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])]  # 0.5 then 0.625
    one, two = EMABaseline(), [EMABaseline(), EMABaseline()]
    for full in steps:
        whole = advantages(full, rl.algorithm, rl.baseline, one)  # one process, the global batch: (8,)
        shards = [advantages(full[2 * r:2 * r + 2], rl.algorithm, rl.baseline, two[r], gather=lambda _: full, rank=r)
                  for r in (0, 1)]
        assert torch.equal(torch.cat(shards), whole)
        alone = advantages(full[2:], rl.algorithm, rl.baseline, EMABaseline())  # without the gather: rank 1's own mean, 0.75 ≠ 0.5
        assert baseline == "ema" or not torch.equal(alone, whole[4:])
    if baseline == "ema":
        assert one.value == two[0].value == two[1].value == pytest.approx(0.9 * 0.5 + 0.1 * 0.625)  # EMA after both


def test_token_mean_over_processes_is_one_global_token_mean(policy):
    """Two processes, each with half the groups, simulated: DDP averages their gradients. With `tokens` =
    global tokens / 2 the average equals one process's full-batch token mean; with each process's own
    token count (the old behaviour) it is a mean of per-process means, which differs when counts differ."""
    model, tok = policy
    torch.manual_seed(4)
    gen, rl = GenSettings(max_new_tokens=6), GenRLSettings(aggregation="token_mean", kl_coef=0.1)
    ro = sample(model, tok, PROMPTS, 2, gen, 100)
    ro.completion_mask[:4, 3:] = 0  # the first "process" gets fewer tokens than the second
    adv, ref = torch.randn(8), setup_reference(model, rl)

    def grads(rows: slice, tokens: float | None) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        accumulate_gradients(lambda loss: loss.backward(), model, ref, ro.rows(rows), adv[rows], update_plan(rl, gen),
                             rl.kl_coef, tokens)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full = grads(slice(0, 8), None)
    half = float(ro.completion_mask.sum()) / 2
    a, b = grads(slice(0, 4), half), grads(slice(4, 8), half)
    own_a, own_b = grads(slice(0, 4), None), grads(slice(4, 8), None)
    for n in full:
        assert torch.allclose((a[n] + b[n]) / 2, full[n], atol=1e-6, rtol=1e-4), n
    assert any(not torch.allclose((own_a[n] + own_b[n]) / 2, full[n], atol=1e-6, rtol=1e-4) for n in full)


def test_gradient_checkpointing_does_not_change_the_gradient(policy):
    model, tok = policy
    torch.manual_seed(3)
    gen = GenSettings(max_new_tokens=5)
    ro = sample(model, tok, PROMPTS, 2, gen, 100)
    adv, rl = torch.randn(8), GenRLSettings(kl_coef=0.1)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_checkpointing(model.get_base_model())
            assert checkpointing_on(model.get_base_model())
        model.train().zero_grad(set_to_none=True)
        accumulate_gradients(lambda loss: loss.backward(), model, setup_reference(model, rl), ro, adv, update_plan(rl, gen),
                             rl.kl_coef)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n


def run_cfg(model_dir, prompts_file, tmp_path, name, *extra):
    return load_config(GenRLConfig, None, [
        f"model.name={model_dir}", "model.lora.r=4", "model.lora.alpha=16", f"data.path={prompts_file}",
        "rl.prompts_per_step=2", "rl.samples_per_prompt=3", "rl.steps=3", "eval.prompts=2", "eval.every=0",
        "rl.lr=1e-2", "gen.max_new_tokens=6", f"runs_dir={tmp_path}", f"name={name}", *extra])


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    return path


@pytest.mark.parametrize("algorithm,extra", [
    ("grpo", []), ("dr_grpo", ["rl.aggregation=seq_mean_token_sum"]), ("rloo", ["rl.kl_estimator=k1"]),
    ("reinforce", ["rl.baseline=ema", "rl.kl_coef=0"]),
])
def test_each_algorithm_runs_with_finite_losses_and_moves_lora(tiny_causal_lm_dir, prompts_file, tmp_path, algorithm, extra):
    out = train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, algorithm, f"rl.algorithm={algorithm}",
                                    *extra), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 3 and all(math.isfinite(r["loss"]) for r in train)
    assert all(k in train[0] for k in ("reward", "reward/length", "entropy", "completion_len", "time_generate",
                                       "tokens_per_s", "equal_reward_groups"))
    assert all(r["batch"] == 2 * 3 for r in train)  # P × K
    assert [r for r in rows if r["split"] == "eval"] and out["eval"]["distinct_1"] >= 0
    lora_b = {k: v for k, v in load_file(str(tmp_path / algorithm / "checkpoints" / "final" / "adapter_model.safetensors")).items()
              if "lora_B" in k}
    assert any(v.abs().max() > 0 for v in lora_b.values())  # B starts at 0: any non-zero means it was trained


def test_gradient_checkpointing_run_trains_like_a_plain_run(tiny_causal_lm_dir, prompts_file, tmp_path):
    weights = []
    for name, flag in (("plain", "false"), ("gc", "true")):
        train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, name, f"runtime.gradient_checkpointing={flag}"),
                          show_progress=False)
        weights.append(load_file(str(tmp_path / name / "checkpoints" / "final" / "adapter_model.safetensors")))
    assert any(v.abs().max() > 0 for k, v in weights[1].items() if "lora_B" in k)
    for k in weights[0]:
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-5), k


def test_gradient_checkpointing_is_active_in_the_run_setup(tiny_causal_lm_dir, prompts_file, tmp_path):
    from rewardtune.run import start_run
    from rewardtune.train.pg_update import policy_loss, reference_logprobs
    from rewardtune.train.gen_setup import setup_policy

    saved = {}
    for flag in ("false", "true"):
        cfg = run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, f"setup-{flag}", f"runtime.gradient_checkpointing={flag}")
        model, tok, _, _, _, ref = setup_policy(cfg, start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed))
        ro = sample(model, tok, PROMPTS, 2, cfg.gen, 100)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        ref_logp = reference_logprobs(model, ref, ro, cfg.gen.temperature)  # no gradient: saves nothing
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            policy_loss(model, ro, torch.ones(8), ro.completion_mask, update_plan(cfg.rl, cfg.gen), cfg.rl.kl_coef,
                        ref_logp=ref_logp)
        saved[flag] = total[0]
    assert saved["true"] < saved["false"] / 2, saved  # only each layer's input is kept for the backward pass


def test_run_setup_prepacks_the_frozen_base_layers_unless_switched_off(tiny_causal_lm_dir, prompts_file, tmp_path):
    from rewardtune import prepack
    from rewardtune.run import start_run
    from rewardtune.train.gen_setup import setup_policy

    if not prepack.available():
        pytest.skip("this torch build has no oneDNN prepacked linear")
    routed = {}
    for flag, autocast in (("true", "no"), ("false", "no"), ("true", "bf16")):
        cfg = run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, f"pack-{flag}-{autocast}", f"model.lora.prepack={flag}",
                      f"runtime.mixed_precision={autocast}")
        model = setup_policy(cfg, start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed))[0]
        routed[flag, autocast] = sum("forward" in vars(m) for m in model.modules() if type(m) is torch.nn.Linear)
    # 2 layers × q, k, v, o, gate, up, down, and the LM head; none under bf16 autocast, whose matmuls would not use them
    assert routed == {("true", "no"): 2 * 7 + 1, ("false", "no"): 0, ("true", "bf16"): 0}


def test_bad_settings_and_rewards_fail_clearly(tiny_causal_lm_dir, prompts_file, tmp_path):
    for algorithm in ("grpo", "dr_grpo", "rloo"):
        with pytest.raises(ValueError, match=f"algorithm '{algorithm}' compares samples.*samples_per_prompt must be ≥ 2"):
            train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "a", "rl.samples_per_prompt=1",
                                      f"rl.algorithm={algorithm}"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(RewardError, match="returned nan"):
        train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "b",
                                  "reward.functions=[test_classifier_training:returns_nan]"), show_progress=False)
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "the " * 200}) + "\n" + json.dumps({"prompt": "a film"}) + "\n")
    with pytest.raises(ValueError, match="longer than 122 tokens"):
        train_rl_generate(run_cfg(tiny_causal_lm_dir, long, tmp_path, "c", "eval.prompts=1", "rl.prompts_per_step=1"),
                          show_progress=False)


CHAT = "{% for m in messages %}<|user|> {{ m['content'] }} <|end|>{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"


def test_chat_template_prompts_are_sampled_and_measured_as_templated(policy):
    from rewardtune.train.gen_setup import check_prompt_lengths

    model, tok = policy
    tok.chat_template = CHAT
    torch.manual_seed(0)
    ro = sample(model, tok, PROMPTS[:2], 2, GenSettings(max_new_tokens=3, chat_template=True), 100)
    want = tok.apply_chat_template([{"role": "user", "content": PROMPTS[1]}], tokenize=True, add_generation_prompt=True,
                                   return_dict=True)["input_ids"]
    assert ro.prompt_ids[2][ro.prompt_mask[2].bool()].tolist() == list(want)  # the template, as the tokenizer makes it
    raw = len(tok(PROMPTS[1])["input_ids"])
    assert len(want) > raw  # the template adds tokens, which the length check must count
    check_prompt_lengths(tok, [PROMPTS[1]], len(want), chat_template=True)
    check_prompt_lengths(tok, [PROMPTS[1]], raw)
    with pytest.raises(ValueError, match=rf"1 prompt\(s\) longer than {len(want) - 1} tokens with the chat template"):
        check_prompt_lengths(tok, [PROMPTS[1]], len(want) - 1, chat_template=True)
    tok.chat_template = None
    with pytest.raises(ValueError, match="this tokenizer has no chat template"):
        check_prompt_lengths(tok, [PROMPTS[1]], 100, chat_template=True)


def test_too_few_prompts_to_hold_out_is_said(tiny_causal_lm_dir, tmp_path, capsys):
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    train_rl_generate(run_cfg(tiny_causal_lm_dir, few, tmp_path, "few", "rl.steps=1"), show_progress=False)
    assert "no more than eval.prompts=2 prompts, so training uses the held-out prompts" in capsys.readouterr().out
    train_rl_generate(run_cfg(tiny_causal_lm_dir, few, tmp_path, "enough", "rl.steps=1", "eval.prompts=1"),
                      show_progress=False)
    assert "held-out prompts too" not in capsys.readouterr().out


def test_cli_rl_dispatches_on_policy(tiny_causal_lm_dir, prompts_file, tmp_path, capsys):
    from rewardtune.cli import main

    args = ["rl", "policy=causal-lm", f"model.name={tiny_causal_lm_dir}", f"data.path={prompts_file}",
            "rl.steps=1", "eval.prompts=2", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
            "gen.max_new_tokens=3", f"runs_dir={tmp_path}", "name=cli"]
    assert main(args) == 0
    assert (tmp_path / "cli" / "checkpoints" / "final").is_dir()
    assert main(["rl", "policy=robot"]) == 2
    assert "policy 'robot' is not one of: classifier, causal-lm" in capsys.readouterr().err
    # stop strings the tokenizer cannot handle: one clear line, before the first evaluation or step
    assert main(args[:-1] + ["name=stops", "gen.stop_strings=[the]"]) == 2
    assert "rewardtune: error: gen.stop_strings=['the']: " in capsys.readouterr().err
    assert not (tmp_path / "stops" / "metrics.jsonl").exists()


def test_ppo_runs_and_trains_lora_and_value_head(tiny_causal_lm_dir, prompts_file, tmp_path):
    train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "ppo", "rl.algorithm=ppo",
                              "rl.samples_per_prompt=1", "rl.prompts_per_step=4", "ppo.epochs=2", "ppo.minibatches=2"),
                      show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 3 and all(math.isfinite(r["loss"]) and math.isfinite(r["value_loss"]) for r in train)
    assert all(0 <= r["clip_frac"] <= 1 and r["entropy"] > 0 for r in train)
    head = load_file(str(tmp_path / "ppo" / "checkpoints" / "final" / "value_head.safetensors"))
    assert head["linear.weight"].abs().max() > 0  # zero-initialised, so it was trained
    lora_b = load_file(str(tmp_path / "ppo" / "checkpoints" / "final" / "adapter_model.safetensors"))
    assert any(v.abs().max() > 0 for k, v in lora_b.items() if "lora_B" in k)  # B starts at 0: LoRA was trained


def test_ppo_one_epoch_unclipped_equals_plain_policy_gradient(policy):
    from rewardtune.algorithms import gae, kl_penalized_rewards, masked_whiten, pg_loss
    from rewardtune.train.gen_config import PPOSettings
    from rewardtune.train.ppo import ValueHead, ppo_update

    model, tok = policy
    torch.manual_seed(3)
    gen = GenSettings(max_new_tokens=5)
    ro = sample(model, tok, PROMPTS, 2, gen, 100)
    scores = torch.randn(8)
    head = ValueHead(model.config.hidden_size)
    ppo = PPOSettings(epochs=1, minibatches=1, clip_eps=1e9, vf_coef=0.0)  # no clipping, as the issue states it
    torch.manual_seed(4)
    model.zero_grad(set_to_none=True)
    ppo_update(lambda loss: loss.backward(), lambda loss: None, model, head, ro, scores, None, 0.0, ppo,
               update_plan(GenRLSettings(algorithm="ppo"), gen, ppo=ppo))
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # The plain policy gradient with the same token advantages (V = 0: zero-initialised head, β = 0).
    mask = ro.completion_mask
    adv, _ = gae(kl_penalized_rewards(scores, ro.logprobs, ro.logprobs, mask, 0.0), torch.zeros(mask.shape), mask, 1.0, 0.95)
    adv = masked_whiten(adv, mask)
    model.zero_grad(set_to_none=True)
    logp, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, mask.shape[1])
    pg_loss(logp, adv, mask, "token_mean")[0].backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and got
    for n in got:  # ratios are exp(fresh - rollout log-probs) ≈ 1, not exactly: hence the tolerance
        assert torch.allclose(got[n], want[n], atol=1e-5, rtol=1e-3), n


@pytest.mark.parametrize("kl_mode", ["reward", "loss"])
def test_ppo_kl_follows_the_estimator_and_mode(policy, kl_mode):
    """PPO with one epoch, one minibatch and no value loss is the plain policy gradient on GAE's whitened token
    advantages; the chosen estimator (k3) goes into the token rewards or, as β·k3's token mean, into the loss."""
    from rewardtune.algorithms import gae, kl_loss, kl_penalized_rewards, masked_whiten, pg_loss
    from rewardtune.train.pg_update import reference_logprobs
    from rewardtune.train.gen_config import PPOSettings
    from rewardtune.train.ppo import ValueHead, ppo_update

    model, tok = policy
    torch.manual_seed(5)
    with torch.no_grad():  # the policy differs from the adapter-disabled reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    gen, beta = GenSettings(max_new_tokens=5), 0.3
    ro = sample(model, tok, PROMPTS, 2, gen, 100)
    ref = reference_logprobs(model, model.disable_adapter, ro, 1.0)
    scores, mask = torch.randn(8), ro.completion_mask
    ppo = PPOSettings(epochs=1, minibatches=1, clip_eps=0.2, vf_coef=0.0)
    model.zero_grad(set_to_none=True)
    out = ppo_update(lambda loss: loss.backward(), lambda loss: None, model, ValueHead(model.config.hidden_size), ro,
                     scores, ref, beta, ppo,
                     update_plan(GenRLSettings(algorithm="ppo", kl_estimator="k3", kl_mode=kl_mode), gen, ppo=ppo))
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    token_rewards = kl_penalized_rewards(scores, ro.logprobs, ref, mask, beta if kl_mode == "reward" else 0.0, "k3")
    adv = masked_whiten(gae(token_rewards, torch.zeros(mask.shape), mask, 1.0, 0.95)[0], mask)
    model.zero_grad(set_to_none=True)
    logp, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, mask.shape[1])
    loss = pg_loss(logp, adv, mask, "token_mean")[0]
    if kl_mode == "loss":
        loss = loss + kl_loss(logp, ref, mask, beta, "k3", "token_mean")[0]
    loss.backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-5, rtol=1e-3), n
    k3 = torch.exp(ref - ro.logprobs) - (ref - ro.logprobs) - 1  # the logged KL is k3's token mean
    assert out["kl"] == pytest.approx(float(k3[mask.bool()].mean()), rel=1e-5) and out["kl"] > 1e-3


def test_auto_settings_follow_the_algorithm(tiny_causal_lm_dir, prompts_file, tmp_path):
    auto = GenRLSettings().resolved()
    assert auto.aggregation == "seq_mean_token_mean" and auto.kl_mode == "loss" and auto.kl_estimator == "k3"
    ppo = GenRLSettings(algorithm="ppo").resolved()
    assert (ppo.kl_mode, ppo.kl_estimator) == ("reward", "k1")  # Ziegler et al.'s penalty, as PPO always had it
    assert GenRLSettings(algorithm="dr_grpo").resolved().aggregation == "seq_mean_token_sum"  # a constant normaliser
    assert GenRLSettings(algorithm="dr_grpo", aggregation="token_mean").resolved().aggregation == "token_mean"  # as asked
    assert GenRLSettings(algorithm="ppo").resolved().kl_mode == "reward"
    assert GenRLSettings(algorithm="ppo", kl_mode="loss").resolved().kl_mode == "loss"
    cfg = run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "auto", "rl.algorithm=dr_grpo", "rl.steps=1")
    assert cfg.rl.aggregation == "auto"
    train_rl_generate(cfg, show_progress=False)
    assert "aggregation: seq_mean_token_sum" in (tmp_path / "auto" / "config.yaml").read_text()  # what ran


@pytest.mark.parametrize("extra", [["rl.kl_mode=reward", "rl.kl_estimator=k1"], ["rl.kl_target=0.001", "rl.kl_horizon=10"]])
def test_kl_in_reward_and_adaptive_beta(tiny_causal_lm_dir, prompts_file, tmp_path, extra):
    out = train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "kl", "rl.kl_coef=0.5", *extra),
                            show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 3 and all(math.isfinite(r["loss"]) and "kl" in r for r in train)
    betas = [r["kl_coef"] for r in train]
    if "rl.kl_target=0.001" in extra:
        # β_{t+1} = β_t · (1 + clip(KL_t / target − 1, ±0.2) · n / horizon), n = 6 samples, horizon 10:
        # step 1's KL is 0 (the policy is the reference) → β × (1 − 0.2·0.6) = 0.44
        assert betas[0] == 0.5 and betas[1] == pytest.approx(0.44)
        for r, nxt in zip(train, betas[1:]):
            err = min(max(r["kl"] / 0.001 - 1, -0.2), 0.2)
            assert nxt == pytest.approx(r["kl_coef"] * (1 + err * 6 / 10))
    else:
        assert betas == [0.5] * 3
    assert out["steps"] == 3


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_bf16_autocast_runs_with_finite_losses(tiny_causal_lm_dir, prompts_file, tmp_path, algorithm):
    out = train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "bf16", "runtime.mixed_precision=bf16",
                                    f"rl.algorithm={algorithm}", "rl.kl_coef=0.1"), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in train] == [True] * 3 and out["steps"] == 3


def test_bf16_base_weights_with_a_float32_adapter(tiny_causal_lm_dir, prompts_file, tmp_path):
    from rewardtune.run import start_run
    from rewardtune.train.gen_setup import setup_policy

    cfg = run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "bf16-base", "model.lora.base_dtype=bfloat16")
    model, tok, _, params, _, _ = setup_policy(cfg, start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed))
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16} and {p.dtype for p in params} == {torch.float32}
    torch.manual_seed(1)
    ro = sample(model, tok, PROMPTS, 2, GenSettings(max_new_tokens=6), 100)
    fresh, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_ids.shape[1])
    m = ro.completion_mask.bool()
    # bf16 rounding differs between the cached decode and the one-shot pass: looser than fp32's 1e-4
    assert torch.allclose(fresh[m], ro.logprobs[m], atol=2e-2), (fresh[m] - ro.logprobs[m]).abs().max()
    out = train_rl_generate(replace(cfg, name="bf16-run"), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "bf16-run" / "metrics.jsonl").read_text().splitlines()]
    assert [math.isfinite(r["loss"]) for r in rows if r["split"] == "train"] == [True] * 3 and out["steps"] == 3
    saved = load_file(str(tmp_path / "bf16-run" / "checkpoints" / "final" / "adapter_model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)


def test_bf16_base_weights_need_lora_on_a_causal_lm(tiny_causal_lm_dir, tiny_encoder_dir):
    from rewardtune.models import ModelError, load_classifier

    model, _ = load_causal_lm(str(tiny_causal_lm_dir))
    with pytest.raises(ModelError, match="needs a LoRA adapter.*model.lora.base_dtype=float32"):
        apply_lora(model, LoraSettings(r=0, base_dtype="bfloat16"))
    clf, _ = load_classifier(str(tiny_encoder_dir), 2)
    with pytest.raises(ModelError, match="on a causal LM"):
        apply_lora(clf, LoraSettings(r=4, base_dtype="bfloat16"))


def test_train_rows_under_several_processes_report_the_global_batch(tmp_path):
    """global_batch, with the other process's share faked: the logged rewards, lengths and each component's mean and
    std are over both shares, the dropped samples summed, the statistics averaged; token_mean_shares turns a token
    mean into a share whose average over processes is the global token mean."""
    from types import SimpleNamespace

    from rewardtune.run import RunContext
    from rewardtune.train.lm_report import TrainBatch, global_batch, log_train_step
    from rewardtune.collectives import token_mean_shares

    mine = TrainBatch(torch.tensor([[1.0, 0.0]]), torch.tensor([4, 2]), {"len": torch.tensor([0.5, float("nan")])}, 1)
    other = TrainBatch(torch.tensor([[1.0, 1.0]]), torch.tensor([6, 8]), {"len": torch.tensor([0.25, 0.75])}, 2)
    pairs = {id(t): o for t, o in [(mine.rewards, other.rewards), (mine.lengths, other.lengths),
                                   (mine.components["len"], other.components["len"])]}
    acc = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, num_processes=2,
                          gather=lambda t: torch.cat([t, pairs[id(t)]]))
    # Token means → shares: this process has 6 tokens, the other 14 (10 per process): kl 0.1 → 0.1·6/10.
    acc.reduce = lambda t, op: (t + 14.0) / 2
    shares = token_mean_shares(acc, {"kl": 0.1, "entropy": 2.0, "loss": 0.7}, torch.tensor([[1] * 6]))
    assert shares == {"kl": pytest.approx(0.06), "entropy": pytest.approx(1.2), "loss": 0.7}
    # The other process's shares: kl 0.3 over 14 tokens → 0.42, loss 0.5. Their mean: (0.1·6 + 0.3·14) / 20.
    acc.reduce = lambda t, op: t + torch.tensor([0.42, 0.5, float(other.dropped), 1.0])  # kl, loss, dropped, weight
    run = RunContext(dir=tmp_path, seed=0, accelerator=acc)
    tb, stats = global_batch(run, mine, {"kl": shares["kl"], "loss": 0.7})
    assert tb.rewards.tolist() == [[1.0, 0.0], [1.0, 1.0]] and tb.lengths.tolist() == [4, 2, 6, 8] and tb.dropped == 3
    assert stats == {"kl": pytest.approx((0.1 * 6 + 0.3 * 14) / 20), "loss": pytest.approx((0.7 + 0.5) / 2)}
    log_train_step(run, 1, tb, stats, beta=0.04, time_generate=2.0)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["batch"] == 4 and row["completion_len"] == 5.0 and row["tokens_per_s"] == 10.0  # 20 tokens / 2 s
    assert row["reward/len"] == pytest.approx(0.5) and row["reward_std/len"] == pytest.approx(0.25)  # 0.5, .25, .75
    assert row["reward_dropped"] == 3 and row["equal_reward_groups"] == 0.5
