"""Official metrics of classification tasks whose label set says which task it is, added to every report.

- SemEval-2010 Task 8 (labels `Relation(e1,e2)`, `Relation(e2,e1)` and `Other`): `semeval_macro_f1`, the official
  score of the task's scorer (v1.2, evaluation (iii)): (9+1)-way classification with directionality taken into
  account, macro-averaged F1 over the relations, `Other` excluded. Per relation R (directions merged):
  P = right / (predicted R), where `right` counts gold R predicted as R in the right direction and `predicted R`
  counts every prediction of R in either direction (a wrong direction costs precision: the scorer's v1.2 fix);
  R = right / (gold R); F1 = 2PR / (P + R); the macro F1 is the mean of the relations' F1 (those in the gold labels).
- Intent sets with out-of-scope queries (a label `oos`, as CLINC150): `in_scope_accuracy` (accuracy over the gold
  in-scope queries) and `oos_recall` (the share of gold out-of-scope queries predicted `oos`), Larson et al. 2019.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

OTHER, OOS = "Other", "oos"
_DIRECTED = re.compile(r"^(?P<rel>[\w-]+)\((?:e1,e2|e2,e1)\)$")


def relation_of(label: str) -> str:
    """`Cause-Effect(e2,e1)` → `Cause-Effect`; `Other` stays `Other`."""
    m = _DIRECTED.match(label)
    return m.group("rel") if m else label


def is_semeval(label_names: Sequence[str]) -> bool:
    return OTHER in label_names and len(label_names) > 1 and all(
        n == OTHER or _DIRECTED.match(n) for n in label_names)


def semeval_macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """SemEval-2010 Task 8's official score in [0, 1] (module docstring)."""
    relations = sorted({relation_of(g) for g in gold} - {OTHER})
    if not relations:
        return 0.0
    f1s = []
    for r in relations:
        right = sum(g == p and relation_of(g) == r for g, p in zip(gold, pred))
        predicted = sum(relation_of(p) == r for p in pred)
        actual = sum(relation_of(g) == r for g in gold)
        precision = right / predicted if predicted else 0.0
        recall = right / actual if actual else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(f1s) / len(f1s)


def out_of_scope_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """In-scope accuracy and out-of-scope recall (0 where a side has no gold query)."""
    inside = [(g, p) for g, p in zip(gold, pred) if g != OOS]
    outside = [p for g, p in zip(gold, pred) if g == OOS]
    return {"in_scope_accuracy": sum(g == p for g, p in inside) / len(inside) if inside else 0.0,
            "oos_recall": sum(p == OOS for p in outside) / len(outside) if outside else 0.0}


# (does the label set name this task?, its metrics from gold and predicted label names)
TASKS: dict[str, tuple[Callable[[Sequence[str]], bool], Callable[[Sequence[str], Sequence[str]], dict[str, float]]]] = {
    "semeval2010": (is_semeval, lambda g, p: {"semeval_macro_f1": semeval_macro_f1(g, p)}),
    "out_of_scope": (lambda names: OOS in names, out_of_scope_metrics),
}


def task_metrics(gold: Sequence[int], pred: Sequence[int], label_names: Sequence[str]) -> dict[str, float]:
    """The extra metrics of every task whose label set `label_names` matches; gold/pred are label indices."""
    out: dict[str, float] = {}
    for applies, metrics in TASKS.values():
        if applies(label_names):
            out |= metrics([label_names[i] for i in gold], [label_names[i] for i in pred])
    return out
