"""Seq2seq policies (`policy=seq2seq`) on tiny random T5 and BART models: sampled log-probs equal a fresh forward pass,
the encoder runs once per prompt, greedy decoding is transformers' own, batches and the loss by hand, RL steps train
the adapter (GRPO, RLOO, REINFORCE, PPO), SFT lowers the loss and its checkpoint starts RL, exact resumption, a
wrong model kind refused before the run folder exists, and eval-lm on a seq2seq checkpoint."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.config import ConfigError, load_config
from rewardtune.eval_lm import EvalLMJob, run_eval_lm
from rewardtune.policies import seq2seq
from rewardtune.policies.causal_lm import GenSettings
from rewardtune.train.gen_config import GenRLConfig, RewardSettings
from rewardtune.train.rl_generate import train_rl_generate
from rewardtune.train.sft_lm import train_sft_lm
from rewardtune.train.sft_lm_config import SFTLMConfig
from rewardtune.train.sft_lm_data import IGNORE, seq2seq_collate, target_nll

from helpers import make_tokenizer
from test_resume import assert_same_run

ADJECTIVES = "good great bad awful boring fun funny sad dull brilliant slow fast".split()
PROMPTS = ["the film was good", "a bad movie", "the acting was very dull"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 32-wide matrices, handing work to a second thread costs more than it saves (several
    times more on a busy machine); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_seq2seq(tmp_path_factory):
    """{"t5": folder, "bart": folder, "bart-forced": folder}: 2-layer, hidden-32 random models over the tiny word
    tokenizer; "bart-forced" forces its first decoded token (bos), as facebook/bart-large-cnn does."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    tok = make_tokenizer()
    ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    models = {
        "t5": lambda: T5ForConditionalGeneration(T5Config(d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16,
                                                          decoder_start_token_id=tok.pad_token_id, **ids)),
        "bart": lambda: BartForConditionalGeneration(BartConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
            decoder_start_token_id=tok.eos_token_id, forced_bos_token_id=None, **ids)),
    }
    models["bart-forced"] = lambda: _forcing(models["bart"](), tok.cls_token_id)
    out = {}
    for name, make in models.items():
        torch.manual_seed(0)
        out[name] = tmp_path_factory.mktemp(f"tiny-{name}")
        make().save_pretrained(out[name])
        tok.save_pretrained(out[name])
    return out


def _forcing(model, token):
    model.generation_config.forced_bos_token_id = token
    return model


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _prompts(tmp_path):
    return _write(tmp_path / "p.jsonl", [{"prompt": f"the film was {w}", "reference": f"it was {w}"} for w in ADJECTIVES])


def _rl_cfg(model, data, tmp_path, name, *extra):
    return load_config(GenRLConfig, None, [
        "policy=seq2seq", f"model.name={model}", "model.lora.r=4", f"data.path={data}", "rl.prompts_per_step=2",
        "rl.samples_per_prompt=3", "rl.steps=2", "rl.lr=1e-2", "eval.prompts=2", "eval.every=0", "gen.max_new_tokens=5",
        "reward.functions=[chrf]", f"runs_dir={tmp_path}", f"name={name}", *extra])


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the policy
@pytest.mark.parametrize("arch", ["t5", "bart", "bart-forced"])
def test_sampled_logprobs_equal_a_fresh_forward_pass_and_the_encoder_runs_once_per_prompt(arch, tiny_seq2seq):
    model, tok = seq2seq.load_seq2seq_lm(str(tiny_seq2seq[arch]))
    calls = []
    hook = model.get_encoder().register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                                     with_kwargs=True)
    torch.manual_seed(1)
    ro = seq2seq.sample(model, tok, PROMPTS, 3, GenSettings(max_new_tokens=6, temperature=0.7, top_k=20), 100)
    assert calls == [(3, ro.prompt_ids.shape[1])]  # one pass over the 3 prompts, not over their 9 rows
    T, m = ro.completion_ids.shape[1], ro.completion_mask
    shared, _ = seq2seq.token_logprobs(model, ro.input_ids, ro.attention_mask, T, 0.7)
    assert len(calls) == 2 and calls[1][0] == 3  # the training pass too: once per group of rows sharing a prompt
    hook.remove()
    one_pass, _ = seq2seq.token_logprobs(model, ro.input_ids, ro.attention_mask, T, 0.7, share_prompt=False)
    assert m.sum() > 9 and torch.allclose(shared * m, ro.logprobs, atol=1e-5)
    assert torch.allclose(one_pass * m, ro.logprobs, atol=1e-5)
    (at_07, at_1) = seq2seq.token_logprobs_at(model, ro.input_ids, ro.attention_mask, T, (0.7, 1.0))
    assert torch.allclose(at_07, shared, atol=1e-6) and not torch.allclose(at_1 * m, shared * m)
    torch.manual_seed(1)  # decoding a prompt at a time gives each row the same tokens (draws fixed beforehand)
    again = seq2seq.sample(model, tok, PROMPTS, 3, GenSettings(max_new_tokens=6, temperature=0.7, top_k=20), 100, rows=3)
    assert again.completions == ro.completions


