"""Entity spans of BIO (IOB2) tag sequences, entity-level F1 as a reward, and seqeval's entity report.

Spans follow seqeval's default (non-strict) reading, so the numbers match `seqeval.metrics`
(tests/test_tag_spans.py checks them on the same inputs): an entity starts at `B-X`, and also at an
`I-X` that follows `O` or a tag of another type; it ends before `O`, `B-*` or a tag of another type.
An entity counts as found only when its type, first and last word all match.

The reward is per sentence: F1 = 2·|P ∩ G| / (|P| + |G|) between the predicted and gold spans, and 1.0 when the
sentence has no gold entity and none is predicted (seqeval scores that 0/0 case as 0; a reward must say that
predicting nothing where there is nothing is right).
"""
from __future__ import annotations

from typing import Any, Sequence

Span = tuple[str, int, int]  # (type, first word, last word)


def _split(tag: str) -> tuple[str, str]:
    """'B-PER' → ('B', 'PER'); 'O' → ('O', '')."""
    return ("O", "") if tag == "O" else (tag[0], tag[2:])


def entity_spans(tags: Sequence[str]) -> list[Span]:
    """The entities of one sentence's tags, in order: ['B-PER', 'I-PER', 'O', 'I-LOC'] → [PER 0-1, LOC 3-3]."""
    spans: list[Span] = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):  # the sentinel closes an entity that runs to the end
        kind, typ = _split(tag)
        if prev != "O" and (kind in ("B", "O") or typ != prev_type):
            spans.append((prev_type, begin, i - 1))
        if kind == "B" or (kind == "I" and (prev == "O" or typ != prev_type)):
            begin = i
        prev, prev_type = kind, typ
    return spans


def span_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Entity-level F1 of one sentence: 2·|P ∩ G| / (|P| + |G|); 1.0 when both are empty."""
    p, g = set(entity_spans(pred)), set(entity_spans(gold))
    if not p and not g:
        return 1.0
    return 2 * len(p & g) / (len(p) + len(g))


def _tag_lists(completions: Sequence[str], tags: Sequence[Any] | None, name: str) -> list[tuple[list[str], list[str]]]:
    """(predicted, gold) tag lists: a completion is its tags joined by spaces; `tags` is the gold column."""
    if tags is None:
        raise ValueError(f"{name} needs the gold `tags` column")
    out = []
    for c, g in zip(completions, tags):
        pred = c.split()
        if len(pred) != len(g):
            raise ValueError(f"{name}: {len(pred)} predicted tags for {len(g)} gold tags in {c!r}")
        out.append((pred, list(g)))
    return out


def span_f1_reward(prompts: list[str], completions: list[str], tags: list[Any] | None = None,
                   **_: Any) -> list[float | None]:
    """Sequence reward: entity-level span F1 of each predicted tag sequence against the gold `tags` column."""
    return [span_f1(p, g) for p, g in _tag_lists(completions, tags, "span_f1")]


def token_accuracy_reward(prompts: list[str], completions: list[str], tags: list[Any] | None = None,
                          **_: Any) -> list[float | None]:
    """Sequence reward: the fraction of words whose tag is the gold one (1.0 for an empty sentence)."""
    return [sum(a == b for a, b in zip(p, g)) / len(g) if g else 1.0
            for p, g in _tag_lists(completions, tags, "token_accuracy")]


def _prf(correct: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with 0 for an empty denominator (seqeval's zero_division default)."""
    p = correct / n_pred if n_pred else 0.0
    r = correct / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Per entity type: [correct, predicted, gold] over the corpus."""
    counts: dict[str, list[int]] = {}
    for g_tags, p_tags in zip(gold, pred):
        g, p = set(entity_spans(g_tags)), set(entity_spans(p_tags))
        for t, *_ in g | p:
            counts.setdefault(t, [0, 0, 0])
        for t, *_ in g & p:
            counts[t][0] += 1
        for t, *_ in p:
            counts[t][1] += 1
        for t, *_ in g:
            counts[t][2] += 1
    return counts


def entity_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> tuple[dict[str, float], str]:
    """seqeval's entity-level report: per type precision/recall/F1/support, micro and macro averages (macro over
    the types present in gold or predictions, as seqeval), and token accuracy. → (metrics, printable table)."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences differ in number or length")
    counts = _counts(gold, pred)
    per = {t: (*_prf(*counts[t]), counts[t][2]) for t in sorted(counts)}
    micro = _prf(*(sum(c[i] for c in counts.values()) for i in range(3)))
    macro = [sum(v[i] for v in per.values()) / len(per) if per else 0.0 for i in range(3)]
    words = sum(len(g) for g in gold)
    metrics = {"precision": micro[0], "recall": micro[1], "f1": micro[2], "macro_precision": macro[0],
               "macro_recall": macro[1], "macro_f1": macro[2],
               "token_accuracy": sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / max(words, 1)}
    for t, (p, r, f, _) in per.items():
        metrics.update({f"precision/{t}": p, f"recall/{t}": r, f"f1/{t}": f})
    lines = [f"{'':14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    lines += [f"{t:14}{p:10.4f}{r:10.4f}{f:10.4f}{n:9d}" for t, (p, r, f, n) in per.items()]
    support = sum(v[3] for v in per.values())
    lines += [f"{'micro avg':14}{micro[0]:10.4f}{micro[1]:10.4f}{micro[2]:10.4f}{support:9d}",
              f"{'macro avg':14}{macro[0]:10.4f}{macro[1]:10.4f}{macro[2]:10.4f}{support:9d}",
              f"token accuracy {metrics['token_accuracy']:.4f} ({words} words)"]
    return metrics, "\n".join(lines)
