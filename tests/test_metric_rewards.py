"""Task-metric rewards (rewards/metrics.py): SQuAD's exact match and token F1 by hand, BLEU / chrF / ROUGE against
the libraries' own figures, label_match's parsing rule, the errors for bad references, the reference column as a
required parameter, and one tiny generative run scored by token_f1."""
from __future__ import annotations

import json
import math
import sys

import pytest

from rewardtune.config import load_config
from rewardtune.rewards import RewardError, build_rewards
from rewardtune.rewards import metrics as m
from rewardtune.rewards.signature import binding
from rewardtune.train.gen_config import GenRLConfig, RewardSettings
from rewardtune.train.gen_setup import BUILTIN_REWARDS, check_reward_columns, setup_reward

METRICS = ("exact_match", "token_f1", "bleu", "chrf", "rouge", "length_ratio")


def score(fn, completions, refs):
    """`fn` called as the trainer calls it: everything by keyword, the reference column among the other columns."""
    return fn(prompts=[""] * len(completions), completions=completions, reference=refs, other=[0] * len(completions))


def test_squad_normalisation():
    assert m.normalize_answer("The  Cat, sat!") == "cat sat"  # lower-case, punctuation and 'the' gone, one space
    assert m.normalize_answer("An apple a day") == "apple day"  # every article as a whole word
    assert m.normalize_answer("Theatre and anthem") == "theatre and anthem"  # articles inside words stay
    assert m.normalize_answer("don't (a) rock-n-roll") == "dont rocknroll"  # punctuation dropped, not split on


def test_exact_match_by_hand_with_several_references():
    fn = m.exact_match()
    assert score(fn, ["The cat.", "cat sat", "a dog"], ["cat", "cat", ["fish", "the Dog!"]]) == [1.0, 0.0, 1.0]
    assert m.exact_match_score("a", "the") == 1.0  # both normalise to '': SQuAD v1.1 counts that as equal


def test_token_f1_by_hand():
    # 'the cat sat' → [cat, sat]; 'a cat sat down' → [cat, sat, down]: overlap 2, P = 2/2, R = 2/3,
    # F1 = 2·1·(2/3) / (1 + 2/3) = 0.8
    assert m.token_f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # bags: [cat, cat, cat] vs [cat, dog]: overlap min(3, 1) = 1, P = 1/3, R = 1/2, F1 = 2·(1/6) / (5/6) = 0.4
    assert m.token_f1_score("cat cat cat", "cat dog") == pytest.approx(0.4)
    assert m.token_f1_score("", "cat") == 0.0 and m.token_f1_score("dog", "cat") == 0.0  # nothing shared
    assert m.token_f1_score("the", "an") == 0.0  # both empty after normalisation: v1.1 gives 0 (no shared token)
    # the best of several references: 0 against 'dog', 0.8 against 'cat sat down' (as above)
    assert score(m.token_f1(), ["the cat sat"], [["dog", "cat sat down"]]) == pytest.approx([0.8])


def test_bleu_matches_sacrebleu_sentence_bleu_with_exp_smoothing():
    sacrebleu = pytest.importorskip("sacrebleu")
    fn = m.bleu()
    assert score(fn, ["the cat sat on the mat"], ["the cat sat on the mat"]) == [1.0]  # identical
    # every n-gram of 'the cat sat' (n ≤ 3, effective order) is in the reference: precisions 1; brevity penalty
    # exp(1 - r/c) = exp(1 - 6/3) = e^-1
    assert score(fn, ["the cat sat"], ["the cat sat on the mat"]) == pytest.approx([math.exp(-1)])
    cases = [("a quick brown fox jumps", ["the quick brown fox jumped over"]),
             ("the dog barked at night", ["a dog barks at night", "the dog was barking all night"]),
             ("nothing in common", ["zebra yak"]), ("", ["some words"])]
    for hyp, refs in cases:  # several references: sacrebleu's multi-reference BLEU, not a maximum
        want = sacrebleu.sentence_bleu(hyp, refs, smooth_method="exp").score / 100
        assert score(fn, [hyp], [refs]) == pytest.approx([want])


