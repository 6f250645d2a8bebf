"""The generative recipes' data: the task packs of ../shared/data turned into prompt/completion rows that
`rewardtune sft policy=causal-lm` trains on and `rewardtune rl policy=causal-lm` samples from.

`rewardtune data recipe NAME` writes `train.jsonl` and `val.jsonl` under `runs/data/recipe-NAME/`, where the shipped
configs `recipe-NAME-sft` and `recipe-NAME-rl` read them. Every row has `prompt` and `completion` (the completion
starts with a space: the prompt ends with a cue such as "German:", and the model writes on after it) and the column
the recipe's reward compares with, without that space (`reference`, `answers` or `label`). The prompts are plain
text, not chat turns, so that the base model, SFT and RL all see the same thing.

Which rows are taken is seeded; a validation split comes from the pack's `dev` file where it has one, otherwise from
a seeded split of `train` (SQuAD: by article, so no held-out question shares a paragraph with training).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from .data import DataError, read_table

DATA_ROOT = "../shared/data"
Rows = list[dict]


def default_out(name: str) -> str:
    """Where `rewardtune data recipe NAME` writes by default (and the shipped configs read)."""
    return f"runs/data/recipe-{name}"


def _read(root: str, *parts: str) -> Rows:
    path = Path(root, *parts)
    if not path.exists():
        raise DataError(f"{path}: not found; the recipes read the task packs of ../shared/data (give --data-root "
                        "DIR if they are elsewhere)")
    return read_table(str(path)).rows


def _space(text: str) -> str:
    return " " + text.strip()


def mt_rows(root: str) -> tuple[Rows, Rows]:
    """Multi30k en→de: the German sentence is the completion and the chrF/BLEU reference."""
    def row(r: dict) -> dict:
        return {"prompt": f"Translate English to German.\nEnglish: {r['en'].strip()}\nGerman:",
                "completion": _space(r["de"]), "reference": r["de"].strip()}

    return ([row(r) for r in _read(root, "mt", "multi30k-en-de", "train.jsonl.gz")],
            [row(r) for r in _read(root, "mt", "multi30k-en-de", "dev.jsonl.gz")])


def _dialogue_row(turns: list[str], rng: random.Random, context_turns: int = 3) -> dict:
    """One next-turn example of a dialogue: a seeded turn i ≥ 1, the (at most 3) turns before it as context."""
    i = rng.randrange(1, len(turns))
    speaker = lambda j: "A" if j % 2 == 0 else "B"  # noqa: E731 - DailyDialog alternates two speakers
    lines = [f"{speaker(j)}: {turns[j].strip()}" for j in range(max(0, i - context_turns), i)]
    return {"prompt": "\n".join([*lines, f"{speaker(i)}:"]), "completion": _space(turns[i]),
            "reference": turns[i].strip()}


def dialogue_rows(root: str, seed: int = 0) -> tuple[Rows, Rows]:
    """DailyDialog next-turn generation: one seeded turn per dialogue (dialogues of a single turn are skipped)."""
    rng = random.Random(seed)
    out = []
    for split in ("train.jsonl.gz", "dev.jsonl.gz"):
        dialogues = [d["turns"] for d in _read(root, "dialogue", "dailydialog", split) if len(d["turns"]) > 1]
        out.append([_dialogue_row(turns, rng) for turns in dialogues])
    return out[0], out[1]


def qa_rows(root: str, seed: int = 0, val_articles: float = 0.1) -> tuple[Rows, Rows]:
    """SQuAD v1.1 answers generated from context + question; every gold answer is a reference (`answers`).
    Held out by article: a seeded 10% of the titles."""
    rows = _read(root, "qa", "squad-v1.1", "train.jsonl.gz")
    titles = sorted({r["title"] for r in rows})
    random.Random(seed).shuffle(titles)
    held = set(titles[:max(1, round(val_articles * len(titles)))])

    def row(r: dict) -> dict:
        answers = list(dict.fromkeys(a.strip() for a in r["answers"]["text"]))
        return {"prompt": f"Context: {r['context'].strip()}\nQuestion: {r['question'].strip()}\nAnswer:",
                "completion": _space(answers[0]), "answers": answers, "title": r["title"]}

    return [row(r) for r in rows if r["title"] not in held], [row(r) for r in rows if r["title"] in held]


def _label_rows(rows: Rows, text: str, label: str, prompt: Callable[[str], str], seed: int,
                val_fraction: float) -> tuple[Rows, Rows]:
    """Label-as-text rows; validation is a seeded `val_fraction` of the rows (the packs hold no dev split), in that
    shuffled order: the files are sorted by label, and held-out evaluation reads the first `eval.prompts` rows."""
    out = [{"prompt": prompt(str(r[text]).strip()), "completion": _space(str(r[label])), "label": str(r[label])}
           for r in rows]
    idx = list(range(len(out)))
    random.Random(seed).shuffle(idx)
    n_val = round(val_fraction * len(out))
    return [out[i] for i in sorted(idx[n_val:])], [out[i] for i in idx[:n_val]]


def intent_rows(root: str, seed: int = 0) -> tuple[Rows, Rows]:
    """Banking77: the intent's name (e.g. card_arrival) is what the model writes; label_match scores it."""
    return _label_rows(_read(root, "intent", "banking77", "train.jsonl.gz"), "text", "label",
                       lambda t: f"Banking customer message: {t}\nIntent:", seed, 0.1)