@pytest.mark.parametrize("arch", ["t5", "bart", "bart-forced"])
def test_greedy_decoding_is_transformers_greedy_generate(arch, tiny_seq2seq):
    from transformers import GenerationConfig

    model, tok = seq2seq.load_seq2seq_lm(str(tiny_seq2seq[arch]))
    ro = seq2seq.sample(model, tok, PROMPTS, 1, GenSettings(max_new_tokens=7), 100, greedy=True)
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    forced = model.generation_config.forced_bos_token_id  # generate counts a forced token as a new one
    config = GenerationConfig(do_sample=False, max_new_tokens=7 + (forced is not None), pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, decoder_start_token_id=seq2seq.decoder_start_id(model),
                              bad_words_ids=[[tok.pad_token_id]],  # pad is no action (seq2seq.policy_logits)
                              forced_bos_token_id=forced)
    prefix = seq2seq.decoder_prefix(model)
    assert len(prefix) == (2 if arch == "bart-forced" else 1)
    out = model.generate(**enc, generation_config=config)
    assert out[:, :len(prefix)].tolist() == [prefix] * len(PROMPTS)  # the start token, then the forced one
    ref = out[:, len(prefix):]  # the actions: what follows the prefix
    T = ro.completion_ids.shape[1]
    assert torch.equal(ro.completion_ids, torch.where(ro.completion_mask.bool(), ref[:, :T], tok.pad_token_id))


def test_pad_is_never_chosen_even_by_a_model_that_prefers_it(tiny_seq2seq):
    model, tok = seq2seq.load_seq2seq_lm(str(tiny_seq2seq["bart"]))
    model.final_logits_bias[0, tok.pad_token_id] = 50.0  # pad now takes nearly all of the softmax's mass
    ro = seq2seq.sample(model, tok, PROMPTS, 3, GenSettings(max_new_tokens=6), 100)
    m = ro.completion_mask
    assert m[:, 0].all() and not (ro.completion_ids[m.bool()] == tok.pad_token_id).any()
    lp, ent = seq2seq.token_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_ids.shape[1])
    assert torch.allclose(lp * m, ro.logprobs, atol=1e-5) and torch.isfinite(ent).all()
    # uniform logits over V tokens → pad 0, each other token 1 / (V − 1)
    probs = seq2seq.policy_logits(model, torch.zeros(1, len(tok))).softmax(-1)[0]
    assert probs[tok.pad_token_id] == 0.0 and torch.allclose(probs[1:], torch.full((len(tok) - 1,), 1 / (len(tok) - 1)))