def test_chrf_matches_sacrebleu_and_keeps_the_best_reference():
    sacrebleu = pytest.importorskip("sacrebleu")
    fn = m.chrf()
    hyp, r1, r2 = "the cat sat on a mat", "a cat was sitting on the mat", "dogs run"
    corpus = sacrebleu.corpus_chrf([hyp], [[r1]]).score / 100  # a one-sentence corpus is that sentence's chrF
    assert score(fn, [hyp], [r1]) == pytest.approx([corpus])
    assert score(fn, [hyp], [[r2, r1]]) == pytest.approx([corpus])  # r1 is the better reference: its score is kept
    assert score(fn, [hyp], [hyp]) == [1.0]


@pytest.mark.parametrize("rouge_type, want", [
    # 'the cat sat' vs 'the cat sat on the mat'. rouge1: 3 shared unigrams, P = 3/3, R = 3/6, F = 2·0.5/1.5 = 2/3.
    # rouge2: bigrams (the cat, cat sat) both shared, of 5 in the reference: P = 1, R = 2/5, F = 0.8/1.4 = 4/7.
    # rougeL: longest common subsequence 3 words: as rouge1, 2/3.
    ("rouge1", 2 / 3), ("rouge2", 4 / 7), ("rougeL", 2 / 3)])
def test_rouge_by_hand(rouge_type, want):
    pytest.importorskip("rouge_score")
    assert score(m.rouge(rouge_type=rouge_type), ["the cat sat"], ["the cat sat on the mat"]) == pytest.approx([want])


def test_rouge_takes_the_best_reference_as_score_multi_does():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    hyp, refs = "police killed the gunman", ["the gunman was shot dead by police", "police kill the gunman"]
    want = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score_multi(refs, hyp)["rougeL"].fmeasure
    assert score(m.rouge(), [hyp], [refs]) == pytest.approx([want])
    with pytest.raises(RewardError, match="rouge_type 'rougeLsum'; expected one of rouge1, rouge2, rougeL"):
        m.rouge(rouge_type="rougeLsum")


def test_length_ratio_by_hand():
    fn = m.length_ratio()
    ref = "ein Hund läuft schnell"  # 4 words
    # 3 words: 1 − |3/4 − 1| = 0.75; 5: 1 − |5/4 − 1| = 0.75; 4: 1; 8: 1 − |2 − 1| = 0; 12: floored at 0; none: 1 − 1 = 0
    got = score(fn, ["a b c", "a b c d e", "a b c d", " ".join("x" * 8), " ".join("x" * 12), ""], [ref] * 6)
    assert got == pytest.approx([0.75, 0.75, 1.0, 0.0, 0.0, 0.0])
    # several references: the closest; 2 words against 4 (0.5) and 2 (1.0) and 3 (1 − 1/3)
    assert score(fn, ["a b"], [[ref, "zwei Wörter", "drei ganze Wörter"]]) == [1.0]
    assert score(fn, ["a b"], [[ref, "drei ganze Wörter"]]) == pytest.approx([2 / 3])


def test_parse_label_rule():
    labels = ["positive", "negative"]
    assert m.parse_label("I'd say NEGATIVE, not positive", labels) == "negative"  # earliest, any case
    assert m.parse_label("positively negative", labels) == "negative"  # 'positively' is no whole-word 'positive'
    assert m.parse_label("not sure at all", ["not", "not sure"]) == "not sure"  # same start: the longer one
    assert m.parse_label("no idea", labels) is None
    assert m.parse_label("**Positive**. Because...", ()) == "positive"  # first word, case-folded, punctuation off
    assert m.parse_label("- yes, it is", ()) == "yes"  # a word of punctuation only is passed over
    assert m.parse_label("  ", ()) is None


def test_label_match_scores_against_the_gold_column():
    fn = m.label_match("gold", ["positive", "negative"])
    out = fn(completions=["It is negative.", "positive!", "meh", "Positive"],
             gold=["Negative", "negative", "positive", ["negative", "POSITIVE"]])
    assert out == [1.0, 0.0, 0.0, 1.0]  # gold compared case-insensitively; unparsed 'meh' scores 0; a list of golds
    assert m.label_match()(completions=["Yes, because", "no"], label=["yes", "yes."]) == [1.0, 0.0]  # first word
    with pytest.raises(RewardError, match=r"gold label 'neutral' in column 'gold' is not one of .*\(row 1 of the batch"):
        fn(completions=["positive", "positive"], gold=["positive", "neutral"])
    with pytest.raises(RewardError, match="must be non-empty texts"):
        m.label_match(labels=["yes", ""])


