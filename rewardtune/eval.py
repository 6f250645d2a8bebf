"""Evaluation of classifiers: predictions, scikit-learn's classification report, confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .batching import batch_order, encode, iterate
from .task_metrics import task_metrics


@dataclass
class Report:
    """What one evaluation found; `metrics` holds flat numbers for metrics.jsonl."""

    metrics: dict[str, float]
    text: str  # sklearn's printed report
    confusion: list[list[int]]
    predictions: list[int]
    probabilities: list[list[float]]


@torch.no_grad()
def predict(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, truncation: str = "head",
            batch_size: int = 64, device: Any = "cpu") -> torch.Tensor:
    """Class probabilities (N, A), computed in length-sorted batches (order restored)."""
    was_training = model.training
    model.eval()
    encoded = encode(tokenizer, texts, max_length, truncation)  # type: ignore[arg-type]
    order = batch_order([len(e) for e in encoded], batch_size, 0, 0, shuffle=False, group_by_length=True, mega=10**9)
    probs = [torch.empty(0)] * len(texts)
    for batch in iterate(encoded, None, order, tokenizer.pad_token_id):
        batch = batch.to(device)
        p = torch.softmax(model(**batch.model_inputs()).logits.float(), dim=-1).cpu()  # (b, A)
        for row, i in zip(p, batch.index.tolist()):
            probs[i] = row
    model.train(was_training)
    return torch.stack(probs)


def classification_metrics(gold: Sequence[int], pred: Sequence[int], label_names: Sequence[str]) -> tuple[dict[str, float], str, list[list[int]]]:
    """Flat metrics (accuracy, macro/weighted P/R/F1, per-class), the printed report, the confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix

    labels = list(range(len(label_names)))
    kw = dict(labels=labels, target_names=list(label_names), zero_division=0)
    rep = classification_report(gold, pred, output_dict=True, **kw)
    flat = {"accuracy": float(sum(g == p for g, p in zip(gold, pred)) / max(1, len(gold)))}
    for avg in ("macro avg", "weighted avg"):
        key = avg.split()[0]
        flat |= {f"{key}_{m}": rep[avg][m] for m in ("precision", "recall", "f1-score")}
    for name in label_names:
        flat |= {f"{name}_{m}": rep[name][m] for m in ("precision", "recall", "f1-score")}
    flat = {k.replace("f1-score", "f1"): float(v) for k, v in flat.items()}
    flat |= task_metrics(gold, pred, label_names)  # SemEval-2010 T8's official score, out-of-scope recall, ...
    text = classification_report(gold, pred, digits=4, **kw)
    cm = confusion_matrix(gold, pred, labels=labels).tolist()
    return flat, text, cm


def evaluate_classifier(model: Any, tokenizer: Any, texts: Sequence[str], labels: Sequence[int],
                        label_names: Sequence[str], max_length: int, truncation: str = "head",
                        batch_size: int = 64, device: Any = "cpu") -> Report:
    """Predict `texts` and compare with `labels`."""
    return report(predict(model, tokenizer, texts, max_length, truncation, batch_size, device), labels, label_names)


def report(probs: torch.Tensor, labels: Sequence[int], label_names: Sequence[str]) -> Report:
    """The report of class probabilities (N, A) against the gold labels (N,)."""
    pred = probs.argmax(-1).tolist()
    metrics, text, cm = classification_metrics(labels, pred, label_names)
    if len(label_names) == 2 and len(set(labels)) == 2:  # ranking quality of P(label 1), as a reward uses it
        from sklearn.metrics import roc_auc_score
        metrics["auc"] = float(roc_auc_score(labels, probs[:, 1].tolist()))
    return Report(metrics, text, cm, pred, probs.tolist())


def format_confusion(cm: list[list[int]], label_names: Sequence[str]) -> str:
    """Rows: gold label; columns: predicted label."""
    width = max(8, *(len(n) + 1 for n in label_names))
    head = " " * width + "".join(f"{n:>{width}}" for n in label_names)
    rows = [f"{g:>{width}}" + "".join(f"{c:>{width}}" for c in row) for g, row in zip(label_names, cm)]
    return "\n".join(["confusion (rows = gold, columns = predicted)", head, *rows])