def test_a_seq2seq_batch_and_its_loss_by_hand():
    # rows: context [5, 6] then targets [7, 8]; context [9] then target [4]; pad 0, decoder start 2
    b = seq2seq_collate([[5, 6, 7, 8], [9, 4]], [[False, False, True, True], [False, True]], 0, prefix=[2])
    assert b["input_ids"].tolist() == [[5, 6], [9, 0]] and b["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert b["decoder_input_ids"].tolist() == [[2, 7], [2, 0]]  # [start] + targets[:-1]
    assert b["labels"].tolist() == [[7, 8], [4, IGNORE]]
    # a forced first token (3) after the start: read, never predicted (the start's position has no label)
    f = seq2seq_collate([[5, 6, 7, 8], [9, 4]], [[False, False, True, True], [False, True]], 0, prefix=[2, 3])
    assert f["decoder_input_ids"].tolist() == [[2, 3, 7], [2, 3, 0]]  # [start, forced] + targets[:-1]
    assert f["labels"].tolist() == [[IGNORE, 7, 8], [IGNORE, 4, IGNORE]]
    logits = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])  # position t predicts labels[t]: no shift
    total, n = target_nll(logits, torch.tensor([[0, IGNORE]]))
    assert int(n) == 1 and float(total) == pytest.approx(math.log(4 / 3))  # -log ¾


# ---------------------------------------------------------------- runs
@pytest.mark.parametrize("arch,algorithm", [("t5", "grpo"), ("bart", "rloo"), ("t5", "reinforce"), ("bart", "ppo")])
def test_a_few_rl_steps_train_the_adapter(arch, algorithm, tiny_seq2seq, tmp_path):
    out = train_rl_generate(_rl_cfg(tiny_seq2seq[arch], _prompts(tmp_path), tmp_path, "rl", f"rl.algorithm={algorithm}",
                                    "rl.kl_coef=0.1"), show_progress=False)
    train = [r for r in _metrics(tmp_path / "rl") if r["split"] == "train"]
    assert out["steps"] == len(train) == 2 and all(math.isfinite(r["loss"]) and "kl" in r for r in train)
    assert {"reward", "kl_greedy", "ref_perplexity"} <= out["eval"].keys()  # the reference: the adapter disabled
    adapter = load_file(str(tmp_path / "rl" / "checkpoints" / "final" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]  # zero at the start
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)


