"""Task-metric rewards: a completion scored against the reference text(s) of its data row.

Each factory returns a reward function `f(completions, <reference column>, **columns) -> list[float]` named after
its metric (`__name__`), whose signature names the reference column as a required parameter, so a run whose data
lacks that column is refused before it starts (`signature.binding`). A row's reference is a string or a list of
strings (several references: the row scores its best one, or, for BLEU, multi-reference BLEU). Every score lies in
[0, 1]; sacrebleu's 0–100 figures are divided by 100.

- `exact_match`, `token_f1`: SQuAD v1.1's answer normalisation and scores (the official evaluation script's rules).
- `bleu`, `chrf`: sentence-level, from sacrebleu. `rouge`: rouge1, rouge2 or rougeL F-measure, from rouge-score.
- `label_match`: the label parsed from the completion (`parse_label`) against the gold label.
- `length_ratio`: how close the completion's length in words is to its reference's.

sacrebleu and rouge-score are imported when their reward is built, never when this module is.
"""
from __future__ import annotations

import importlib
import inspect
import keyword
import re
import string
from collections import Counter
from typing import Any, Callable, Sequence

from .base import RewardError
from .signature import RESERVED

RewardFn = Callable[..., list]
Scorer = Callable[[str, list[str]], float]  # (completion, its row's references) -> score in [0, 1]
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
PIP = {"sacrebleu": "sacrebleu>=2.0", "rouge_score": "rouge-score>=0.1.1"}  # as pyproject.toml  # module -> what to install

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NO_PUNCT = str.maketrans("", "", string.punctuation)  # SQuAD drops ASCII punctuation characters only
_EDGES = string.punctuation + string.whitespace


# --- SQuAD v1.1 -------------------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation, in its order: lower-case, drop punctuation, drop the articles a/an/the as whole
    words, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_NO_PUNCT)).split())


def exact_match_score(prediction: str, reference: str) -> float:
    """1.0 when the two normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1_score(prediction: str, reference: str) -> float:
    """F1 of the normalised tokens as bags (a token counts as often as it appears in both), as SQuAD v1.1 scores it:
    0.0 when nothing is shared (two texts that normalise to nothing included)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_of(score: Callable[[str, str], float]) -> Scorer:
    """A pairwise score → the maximum over a row's references (SQuAD's metric_max_over_ground_truths)."""
    return lambda completion, refs: max(score(completion, r) for r in refs)


# --- the reward functions' shape ------------------------------------------------------------------------------------

def check_column(name: str, column: str) -> None:
    """The column is passed by keyword and named in the signature: it must be a usable parameter name."""
    if not isinstance(column, str) or not column.isidentifier() or keyword.iskeyword(column) or column in RESERVED:
        raise RewardError(f"reward {name!r}: column {column!r} cannot be passed by name (it must be a Python "
                          f"identifier other than {', '.join(RESERVED)}); rename the column in the data and here")


def texts_of(value: Any, name: str, column: str, row: int) -> list[str]:
    """A row's reference value (a string or a list of strings) as a non-empty list of non-blank strings."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    wrong = [v for v in items if v is not None and not isinstance(v, str)]
    if wrong:
        raise RewardError(f"reward {name!r}: column {column!r} holds {type(wrong[0]).__name__} {wrong[0]!r} at row "
                          f"{row} of the batch; references must be text or a list of texts: store them as strings")
    if not items or any(v is None or not v.strip() for v in items):
        raise RewardError(f"reward {name!r}: row {row} of the batch has no reference in column {column!r} (got "
                          f"{value!r}); give every row a non-empty text, or a list of them, in that column")
    return items


def metric_reward(name: str, column: str, score: Scorer) -> RewardFn:
    """A reward function `(completions, <column>, **columns)` named `name`, scoring each completion against its
    row's references in `column` with `score`."""
    check_column(name, column)

    def reward(completions: list[str], **columns: Any) -> list[float | None]:
        out: list[float | None] = []
        for i, (c, v) in enumerate(zip(completions, columns[column])):
            refs = texts_of(v, name, column, i)
            try:
                out.append(score(c, refs))
            except RewardError as e:  # a scorer's own complaint about a value: say which row
                raise RewardError(f"{e} (row {i} of the batch)") from None
        return out

    reward.__name__ = reward.__qualname__ = name
    P = inspect.Parameter  # the column is required here, so binding() checks it against the data before a run
    reward.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        P("completions", P.POSITIONAL_OR_KEYWORD), P(column, P.POSITIONAL_OR_KEYWORD), P("columns", P.VAR_KEYWORD)])
    return reward


def require(module: str, reward: str) -> Any:
    """Import an optional package that `reward` needs, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise RewardError(f"reward {reward!r} needs the package {top}: pip install '{PIP[top]}' ({e})") from e


# --- the built-ins ----------------------------------------------------------------------------------------------

def exact_match(reference_column: str = "reference") -> RewardFn:
    """1.0 when the completion equals one of the row's references after SQuAD v1.1 normalisation, else 0.0."""
    return metric_reward("exact_match", reference_column, best_of(exact_match_score))


def token_f1(reference_column: str = "reference") -> RewardFn:
    """SQuAD v1.1 token F1 in [0, 1] against the row's best-matching reference."""
    return metric_reward("token_f1", reference_column, best_of(token_f1_score))


