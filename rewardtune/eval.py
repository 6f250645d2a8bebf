"""Evaluation of classifiers: predictions, scikit-learn's classification report, confusion matrix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
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


def eval_command(args: Any) -> None:
    """Classification report, confusion matrix and per-example predictions of a checkpoint on a data file."""
    from .data import load_examples
    from .models import load_trained_classifier

    if (Path(args.checkpoint) / "checkpoints" / "best").is_dir():  # a run folder: its best checkpoint
        args.checkpoint = str(Path(args.checkpoint) / "checkpoints" / "best")
    meta_file = Path(args.checkpoint) / "rewardtune.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
    if meta and meta.get("policy") == "tagger":  # entity-level report of a token tagger (eval_tagger.py)
        from .eval_tagger import eval_tagger_command

        return eval_tagger_command(args)
    if meta and meta.get("policy") == "span":  # extractive QA: SQuAD EM/F1 (eval_span.py)
        from .eval_span import eval_span_checkpoint

        print(json.dumps(eval_span_checkpoint(args.checkpoint, args.data, args.out).metrics))
        return
    model, tok = load_trained_classifier(args.checkpoint)
    names = meta["label_names"]
    ex = load_examples(args.data, args.text_column, args.label_column, names, args.split)
    max_length = args.max_length or meta.get("max_length", 128)
    rep = evaluate_classifier(model, tok, ex.texts, ex.labels, names, max_length, meta.get("truncation", "head"))
    print(f"{args.checkpoint} on {ex.source} ({len(ex)} examples)\n{rep.text}\n{format_confusion(rep.confusion, names)}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for text, gold, pred, probs in zip(ex.texts, ex.labels, rep.predictions, rep.probabilities):
                fh.write(json.dumps({"text": text, "label": names[gold], "prediction": names[pred],
                                     "probabilities": dict(zip(names, probs))}) + "\n")
        print(f"predictions written to {args.out}")
