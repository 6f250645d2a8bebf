"""Extractive QA evaluation with SQuAD v1.1 semantics: each question's best span over all of its windows, then
exact match and token F1 against every gold answer (the maximum), normalised as the official script does.

Also the span model's loaders (an encoder with a start/end head, or a checkpoint written by `sft/rl policy=span`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from .models import ModelError, apply_lora, load_tokenizer, resolve
from .policies import span as policy
from .qa_data import QAExamples, Windows, char_span, iterate_windows, load_squad, make_windows
from .rewards.metrics import best_of, exact_match_score, token_f1_score


def load_span_model(name: str) -> tuple[Any, Any]:
    """(AutoModelForQuestionAnswering, tokenizer): an encoder gets a new start/end head; a span checkpoint (full
    weights or a LoRA adapter over its base) comes back as trained."""
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    path = name if (Path(name) / "adapter_config.json").exists() else resolve(name)  # an adapter has no config.json
    if (Path(path) / "adapter_config.json").exists():
        from peft import PeftModel

        base = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        model, _ = load_span_model(base)
        return PeftModel.from_pretrained(model, path), load_tokenizer(path)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized qa_outputs" is expected for an encoder
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(level)
    arch = (getattr(model.config, "architectures", None) or [""])[0]
    if arch.endswith(("ForSequenceClassification", "ForTokenClassification", "ForCausalLM")):
        raise ModelError(f"{path} is a {arch}, not an encoder or a span model; start from an encoder (minilm-l6) or "
                         "a checkpoint of `sft policy=span`")
    return model, load_tokenizer(path)


def with_lora(model: Any, lora: Any) -> Any:
    """LoRA for a span model: peft's QUESTION_ANS task keeps the start/end head (`qa_outputs`) fully trainable, so
    'all-linear' is spelled out as the encoder's linear layers without it (peft cannot both adapt and save it)."""
    if lora.r > 0 and lora.target_modules == "all-linear":
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and not n.startswith("qa_outputs")})
        lora = replace(lora, target_modules=",".join(names))
    return apply_lora(model, lora, task_type="QUESTION_ANS")


@dataclass
class SpanReport:
    """One evaluation: `metrics` (exact_match, f1 in [0, 1]; questions), and each question's predicted text."""

    metrics: dict[str, float]
    predictions: list[str]
    exact: list[float]
    f1: list[float]


@torch.no_grad()
def best_spans(model: Any, w: Windows, max_answer_tokens: int, batch_size: int, pad_id: int,
               device: Any = "cpu") -> list[tuple[float, int, int]]:
    """Each window's most probable real span under the policy: (log π, s, e)."""
    was_training = model.training
    model.eval()
    out: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(w)
    order = [list(range(i, min(i + batch_size, len(w)))) for i in range(0, len(w), batch_size)]
    for batch in iterate_windows(w, order, pad_id):
        s, e = policy.span_logits(model, batch.model_inputs(device))  # (b, T) each
        spans, score = policy.greedy(policy.joint_logprobs(s, e, batch.allowed.to(device), max_answer_tokens),
                                     real_only=True)  # (b, 2), (b,)
        for i, (a, z), v in zip(batch.index, spans.tolist(), score.tolist()):
            out[i] = (v, a, z)
    model.train(was_training)
    return out


def stitch(ex: QAExamples, w: Windows, spans: Sequence[tuple[float, int, int]]) -> list[str]:
    """Each question's answer: the text of the highest-scoring span over all of its windows ('' if none has one)."""
    best: dict[int, tuple[float, int]] = {}
    for k, (score, _, _) in enumerate(spans):
        q = w.question[k]
        if score > float("-inf") and (q not in best or score > best[q][0]):
            best[q] = (score, k)
    texts = []
    for q in range(len(ex)):
        if q not in best:
            texts.append("")
            continue
        k = best[q][1]
        a, z = char_span(w.offsets[k], spans[k][1], spans[k][2])
        texts.append(ex.contexts[q][a:z])
    return texts


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> SpanReport:
    """SQuAD v1.1: per question the maximum EM and F1 over its gold answers; their means."""
    em = [best_of(exact_match_score)(p, list(g)) for p, g in zip(predictions, golds)]
    f1 = [best_of(token_f1_score)(p, list(g)) for p, g in zip(predictions, golds)]
    n = max(1, len(em))
    return SpanReport({"exact_match": sum(em) / n, "f1": sum(f1) / n, "questions": float(len(em))},
                      list(predictions), em, f1)


def evaluate_spans(model: Any, tok: Any, ex: QAExamples, w: Windows, max_answer_tokens: int, batch_size: int = 64,
                   device: Any = "cpu") -> SpanReport:
    texts = stitch(ex, w, best_spans(model, w, max_answer_tokens, batch_size, tok.pad_token_id, device))
    return squad_scores(texts, [ex.answer_texts(i) for i in range(len(ex))])


def write_predictions(path: Path, ex: QAExamples, rep: SpanReport) -> None:
    """One JSON line per question: id, question, prediction, gold answers, its EM and F1."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(len(ex)):
            fh.write(json.dumps({"id": ex.ids[i], "question": ex.questions[i], "prediction": rep.predictions[i],
                                 "answers": ex.answer_texts(i), "exact_match": rep.exact[i], "f1": rep.f1[i]}) + "\n")


def eval_span_checkpoint(checkpoint: str, data: str, out: str | None = None) -> SpanReport:
    """`rewardtune eval CHECKPOINT --data FILE` for a span checkpoint: its window settings come from rewardtune.json."""
    meta = json.loads((Path(checkpoint) / "rewardtune.json").read_text())
    ex = load_squad(data)  # bad rows fail before the model loads
    model, tok = load_span_model(checkpoint)
    w = make_windows(tok, ex, meta["max_length"], meta["stride"], meta["max_answer_tokens"])
    rep = evaluate_spans(model, tok, ex, w, meta["max_answer_tokens"])
    if out:
        write_predictions(Path(out), ex, rep)
    return rep
