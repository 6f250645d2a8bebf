"""`rewardtune sft policy=causal-lm`: loss masking by hand, a few-step run (loss, weights, validation rows), exact
resumption, an RL run started from its checkpoint, bad rows refused before the run folder exists, chat turns through
a chat template, and the command line's dispatch."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.cli import main
from rewardtune.config import load_config
from rewardtune.data import DataError
from rewardtune.models import load_tokenizer
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.rl_generate import train_rl_generate
from rewardtune.train.sft_lm import train_sft_lm
from rewardtune.train.sft_lm_config import SFTLMConfig, SFTLMData
from rewardtune.train.sft_lm_data import IGNORE, collate, read_rows, token_nll
from rewardtune.train.gen_setup import (long_reference_warning, long_reference_warnings, reference_columns,
                                         setup_reward)

from test_resume import assert_same_run, rows

ADJECTIVES = "good great bad awful boring fun funny sad dull brilliant slow fast".split()
# user turns after [CLS], assistant turns after [SEP], each ended by <eos> (all in the tiny tokenizer's vocabulary)
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}[SEP] {% else %}[CLS] {% endif %}"
                 "{{ m['content'] }} <eos> {% endfor %}{% if add_generation_prompt %}[SEP] {% endif %}")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _data(tmp_path, n=12):
    rows = [{"prompt": f"the film was {w} and", "completion": f"it was {w}", "n": i}
            for i, w in enumerate((ADJECTIVES * 3)[:n])]
    return _write(tmp_path / "sft.jsonl", rows)


def _cfg(model_dir, data, tmp_path, name, *extra):
    return load_config(SFTLMConfig, None, [
        f"model.name={model_dir}", f"data.path={data}", "data.val_fraction=0.25", "train.epochs=2",
        "train.batch_size=3", "train.lr=0.01", "train.log_every=1", "eval.prompts=2", "eval.max_new_tokens=4",
        "reward.functions=[token_f1]", "reward.reference_column=completion", f"runs_dir={tmp_path}", f"name={name}",
        *extra])


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- masking and the loss, by hand
def test_labels_mask_the_prompt_and_the_padding(tiny_causal_lm_dir, tmp_path):
    tok = load_tokenizer(str(tiny_causal_lm_dir))
    path = _write(tmp_path / "d.jsonl", [{"prompt": "the film", "completion": "was good"},
                                         {"prompt": "a", "completion": "bad"}])
    rows = read_rows(str(path), SFTLMData(), tok, 16, False)
    v = tok.convert_tokens_to_ids
    the, film, was, good, a, bad, eos, pad = v(["the", "film", "was", "good", "a", "bad", "<eos>", "[PAD]"])
    assert rows.ids == [[the, film, was, good, eos], [a, bad, eos]]
    b = collate(rows.ids, rows.target, pad)
    assert b["input_ids"].tolist() == [[the, film, was, good, eos], [a, bad, eos, pad, pad]]
    assert b["labels"].tolist() == [[IGNORE, IGNORE, was, good, eos], [IGNORE, bad, eos, IGNORE, IGNORE]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b["position_ids"][1, :3].tolist() == [0, 1, 2]


def test_the_loss_is_the_mean_over_target_tokens_only():
    # position t predicts token t + 1: labels [-, 1, 0] are predicted by positions 0 and 1; position 2 predicts nothing
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [50.0, -50.0]]])
    total, n = token_nll(logits, torch.tensor([[IGNORE, 1, 0]]))
    assert int(n) == 2
    assert float(total) == pytest.approx(math.log(2) + math.log(4 / 3))  # -log ½ - log ¾
    total, n = token_nll(logits, torch.tensor([[IGNORE, IGNORE, 0]]))  # a masked target costs nothing
    assert int(n) == 1 and float(total) == pytest.approx(math.log(4 / 3))


# ---------------------------------------------------------------- runs
def test_a_few_steps_train_validate_and_keep_the_best(tiny_causal_lm_dir, tmp_path):
    out = train_sft_lm(_cfg(tiny_causal_lm_dir, _data(tmp_path), tmp_path, "smoke"), show_progress=False)
    run = tmp_path / "smoke"
    m = _metrics(run)
    train = [r for r in m if r["split"] == "train"]
    assert len(train) == out["steps"] == 6 and all(math.isfinite(r["loss"]) for r in train)
    val = [r for r in m if r["split"] == "eval" and "loss" in r]
    assert len(val) == 2 and all(r["perplexity"] == pytest.approx(math.exp(r["loss"])) for r in val)
    generated = [r for r in m if r["split"] == "eval" and "reward" in r]
    assert len(generated) == 2 and all(0 <= r["reward"] <= 1 and r["decoding"] == "greedy" for r in generated)
    assert any(r["split"] == "best" for r in m) and out["best"]["loss"] == min(r["loss"] for r in val)
    start = load_file(str(tiny_causal_lm_dir / "model.safetensors"))
    final = load_file(str(run / "checkpoints" / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start)
    assert (run / "checkpoints" / "best" / "config.json").exists() and (run / "config.yaml").exists()


def test_stop_and_resume_equals_a_straight_run(tiny_causal_lm_dir, tmp_path):
    data, extra = _data(tmp_path), ("model.lora.r=4", "eval.every=2", "eval.best_metric=reward", "eval.best_mode=max")
    straight = train_sft_lm(_cfg(tiny_causal_lm_dir, data, tmp_path, "straight", *extra), show_progress=False)
    first = train_sft_lm(_cfg(tiny_causal_lm_dir, data, tmp_path, "resumed", *extra, "ckpt.stop_after=1"),
                         show_progress=False)
    assert first["stopped"] and first["steps"] == 1
    resumed = train_sft_lm(_cfg(tiny_causal_lm_dir, data, tmp_path, "resumed", *extra, "ckpt.resume=auto"),
                           show_progress=False)
    assert resumed["steps"] == straight["steps"] == 6 and resumed["best"] == straight["best"]
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", 6)
    assert len([r for r in rows(tmp_path / "resumed") if r["split"] == "eval"]) == 6  # steps 2, 4, 6; two rows each


def test_rl_starts_from_the_lora_sft_checkpoint(tiny_causal_lm_dir, tmp_path):
    train_sft_lm(_cfg(tiny_causal_lm_dir, _data(tmp_path), tmp_path, "sft", "model.lora.r=4", "train.max_steps=1"),
                 show_progress=False)
    best = tmp_path / "sft" / "checkpoints" / "best"
    assert not (best / "adapter_config.json").exists()  # merged: a plain model folder
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": f"the film was {w}"} for w in ADJECTIVES])
    out = train_rl_generate(load_config(GenRLConfig, None, [
        f"model.name={best}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
        "rl.samples_per_prompt=2", "rl.steps=1", "eval.prompts=2", "gen.max_new_tokens=4", f"runs_dir={tmp_path}",
        "name=rl"]), show_progress=False)
    assert out["steps"] == 1 and math.isfinite(out["eval"]["reward"])


# ---------------------------------------------------------------- chat turns
def test_messages_are_rendered_with_the_chat_template_and_assistant_turns_are_the_targets(tiny_causal_lm_dir, tmp_path):
    tok = load_tokenizer(str(tiny_causal_lm_dir))
    tok.chat_template = CHAT_TEMPLATE
    msgs = [{"role": "user", "content": "the film"}, {"role": "assistant", "content": "was good"},
            {"role": "user", "content": "and the music"}, {"role": "assistant", "content": "bad"}]
    path = _write(tmp_path / "chat.jsonl", [{"messages": msgs, "topic": "film"}])
    rows = read_rows(str(path), SFTLMData(), tok, 64, False)
    text = tok.convert_ids_to_tokens(rows.ids[0])
    assert text == "[CLS] the film <eos> [SEP] was good <eos> [CLS] and the music <eos> [SEP] bad <eos>".split()
    targets = [t for t, f in zip(text, rows.target[0]) if f]
    assert targets == "was good <eos> bad <eos>".split()
    assert rows.prompts == ["[CLS] the film <eos> [SEP] was good <eos> [CLS] and the music <eos> [SEP] "]
    assert rows.columns == {"topic": ["film"], "completion": ["bad"]}  # the last assistant turn is the reference


def test_a_run_on_chat_rows(tiny_causal_lm_dir, tmp_path):
    model = tmp_path / "chat-model"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir).save_pretrained(model)
    tok = load_tokenizer(str(tiny_causal_lm_dir))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model)
    data = _write(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"the film was {w}"}, {"role": "assistant", "content": f"it was {w}"}]}
        for w in ADJECTIVES])
    out = train_sft_lm(_cfg(model, data, tmp_path, "chat", "train.max_steps=2"), show_progress=False)
    assert out["steps"] == 2 and math.isfinite(out["eval"]["loss"]) and "reward" in out["eval"]


# ---------------------------------------------------------------- bad input
BAD = [
    ([{"prompt": "the film"}], "line 1: field 'completion' is missing"),
    ([{"prompt": "a", "completion": "good"}, {"prompt": "the film", "completion": "  "}], "line 2: field 'completion' is empty"),
    ([{"prompt": " ", "completion": "good", "messages": None}], "line 1: field 'prompt' is empty and the row has no "
                                                               "'messages'"),
    ([{"text": "the film"}], "line 1: the row has neither 'prompt'/'completion' nor 'messages'"),
    ([{"messages": "the film"}], "line 1: field 'messages' is str"),
    ([{"messages": [{"role": "user", "text": "x"}]}], "field 'messages', turn 1: .* is not a role/content pair"),
    ([{"prompt": "the " * 30, "completion": "good"}], r"line 1: prompt \+ completion is 32 tokens, over "
                                                       r"train.max_length=16; .*train.truncate=true"),
]


@pytest.mark.parametrize("rows_, match", BAD, ids=["no-completion", "empty-completion", "empty-prompt", "neither", "messages-str",
                                                   "bad-turn", "too-long"])
def test_bad_rows_fail_naming_file_line_and_field_before_the_run_folder_exists(rows_, match, tiny_causal_lm_dir,
                                                                              tmp_path):
    path = _write(tmp_path / "bad.jsonl", rows_ + [{"prompt": "a", "completion": "good"}] * 3)
    with pytest.raises(DataError, match=match) as e:
        train_sft_lm(_cfg(tiny_causal_lm_dir, path, tmp_path, "bad", "train.max_length=16"), show_progress=False)
    assert str(path) in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_truncation_keeps_the_completion_and_the_end_of_the_prompt(tiny_causal_lm_dir, tmp_path):
    tok = load_tokenizer(str(tiny_causal_lm_dir))
    path = _write(tmp_path / "d.jsonl", [{"prompt": "the film " * 10 + "was", "completion": "good"}])
    rows = read_rows(str(path), SFTLMData(), tok, 4, True)
    assert tok.convert_ids_to_tokens(rows.ids[0]) == ["film", "was", "good", "<eos>"]
    assert rows.target[0] == [False, False, True, True]


# ---------------------------------------------------------------- command line
def test_sft_policy_causal_lm_dispatches_to_the_lm_trainer(tiny_causal_lm_dir, tmp_path, capsys):
    data = _data(tmp_path)
    assert main(["sft", "policy=causal-lm", f"model.name={tiny_causal_lm_dir}", f"data.path={data}",
                 "train.max_steps=1", "eval.prompts=0", f"runs_dir={tmp_path}", "name=cli"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n"):])["steps"] == 1
    assert (tmp_path / "cli" / "checkpoints" / "final" / "config.json").exists()
    assert main(["sft", "policy=nonsense"]) == 2


# ---------------------------------------------------------------- references longer than the generation budget
def test_long_reference_warning_counts_the_completions_over_the_budget(tiny_causal_lm_dir):
    tok = load_tokenizer(str(tiny_causal_lm_dir))
    refs = ["was good", "it was good and fun", None]  # 2 and 5 tokens; a non-text cell is not counted
    assert long_reference_warning(tok, refs, 5, "gen.max_new_tokens") is None
    warning = long_reference_warning(tok, refs, 3, "gen.max_new_tokens")
    assert "1 of 2 held-out reference completions ('completion')" in warning and "the longest: 5" in warning
    assert "raise gen.max_new_tokens to at least 5" in warning


def test_long_reference_warning_counts_a_row_of_several_references_by_its_shortest(tiny_causal_lm_dir):
    tok = load_tokenizer(str(tiny_causal_lm_dir))
    # row 1: 5 and 2 tokens (the 2-token answer fits a budget of 3: a full score is reachable); row 2: 5 tokens only
    refs = [["it was good and fun", "was good"], ["it was good and fun"], [7]]
    warning = long_reference_warning(tok, refs, 3, "gen.max_new_tokens", "answers")
    assert "1 of 2 held-out reference completions ('answers')" in warning and "the longest: 5" in warning
    assert long_reference_warning(tok, refs[:1], 3, "gen.max_new_tokens") is None


def test_columns_with_the_same_references_warn_once(tiny_causal_lm_dir):
    tok = load_tokenizer(str(tiny_causal_lm_dir))
    refs, other = ["it was good and fun"], ["it was good and fun and sad"]  # 5 and 7 tokens, over a budget of 3
    cols = {"completion": refs, "reference": list(refs), "answers": other}
    warnings = long_reference_warnings(tok, cols, ["completion", "reference", "answers"], 3, "gen.max_new_tokens")
    assert len(warnings) == 2 and "('completion')" in warnings[0] and "('answers')" in warnings[1]


def test_reference_columns_are_the_completion_and_what_the_built_in_metrics_read():
    def judge(completions, context, **kw):  # a user's reward reading a column that is no reference
        return [0.0] * len(completions)

    reward = setup_reward(load_config(GenRLConfig, None, [
        "reward.functions=[chrf, label_match, length]", "reward.reference_column=target", "reward.gold_column=intent"
    ]).reward)
    assert reference_columns(reward) == ["completion", "target", "intent"]
    mine = setup_reward(replace(load_config(GenRLConfig, None, []).reward, functions=(judge,)))
    assert reference_columns(mine, "answer") == ["answer"]


def test_sft_warns_when_validation_completions_cannot_be_generated_whole(tiny_causal_lm_dir, tmp_path, capsys):
    # every completion is "it was W": 3 tokens, so a budget of 2 cuts each one (Banking77's intents under 8 tokens)
    cfg = _cfg(tiny_causal_lm_dir, _data(tmp_path), tmp_path, "short", "eval.max_new_tokens=2", "train.max_steps=1")
    train_sft_lm(cfg, show_progress=False)
    assert ("2 of 2 held-out reference completions ('completion') are longer than eval.max_new_tokens=2"
            in capsys.readouterr().out)


def test_rl_warns_when_held_out_completions_cannot_be_generated_whole(tiny_causal_lm_dir, tmp_path, capsys):
    data = _data(tmp_path)  # its `completion` column, "it was W", is 3 tokens: over gen.max_new_tokens=2
    train_rl_generate(load_config(GenRLConfig, None, [
        f"model.name={tiny_causal_lm_dir}", f"data.path={data}", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
        "rl.steps=1", "eval.prompts=2", "gen.max_new_tokens=2", f"runs_dir={tmp_path}", "name=rl"]), show_progress=False)
    assert ("2 of 2 held-out reference completions ('completion') are longer than gen.max_new_tokens=2"
            in capsys.readouterr().out)


def test_rl_warns_about_the_reward_reference_column_too(tiny_causal_lm_dir, tmp_path, capsys):
    # no `completion` column: the chrF reference, "it was W" (3 tokens), is what a budget of 2 cuts off
    rows = [{"prompt": f"the film was {w} and", "target": f"it was {w}"} for w in ADJECTIVES[:4]]
    data = _write(tmp_path / "refs.jsonl", rows)
    train_rl_generate(load_config(GenRLConfig, None, [
        f"model.name={tiny_causal_lm_dir}", f"data.path={data}", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
        "rl.steps=1", "eval.prompts=2", "gen.max_new_tokens=2", "reward.functions=[chrf]",
        "reward.reference_column=target", f"runs_dir={tmp_path}", "name=rl"]), show_progress=False)
    assert ("2 of 2 held-out reference completions ('target') are longer than gen.max_new_tokens=2"
            in capsys.readouterr().out)