def test_rl_stop_and_resume_equals_a_straight_run(tiny_seq2seq, tmp_path):
    data, extra = _prompts(tmp_path), ("rl.steps=3", "reward.normalize=running")
    train_rl_generate(_rl_cfg(tiny_seq2seq["t5"], data, tmp_path, "straight", *extra), show_progress=False)
    first = train_rl_generate(_rl_cfg(tiny_seq2seq["t5"], data, tmp_path, "resumed", *extra, "ckpt.stop_after=2"),
                              show_progress=False)
    assert first["stopped"] and first["steps"] == 2
    train_rl_generate(_rl_cfg(tiny_seq2seq["t5"], data, tmp_path, "resumed", *extra, "ckpt.resume=auto"),
                      show_progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", 3)


def _sft_cfg(model, data, tmp_path, name, *extra):
    return load_config(SFTLMConfig, None, [
        "policy=seq2seq", f"model.name={model}", f"data.path={data}", "data.val_fraction=0.25", "train.epochs=3",
        "train.batch_size=3", "train.lr=0.01", "train.log_every=1", "model.lora.r=4", "eval.prompts=2",
        "eval.max_new_tokens=4", "reward.functions=[token_f1]", "reward.reference_column=completion",
        f"runs_dir={tmp_path}", f"name={name}", *extra])


def _sft_data(tmp_path, n=12):
    return _write(tmp_path / "sft.jsonl", [{"prompt": f"the film was {w} and", "completion": f"it was {w}"}
                                           for w in ADJECTIVES[:n]])


@pytest.mark.parametrize("arch", ["bart", "bart-forced"])
def test_sft_lowers_the_validation_loss_and_its_checkpoint_starts_rl(arch, tiny_seq2seq, tmp_path):
    out = train_sft_lm(_sft_cfg(tiny_seq2seq[arch], _sft_data(tmp_path), tmp_path, "sft"), show_progress=False)
    val = [r["loss"] for r in _metrics(tmp_path / "sft") if r["split"] == "eval" and "loss" in r]
    assert len(val) == 3 and val[-1] < val[0] and out["best"]["loss"] == min(val)
    best = tmp_path / "sft" / "checkpoints" / "best"
    assert not (best / "adapter_config.json").exists()  # merged: a plain model folder
    rl = train_rl_generate(_rl_cfg(best, _prompts(tmp_path), tmp_path, "rl", "rl.steps=1"), show_progress=False)
    assert rl["steps"] == 1 and math.isfinite(rl["eval"]["reward"])


def test_sft_stop_and_resume_equals_a_straight_run(tiny_seq2seq, tmp_path):
    # 6 training rows in batches of 3: 2 steps per epoch; stopped after step 3, mid-epoch
    data, extra = _sft_data(tmp_path, 8), ("train.epochs=2", "eval.every=2", "eval.prompts=1", "eval.best_metric=reward",
                                           "eval.best_mode=max")
    train_sft_lm(_sft_cfg(tiny_seq2seq["t5"], data, tmp_path, "straight", *extra), show_progress=False)
    first = train_sft_lm(_sft_cfg(tiny_seq2seq["t5"], data, tmp_path, "resumed", *extra, "ckpt.stop_after=3"),
                         show_progress=False)
    assert first["stopped"] and first["steps"] == 3
    train_sft_lm(_sft_cfg(tiny_seq2seq["t5"], data, tmp_path, "resumed", *extra, "ckpt.resume=auto"), show_progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", 4)


def test_a_model_of_the_other_kind_is_refused_before_the_run_folder(tiny_seq2seq, tiny_causal_lm_dir, tmp_path):
    with pytest.raises(ConfigError, match="policy=causal-lm"):
        train_rl_generate(_rl_cfg(tiny_causal_lm_dir, _prompts(tmp_path), tmp_path, "rl"), show_progress=False)
    with pytest.raises(ConfigError, match="policy=seq2seq"):
        train_sft_lm(_sft_cfg(tiny_seq2seq["t5"], _sft_data(tmp_path), tmp_path, "sft", "policy=causal-lm"),
                     show_progress=False)
    assert not (tmp_path / "rl").exists() and not (tmp_path / "sft").exists()


def test_eval_lm_on_a_seq2seq_adapter_gives_the_runs_held_out_reward(tiny_seq2seq, tmp_path):
    held = _write(tmp_path / "held.jsonl", [{"prompt": f"a {w} plot", "reference": f"it was {w}"} for w in ADJECTIVES[:2]])
    train_rl_generate(_rl_cfg(tiny_seq2seq["bart"], _prompts(tmp_path), tmp_path, "rl", f"data.val_path={held}"),
                      show_progress=False)
    last = [r for r in _metrics(tmp_path / "rl") if r["split"] == "eval"][-1]
    job = EvalLMJob(str(tmp_path / "rl" / "checkpoints" / "final"), str(held), RewardSettings(functions=("chrf",)),
                    GenSettings(max_new_tokens=5))
    got = run_eval_lm(job, device="cpu")
    assert got.metrics["reward"] == pytest.approx(last["reward"]) and len(got.records) == 2


def test_the_command_line_dispatches_policy_seq2seq(tiny_seq2seq, tmp_path, capsys):
    from rewardtune.cli import main

    assert main(["rl", "policy=seq2seq", f"model.name={tiny_seq2seq['t5']}", f"data.path={_prompts(tmp_path)}",
                 "rl.steps=1", "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "eval.prompts=1",
                 "gen.max_new_tokens=3", "model.lora.r=2", f"runs_dir={tmp_path}", "name=cli"]) == 0
    out = capsys.readouterr().out
    assert "rl (grpo, seq2seq)" in out and json.loads(out[out.index("{\n"):])["steps"] == 1


def test_a_chat_row_with_several_assistant_turns_is_refused_for_seq2seq(tiny_seq2seq, tmp_path):
    from rewardtune.data import DataError
    from rewardtune.models import load_tokenizer
    from rewardtune.train.sft_lm_config import SFTLMData
    from rewardtune.train.sft_lm_data import check_seq2seq_rows, read_rows

    tok = load_tokenizer(str(tiny_seq2seq["t5"]))
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}[SEP] {% else %}[CLS] {% endif %}"
                         "{{ m['content'] }} <eos> {% endfor %}{% if add_generation_prompt %}[SEP] {% endif %}")
    turns = [{"role": "user", "content": "the film"}, {"role": "assistant", "content": "was good"}]
    path = _write(tmp_path / "chat.jsonl", [{"messages": turns}, {"messages": turns * 2}])
    rows = read_rows(str(path), SFTLMData(), tok, 64, False)
    check_seq2seq_rows(rows.subset([0]))  # one assistant turn, the last: context → encoder, the turn → decoder
    with pytest.raises(DataError, match=r"chat.jsonl, line 2: .*several assistant turns"):
        check_seq2seq_rows(rows)


