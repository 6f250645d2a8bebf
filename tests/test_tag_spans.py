"""Entity spans and span F1 by hand, and the entity report against seqeval on the same inputs."""
from __future__ import annotations

import random

import pytest

from rewardtune.rewards.spans import entity_report, entity_spans, span_f1, span_f1_reward, token_accuracy_reward


def test_entity_spans_read_bio_as_seqeval_does():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert entity_spans(["I-PER", "I-PER"]) == [("PER", 0, 1)]  # an I- after O opens an entity
    assert entity_spans(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]  # a type change closes and opens
    assert entity_spans(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    assert entity_spans([]) == [] and entity_spans(["O", "O"]) == []


def test_span_f1_by_hand():
    gold = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]  # PER 0-1, LOC 3-3, ORG 5-5
    # predicted: PER 0-0 (wrong end), LOC 3-3 (right), ORG 5-5 (right), MISC... none: 2 right of 3 and 3
    pred = ["B-PER", "O", "O", "B-LOC", "O", "B-ORG"]
    assert span_f1(pred, gold) == pytest.approx(2 * 2 / (3 + 3))  # 0.6667
    assert span_f1(gold, gold) == 1.0
    assert span_f1(["O"] * 6, gold) == 0.0  # nothing found: 2·0 / (0 + 3)
    assert span_f1(["O", "O"], ["O", "O"]) == 1.0  # nothing to find, nothing found: right (seqeval would say 0)
    assert span_f1(["B-LOC", "O"], ["O", "O"]) == 0.0  # a false entity where there is none: 0 / (1 + 0)
    # the same span with the wrong type is wrong: 0 right of 1 and 1
    assert span_f1(["B-ORG", "I-ORG"], ["B-PER", "I-PER"]) == 0.0


def test_rewards_read_completions_and_the_gold_column():
    gold = [["B-PER", "I-PER", "O"], ["O", "O", "O"]]
    got = span_f1_reward(["a b c", "d e f"], ["B-PER O O", "O O O"], tags=gold)
    assert got == [0.0, 1.0]  # PER 0-0 is not PER 0-1; the second sentence has nothing to find
    assert token_accuracy_reward(["a b c", "d e f"], ["B-PER O O", "O B-LOC O"], tags=gold) == [2 / 3, 2 / 3]
    with pytest.raises(ValueError, match="2 predicted tags for 3 gold"):
        span_f1_reward(["a b c"], ["O O"], tags=gold[:1])
    with pytest.raises(ValueError, match="needs the gold `tags` column"):
        span_f1_reward(["a"], ["O"])


def _random_tags(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]) for _ in range(n)]


def test_entity_report_matches_seqeval_on_random_sequences():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    gold = [_random_tags(rng, rng.randint(0, 12)) for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC", "B-ORG"]) for t in g] for g in gold]
    pred[0] = ["B-MISC"] + pred[0][1:] if pred[0] else pred[0]  # a type only predicted, never gold
    ours, text = entity_report(gold, pred)
    ref = seqeval.classification_report(gold, pred, output_dict=True, zero_division=0)
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred))
    for key, avg in (("macro", "macro avg"), ("", "micro avg")):
        for m in ("precision", "recall", "f1"):
            assert ours[f"{key}_{m}" if key else m] == pytest.approx(ref[avg][m if m != "f1" else "f1-score"])
    for t in ("PER", "LOC", "ORG"):
        assert ours[f"f1/{t}"] == pytest.approx(ref[t]["f1-score"])
        assert ours[f"precision/{t}"] == pytest.approx(ref[t]["precision"])
    assert "micro avg" in text and "macro avg" in text


def test_entity_report_refuses_misaligned_sequences():
    with pytest.raises(ValueError, match="differ"):
        entity_report([["O", "O"]], [["O"]])