@pytest.mark.parametrize("value, message", [
    (None, r"row 1 of the batch has no reference in column 'answer' \(got None\); give every row a non-empty text"),
    ("  ", "row 1 of the batch has no reference in column 'answer'"),
    ([], "row 1 of the batch has no reference in column 'answer'"),
    (["ok", ""], "row 1 of the batch has no reference in column 'answer'"),
    (7, "column 'answer' holds int 7 at row 1 of the batch; references must be text or a list of texts"),
    (["ok", 7], "column 'answer' holds int 7 at row 1"),
])
def test_a_bad_reference_names_the_column_the_row_and_the_fix(value, message):
    fn = m.token_f1("answer")
    with pytest.raises(RewardError, match=message):
        fn(completions=["x", "y"], answer=["x", value])
    # through the combiner: stopped with the reward's name; with on_error=skip only that sample is dropped
    with pytest.raises(RewardError, match=r"reward 'token_f1' raised RewardError: .*column 'answer'"):
        build_rewards([fn])(["p", "q"], ["x", "y"], answer=["x", value])
    out = build_rewards([fn], on_error="skip")(["p", "q"], ["x", "y"], answer=["x", value])
    assert out.dropped.tolist() == [False, True] and out.total[0].item() == 1.0


def test_each_built_reward_requires_its_column():
    rs = RewardSettings(reference_column="answer", gold_column="gold")
    for name in (*METRICS, "label_match"):
        fn = BUILTIN_REWARDS[name](rs)
        assert fn.__name__ == name
        assert binding(fn).required == (("gold",) if name == "label_match" else ("answer",))
    with pytest.raises(RewardError, match=r"reward 'bleu' needs a column 'answer'.*has only: question"):
        check_reward_columns(RewardSettings(functions=("bleu",), reference_column="answer"), ["question"], "p.jsonl")
    with pytest.raises(RewardError, match="column 'gold answer' cannot be passed by name"):
        m.exact_match("gold answer")


def test_the_settings_reach_the_factories():
    cfg = load_config(GenRLConfig, None, ["reward.functions=[rouge,label_match]", "reward.rouge_type=rouge2",
                                          "reward.labels=['yes','no']", "reward.reference_column=summary"])
    reward = setup_reward(cfg.reward)
    out = reward(["p"], ["the cat sat"], summary=["the cat sat on the mat"], label=["no"])
    assert out.components["rouge"].tolist() == pytest.approx([4 / 7])  # rouge2, as in test_rouge_by_hand
    assert out.components["label_match"].tolist() == [0.0]  # neither yes nor no appears
    unquoted = load_config(GenRLConfig, None, ["reward.functions=[label_match]", "reward.labels=[yes,no]"])
    with pytest.raises(RewardError, match=r"labels \(True, False\) must be non-empty texts.*quote them"):
        setup_reward(unquoted.reward)  # YAML made them booleans: the error says why


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu now raises ImportError
    with pytest.raises(RewardError, match=r"reward 'chrf' needs the package sacrebleu: pip install 'sacrebleu>=2.0'"):
        m.chrf()
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)  # the submodule: an earlier test imported it
    with pytest.raises(RewardError, match=r"pip install 'rouge-score>=0.1.1'"):
        m.rouge()


def test_a_generative_run_scored_by_token_f1(tiny_causal_lm_dir, tmp_path):
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    rows = [{"prompt": f"say {w}", "answer": [w, f"the {w}"], "n": i} for i, w in enumerate(words)]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    from rewardtune.train.rl_generate import train_rl_generate

    cfg = load_config(GenRLConfig, None, [
        f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
        "rl.samples_per_prompt=2", "rl.steps=2", "eval.prompts=2", "eval.every=0", "gen.max_new_tokens=4",
        "reward.functions=[token_f1]", "reward.reference_column=answer", f"runs_dir={tmp_path}", "name=f1"])
    assert train_rl_generate(cfg, show_progress=False)["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "f1" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train" and "reward/token_f1" in r]
    assert train and all(0.0 <= r["reward/token_f1"] <= 1.0 for r in train)