def test_full_fine_tuning_keeps_a_frozen_copy_as_the_reference(tiny_seq2seq, tmp_path):
    out = train_rl_generate(_rl_cfg(tiny_seq2seq["bart"], _prompts(tmp_path), tmp_path, "full", "model.lora.r=0",
                                    "rl.kl_coef=0.1", "rl.steps=1"), show_progress=False)
    assert out["eval"]["kl_greedy"] != 0.0 and math.isfinite(out["eval"]["ref_perplexity"])  # against the copy
    start = load_file(str(tiny_seq2seq["bart"] / "model.safetensors"))
    final = load_file(str(tmp_path / "full" / "checkpoints" / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start if k in final)


# ---------------------------------------------------------------- Marian: two sentencepiece models, one vocabulary
ENGLISH = "the film was good bad dull fun a movie it".split()
GERMAN = "der film war gut schlecht langweilig lustig ein es".split()


def _spm(words, path):
    """A word-level sentencepiece model over `words`, written to `path`; its pieces."""
    import io

    import sentencepiece as spm

    proto = io.BytesIO()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 5
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=proto, model_type="word",
                                   vocab_size=len(words) + 1, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
                                   minloglevel=2)
    path.write_bytes(proto.getvalue())
    model = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    return [model.id_to_piece(i) for i in range(model.get_piece_size())]


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory):
    """A 2-layer random Marian model whose tokenizer has an English source and a German target sentencepiece model
    (as opus-mt-en-de has), with the vocabulary they share."""
    pytest.importorskip("sentencepiece", reason="Marian's tokenizer needs sentencepiece (pip install sentencepiece)")
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder = tmp_path_factory.mktemp("tiny-marian")
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for piece in _spm(ENGLISH, folder / "source.spm") + _spm(GERMAN, folder / "target.spm"):
        vocab.setdefault(piece, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tok = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"))
    torch.manual_seed(0)
    MarianMTModel(MarianConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _translations(tmp_path):
    pairs = [("the film was good", "der film war gut"), ("a movie was bad", "ein film war schlecht"),
             ("it was dull", "es war langweilig"), ("the movie was fun", "der film war lustig")] * 3
    return _write(tmp_path / "mt.jsonl", [{"prompt": en, "completion": de} for en, de in pairs])


def test_marian_targets_are_tokenised_with_the_target_language_model(tiny_marian, tmp_path):
    from rewardtune.models import load_tokenizer
    from rewardtune.train.sft_lm_config import SFTLMData
    from rewardtune.train.sft_lm_data import read_rows

    tok = load_tokenizer(str(tiny_marian))
    assert tok.unk_token_id in tok("der film war gut")["input_ids"]  # the English model does not know "der": unk
    rows = read_rows(str(_translations(tmp_path)), SFTLMData(), tok, 64, False)
    targets = [i for i, t in zip(rows.ids[0], rows.target[0]) if t]
    assert tok.unk_token_id not in targets and targets[-1] == tok.eos_token_id
    assert tok.decode(targets, skip_special_tokens=True) == "der film war gut"  # decoded as sampling decodes


def test_marian_sft_then_rl(tiny_marian, tmp_path):
    data = _translations(tmp_path)
    out = train_sft_lm(_sft_cfg(tiny_marian, data, tmp_path, "sft", "reward.functions=[chrf]"), show_progress=False)
    val = [r["loss"] for r in _metrics(tmp_path / "sft") if r["split"] == "eval" and "loss" in r]
    assert val[-1] < val[0] and math.isfinite(out["eval"]["reward"])
    rl = train_rl_generate(_rl_cfg(tmp_path / "sft" / "checkpoints" / "best", data, tmp_path, "rl",
                                   "reward.reference_column=completion"), show_progress=False)
    assert rl["steps"] == 2 and math.isfinite(rl["eval"]["reward"])
