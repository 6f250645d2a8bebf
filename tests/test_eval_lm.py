"""`rewardtune eval-lm`: corpus BLEU/chrF against sacrebleu's own corpus figures, an end-to-end run of the command
writing completions.jsonl and metrics.json, the mean reward a generative-RL run logged for its held-out prompts
reproduced from its final (LoRA adapter) checkpoint, a full model and an adapter folder loaded as they were saved, and
bad input refused with one line."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rewardtune.cli import main
from rewardtune.config import LoraSettings, load_config
from rewardtune.eval_lm import EvalLMJob, corpus_metrics, load_policy, run_eval_lm
from rewardtune.models import apply_lora, load_causal_lm
from rewardtune.policies.causal_lm import GenSettings
from rewardtune.train.gen_config import GenRLConfig, RewardSettings
from rewardtune.train.lm_eval import distinct_n
from rewardtune.train.rl_generate import train_rl_generate

HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there world"]
REFS = ["the cat is on the mat", "the quick brown fox jumped", "hello world"]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _prompts(path, n=6):
    return _write(path, [{"prompt": f"the film was {w}", "reference": f"{w} film", "topic": i}
                         for i, w in enumerate(WORDS[:n])])


def test_corpus_bleu_and_chrf_are_sacrebleu_s_corpus_figures():
    sacrebleu = pytest.importorskip("sacrebleu")
    got = corpus_metrics(HYPS, REFS, "reference")
    # By hand, n-gram matches / hypothesis n-grams summed over the three sentences: 1-grams (5+3+2)/(6+5+3),
    # 2-grams (3+2+0)/(5+4+2), 3-grams (1+1+0)/(4+3+1), 4-grams 0/(3+2+0), which sacrebleu's default 'exp'
    # smoothing makes 1/(2·5); no brevity penalty (14 hypothesis words ≥ 13 reference words). 0-100, as sacrebleu.
    by_hand = 100 * math.prod([10 / 14, 5 / 11, 2 / 8, 1 / 10]) ** 0.25
    assert got["bleu"] == pytest.approx(by_hand) == pytest.approx(30.02, abs=0.01)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    # chrF: sacrebleu's corpus figure, written down so that a change on either side shows
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert got["chrf"] == pytest.approx(68.132468, abs=1e-4)
    # corpus, not a mean of sentence scores: the corpus figure sums n-gram statistics before the geometric mean
    mean_sentence = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)) / len(HYPS)
    assert abs(got["bleu"] - mean_sentence) > 1
    # ROUGE: mean F in [0, 1]; an exact copy scores 1 on every kind
    assert corpus_metrics(REFS, REFS, "reference")["rougeL"] == pytest.approx(1.0)
    assert 0 < got["rouge2"] < got["rouge1"] < 1


def test_several_references_per_row_are_multi_reference_bleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = [[REFS[0], "the cat sat on the mat"], [REFS[1]], [REFS[2], "hello there world"]]
    got = corpus_metrics(HYPS, refs, "reference")
    streams = [REFS, ["the cat sat on the mat", None, "hello there world"]]  # None: that row has one reference
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score)
    assert got["bleu"] > corpus_metrics(HYPS, REFS, "reference")["bleu"]


def test_end_to_end_cli_writes_completions_and_metrics(tiny_causal_lm_dir, tmp_path, capsys):
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    data, out = _prompts(tmp_path / "p.jsonl", 3), tmp_path / "out"
    assert main(["eval-lm", str(tiny_causal_lm_dir), "--data", str(data), "--rewards", "length", "token_f1", "bleu",
                 "--weights", "1", "2", "1", "--samples", "2", "--temperature", "1.3", "--max-new-tokens", "5",
                 "--seed", "4", "--out", str(out), "gen.top_k=50"]) == 0
    printed = capsys.readouterr().out
    assert "bleu" in printed and "sacrebleu corpus_bleu, 0-100" in printed and "6 completions" in printed
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    saved = json.loads((out / "metrics.json").read_text())
    m = saved["metrics"]
    assert len(rows) == 6 and [r["sample"] for r in rows] == [0, 1] * 3
    assert [r["columns"]["topic"] for r in rows] == [0, 0, 1, 1, 2, 2]  # each row's columns beside its completions
    assert set(rows[0]["rewards"]) == {"length", "token_f1", "bleu"}
    for r in rows:  # the total is the weighted sum of the components, rescaled to the full weight (4 / 4)
        parts = r["rewards"]
        assert r["reward"] == pytest.approx(parts["length"] + 2 * parts["token_f1"] + parts["bleu"], abs=1e-6)
    assert m["reward"] == pytest.approx(sum(r["reward"] for r in rows) / 6, abs=1e-6)
    assert m["reward/token_f1"] == pytest.approx(sum(r["rewards"]["token_f1"] for r in rows) / 6, abs=1e-6)
    words = [r["completion"].split() for r in rows]
    assert m["length_words"] == pytest.approx(sum(map(len, words)) / 6)
    assert m["distinct_2"] == pytest.approx(distinct_n(words, 2))
    assert set(m) >= {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "distinct_1"}
    assert saved["decoding"] == "sampled x2" and saved["gen"]["top_k"] == 50 and saved["reference_column"] == "reference"
    # the same seed gives the same draws; greedy is one completion per prompt
    again = run_eval_lm(EvalLMJob(str(tiny_causal_lm_dir), str(data), RewardSettings(functions=("length",)),
                                  GenSettings(max_new_tokens=5, temperature=1.3, top_k=50), samples=2, seed=4))
    assert [r["completion"] for r in again.records] == [r["completion"] for r in rows]
    greedy = run_eval_lm(EvalLMJob(str(tiny_causal_lm_dir), str(data), RewardSettings(functions=("length",)),
                                   GenSettings(max_new_tokens=5)))
    assert len(greedy.records) == 3 and greedy.info["decoding"] == "greedy"


def _run_cfg(model_dir, data, val, tmp_path, *extra):
    return load_config(GenRLConfig, None, [
        f"model.name={model_dir}", "model.lora.r=4", "model.lora.alpha=8", f"data.path={data}", f"data.val_path={val}",
        "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.steps=2", "rl.lr=5e-2", "eval.prompts=4",
        "eval.samples=3", "eval.every=0", "reward.functions=[length,token_f1]", "reward.weights=[1,3]",
        "reward.normalize=rank", "gen.max_new_tokens=5", "gen.temperature=1.4", "seed=11", f"runs_dir={tmp_path}",
        "name=r", *extra])


def test_a_run_s_logged_held_out_reward_is_reproduced_from_its_final_adapter(tiny_causal_lm_dir, tmp_path, capsys):
    """The run's last split=eval row (held-out prompts, 3 samples each, seed 11) equals eval-lm's mean reward on the
    same prompts with the same rewards, sampling settings and seed: the draws are seed + EVAL_SEED_OFFSET in both.
    Training's rank normalisation does not enter: held-out rewards are raw in both."""
    data, val = _prompts(tmp_path / "train.jsonl"), _prompts(tmp_path / "val.jsonl", 4)
    out = train_rl_generate(_run_cfg(tiny_causal_lm_dir, data, val, tmp_path), show_progress=False)
    final = tmp_path / "r" / "checkpoints" / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if r.get("split") == "eval"][-1]
    assert last["reward"] == out["eval"]["reward"]
    assert main(["eval-lm", str(final), "--data", str(val), "--rewards", "length", "token_f1", "--weights", "1", "3",
                 "--samples", "3", "--temperature", "1.4", "--max-new-tokens", "5", "--seed", "11",
                 "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    assert m["reward"] == pytest.approx(last["reward"], abs=1e-6)
    for key in ("length_words", "distinct_1", "distinct_2"):
        assert m[key] == pytest.approx(last[key], abs=1e-6)
    # another seed draws other completions: the equality above is not a coincidence of the model's outputs
    other = run_eval_lm(EvalLMJob(str(final), str(val), RewardSettings(functions=("length", "token_f1"), weights=(1, 3)),
                                  GenSettings(max_new_tokens=5, temperature=1.4), samples=3, seed=12))
    first = [json.loads(line)["completion"] for line in (tmp_path / "ev" / "completions.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in other.records] != first


def _logits(model, tok):
    enc = tok(["the film was alpha"], return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def test_an_adapter_folder_loads_its_base_with_the_adapter_and_a_full_model_loads_as_is(tiny_causal_lm_dir, tmp_path):
    base, tok = load_causal_lm(str(tiny_causal_lm_dir))
    model = apply_lora(base, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a trained-looking adapter: the policy differs from its base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)  # as heldout.save_policy does
    tok.save_pretrained(tmp_path / "adapter")
    want = _logits(model, tok)
    loaded, ltok = load_policy(str(tmp_path / "adapter"))
    assert hasattr(loaded, "disable_adapter") and ltok.padding_side == "left"
    assert torch.allclose(_logits(loaded, ltok), want, atol=1e-5)
    with loaded.disable_adapter():
        assert not torch.allclose(_logits(loaded, ltok), want, atol=1e-3)  # the adapter is what made the difference
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "full", safe_serialization=True)  # full fine-tuning saves whole weights
    tok.save_pretrained(tmp_path / "full")
    full, ftok = load_policy(str(tmp_path / "full"))
    assert not hasattr(full, "disable_adapter") and torch.allclose(_logits(full, ftok), want, atol=1e-4)


@pytest.mark.parametrize("case, message", [
    ("missing file", "no such file"),
    ("missing column", "reward 'token_f1' needs a column 'answer'"),
    ("empty prompt", "line 2: field 'prompt': empty text"),
    ("no reference column", "no reference column 'gold'"),
    ("no rewards", "give the rewards"),
    ("unknown override", "unknown key"),
    ("no model", "not a model folder"),
    ("negative samples", "--samples -1"),
])
def test_bad_input_is_one_clear_line_and_exit_2(tiny_causal_lm_dir, tmp_path, capsys, case, message):
    good = _prompts(tmp_path / "p.jsonl", 2)
    empty = _write(tmp_path / "e.jsonl", [{"prompt": "fine"}, {"prompt": "  "}])
    model, rest = str(tiny_causal_lm_dir), ["--rewards", "length"]
    argv = {"missing file": [model, "--data", str(tmp_path / "nope.jsonl"), *rest],
            "missing column": [model, "--data", str(good), "--rewards", "token_f1", "--reference-column", "answer"],
            "empty prompt": [model, "--data", str(empty), *rest],
            "no reference column": [model, "--data", str(good), *rest, "--reference-column", "gold"],
            "no rewards": [model, "--data", str(good)],
            "unknown override": [model, "--data", str(good), *rest, "reward.nope=1"],
            "no model": [str(tmp_path / "no-model"), "--data", str(good), *rest],
            "negative samples": [model, "--data", str(good), *rest, "--samples", "-1"]}[case]
    assert main(["eval-lm", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rewardtune: error:") and message in err and "Traceback" not in err