def sst2_rows(root: str, seed: int = 0) -> tuple[Rows, Rows]:
    """SST-2 sentiment as a word (positive / negative); validation is the GLUE dev file."""
    def rows(name: str) -> Rows:
        return [{"sentence": r["sentence"], "label": "positive" if int(r["label"]) == 1 else "negative"}
                for r in _read(root, "sst2", name)]

    prompt = lambda t: f"Review: {t}\nSentiment (positive or negative):"  # noqa: E731
    train, _ = _label_rows(rows("train.tsv"), "sentence", "label", prompt, seed, 0.0)
    val, _ = _label_rows(rows("dev.tsv"), "sentence", "label", prompt, seed, 0.0)
    return train, val


RECIPES: dict[str, tuple[Callable[..., tuple[Rows, Rows]], str]] = {
    "mt": (mt_rows, "Multi30k English→German translation (reward: chrf on `reference`)"),
    "dialogue": (dialogue_rows, "DailyDialog next turn (reward: chrf on `reference` + a length term)"),
    "qa": (qa_rows, "SQuAD v1.1 generative QA, held out by article (reward: token_f1 on `answers`)"),
    "intent": (intent_rows, "Banking77 intent written as text (reward: label_match on `label`)"),
    "sst2": (sst2_rows, "SST-2 sentiment written as a word (reward: label_match on `label`)"),
}


def _sample(rows: Rows, n: int, seed: int) -> Rows:
    """A seeded subset of n rows in file order (all rows when n is 0 or ≥ their count)."""
    if n <= 0 or n >= len(rows):
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


def write_recipe(name: str, out: str = "", data_root: str = DATA_ROOT, train_rows: int = 0, val_rows: int = 0,
                 seed: int = 0) -> dict:
    """Write recipe `name`'s train.jsonl and val.jsonl under `out`; returns the paths and row counts."""
    if name not in RECIPES:
        raise DataError(f"no recipe called {name!r}; the recipes are: {', '.join(RECIPES)}")
    train, val = RECIPES[name][0](data_root)
    folder = Path(out or default_out(name))
    folder.mkdir(parents=True, exist_ok=True)
    info: dict = {"recipe": name, "out": str(folder)}
    for split, rows, n in (("train", train, train_rows), ("val", val, val_rows)):
        rows = _sample(rows, n, seed)
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        info[split] = len(rows)
    return info