def bleu(reference_column: str = "reference", smooth_method: str = "exp") -> RewardFn:
    """Sentence BLEU / 100, in [0, 1]: sacrebleu's `sentence_bleu` (13a tokenisation, case-sensitive, effective
    order, `smooth_method` "exp" by default: sacrebleu's own default for sentences, Chen & Cherry 2014's method 3).
    Several references are scored together, as multi-reference BLEU (n-gram counts clipped by the largest count in
    any reference; the closest reference length for the brevity penalty), not as a maximum."""
    metrics = require("sacrebleu", "bleu").metrics  # sentence_bleu builds this same object on every call
    metric = metrics.BLEU(smooth_method=smooth_method, effective_order=True)
    # min: a perfect match comes out as 100.00000000000004 / 100 after sacrebleu's exp(log(...))
    return metric_reward("bleu", reference_column, lambda c, refs: min(1.0, metric.sentence_score(c, refs).score / 100))


def chrf(reference_column: str = "reference") -> RewardFn:
    """Sentence chrF / 100, in [0, 1]: sacrebleu's `sentence_chrf` (character 6-grams, β = 2, whitespace ignored);
    with several references sacrebleu keeps the one with the best score."""
    metric = require("sacrebleu", "chrf").metrics.CHRF()
    return metric_reward("chrf", reference_column, lambda c, refs: min(1.0, metric.sentence_score(c, refs).score / 100))


def rouge(reference_column: str = "reference", rouge_type: str = "rougeL", use_stemmer: bool = True) -> RewardFn:
    """ROUGE F-measure in [0, 1] from rouge-score: `rouge_type` rouge1 (unigrams), rouge2 (bigrams) or rougeL
    (longest common subsequence), the maximum over the row's references (what rouge-score's `score_multi` keeps).
    rouge-score's tokenizer lower-cases and keeps only [a-z0-9] runs (text in other scripts scores 0); Porter
    stemming is on by default, as in the ROUGE paper's usual setting."""
    if rouge_type not in ROUGE_TYPES:
        raise RewardError(f"reward 'rouge': rouge_type {rouge_type!r}; expected one of {', '.join(ROUGE_TYPES)}")
    scorer = require("rouge_score.rouge_scorer", "rouge").RougeScorer([rouge_type], use_stemmer=use_stemmer)
    # score(target, prediction): the reference comes first
    score = lambda c, refs: float(max(scorer.score(r, c)[rouge_type].fmeasure for r in refs))  # noqa: E731
    return metric_reward("rouge", reference_column, score)


def length_ratio_score(completion: str, reference: str) -> float:
    """1 − |words(completion) / words(reference) − 1|, floored at 0: 1.0 at the reference's length, 0.0 at none or at
    twice it. References are never blank (`texts_of`), so the ratio is defined."""
    return max(0.0, 1.0 - abs(len(completion.split()) / len(reference.split()) - 1.0))


def length_ratio(reference_column: str = "reference") -> RewardFn:
    """How close the completion's length in words is to its row's reference (the closest of several): a length term
    relative to each row, to mix with a metric that pays for length (chrF weighs recall twice; a fixed
    `length_penalty` target ignores how long each reference is)."""
    return metric_reward("length_ratio", reference_column, best_of(length_ratio_score))


# --- labels -----------------------------------------------------------------------------------------------------

def label_key(text: str) -> str:
    """How labels are compared: case-folded, punctuation and whitespace stripped from both ends."""
    return text.casefold().strip(_EDGES)


def parse_label(completion: str, labels: Sequence[str] = ()) -> str | None:
    """The label a completion gives. With `labels`: the one that appears earliest as a whole word (not inside a longer
    word), case-insensitive, the longer one when two start at the same place; None when none appears. Without: the
    completion's first whitespace-separated word that has more than punctuation, as `label_key` normalises it."""
    if not labels:
        return next((k for w in completion.split() if (k := label_key(w))), None)
    found = []
    for label in labels:
        m = re.search(rf"(?<!\w){re.escape(label.strip())}(?!\w)", completion, re.IGNORECASE)
        if m:
            found.append((m.start(), -len(label.strip()), label))
    return min(found)[2] if found else None


def label_match(gold_column: str = "label", labels: Sequence[str] = ()) -> RewardFn:
    """1.0 when the label parsed from the completion (`parse_label` with `labels`) equals the row's gold label (or
    one of its gold labels) under `label_key`, else 0.0 (also when no label can be parsed). With `labels`, a gold
    label outside them is an error: such a row could never score."""
    labels = tuple(labels)
    if any(not isinstance(x, str) or not x.strip() for x in labels):
        hint = "; YAML reads unquoted yes/no/on/off/true/false as booleans: quote them, e.g. reward.labels=['yes','no']"
        raise RewardError(f"reward 'label_match': labels {labels!r} must be non-empty texts (reward.labels)"
                          + (hint if any(isinstance(x, bool) for x in labels) else ""))
    allowed = {label_key(x) for x in labels}

    def score(completion: str, golds: list[str]) -> float:
        keys = {label_key(g) for g in golds}
        if allowed and not keys <= allowed:
            bad = sorted(keys - allowed)[0]
            raise RewardError(f"reward 'label_match': gold label {bad!r} in column {gold_column!r} is not one of the "
                              f"allowed labels ({', '.join(labels)}); fix the data or reward.labels")
        parsed = parse_label(completion, labels)
        return float(parsed is not None and label_key(parsed) in keys)

    return metric_reward("label_match", gold_column, score)
