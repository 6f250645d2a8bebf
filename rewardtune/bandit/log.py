"""Logged bandit feedback: rows of (context text, action, reward, propensity[, candidate actions]), read and checked.

Every check names the file, the line, the field and what would fix it, and runs before a run folder is made or a
model loads. Actions are kept as indices into `action_names` (a classifier's label set: the action is a label).
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import DataError, Table, normalize_label, read_table


@dataclass(frozen=True)
class LogColumns:
    """Which field of a log row holds what (the `data` keys of `rewardtune bandit train`, the options of `ope`)."""

    text: str = "text"
    action: str = "action"
    reward: str = "reward"
    propensity: str = "propensity"
    candidates: str = ""  # '' = every action is a candidate on every row

    def option(self, name: str) -> str:
        """The setting that renames field `name`, for error messages."""
        return f"{name}_column"


@dataclass
class BanditLog:
    """Validated rows: texts, action indices, rewards, propensities, and an optional (N, A) candidate mask."""

    texts: list[str]
    actions: torch.Tensor  # (N,) long
    rewards: torch.Tensor  # (N,) float64
    propensities: torch.Tensor  # (N,) float64
    action_names: list[str]
    source: str = ""
    candidates: torch.Tensor | None = None  # (N, A) bool
    where: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int]) -> "BanditLog":
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return replace(self, texts=[self.texts[j] for j in i.tolist()], actions=self.actions[i],
                       rewards=self.rewards[i], propensities=self.propensities[i],
                       candidates=None if self.candidates is None else self.candidates[i],
                       where=[self.where[j] for j in i.tolist()] if self.where else [])


def _number(row: dict, name: str, where: str, what: str) -> float:
    raw = row.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{where}: field {name!r}: missing {what}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field {name!r}: {what} {reprlib.repr(raw)} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: field {name!r}: {what} {raw!r} is not finite")
    return value


def _propensity(row: dict, name: str, where: str) -> float:
    p = _number(row, name, where, "propensity")
    if not 0.0 < p <= 1.0:
        raise DataError(f"{where}: field {name!r}: propensity {p!r} is not in (0, 1]; it must be the probability "
                        "with which the logging policy chose the logged action (a row logged with probability 0 "
                        "cannot have happened: drop it, or log the exploration probability)")
    return p


def _action(row: dict, name: str, where: str, index: dict[Any, int]) -> int:
    raw = row.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{where}: field {name!r}: missing action")
    try:
        key = normalize_label(raw)
    except TypeError as e:
        raise DataError(f"{where}: field {name!r}: {e}") from None
    if key not in index:
        raise DataError(f"{where}: field {name!r}: action {reprlib.repr(raw)} is not in the action set "
                        f"{reprlib.repr(list(index))}; give the full set (`data.actions` / --actions) or fix the row")
    return index[key]


def _candidates(row: dict, name: str, where: str, index: dict[Any, int], action: int) -> list[bool]:
    raw = row.get(name)
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DataError(f"{where}: field {name!r}: expected a non-empty list of candidate actions, got "
                        f"{reprlib.repr(raw)}")
    mask = [False] * len(index)
    for c in raw:
        mask[_action({name: c}, name, where, index)] = True
    if not mask[action]:
        raise DataError(f"{where}: field {name!r}: the logged action is not among the row's candidates")
    return mask


def _check_columns(table: Table, cols: LogColumns) -> None:
    """A field absent from a row is named with that row and the setting that renames it."""
    needed = [(f, getattr(cols, f)) for f in ("text", "action", "reward", "propensity", "candidates") if getattr(cols, f)]
    for row, where in zip(table.rows, table.where):
        for name, column in needed:
            if column not in row:
                raise DataError(f"{where}: no field {column!r} (the {name}); the row's fields are: "
                                f"{', '.join(map(str, row))}. Name the right one with {cols.option(name)}=FIELD")


def action_set(table: Table, cols: LogColumns, actions: Sequence[Any] = ()) -> list[Any]:
    """The action set: `actions` as given, else every logged action (and candidate), sorted as labels are."""
    if actions:
        return [normalize_label(a) for a in actions]
    seen = {normalize_label(r[cols.action]) for r in table.rows if r.get(cols.action) not in (None, "")}
    if cols.candidates:
        seen |= {normalize_label(c) for r in table.rows for c in (r.get(cols.candidates) or [])}
    return sorted(seen, key=lambda v: (isinstance(v, str), v))


def to_log(table: Table, cols: LogColumns = LogColumns(), actions: Sequence[Any] = ()) -> BanditLog:
    """Validate `table`'s rows into a BanditLog (the first bad row is an error naming it)."""
    _check_columns(table, cols)
    names = action_set(table, cols, actions)
    index = {a: i for i, a in enumerate(names)}
    texts, acts, rewards, props, cands = [], [], [], [], []
    for row, where in zip(table.rows, table.where):
        text = row[cols.text]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {cols.text!r}: expected a non-empty context text, got "
                            f"{reprlib.repr(text)}")
        texts.append(text)
        acts.append(_action(row, cols.action, where, index))
        rewards.append(_number(row, cols.reward, where, "reward"))
        props.append(_propensity(row, cols.propensity, where))
        if cols.candidates:
            cands.append(_candidates(row, cols.candidates, where, index, acts[-1]))
    return BanditLog(texts, torch.tensor(acts, dtype=torch.long), torch.tensor(rewards, dtype=torch.float64),
                     torch.tensor(props, dtype=torch.float64), [str(a) for a in names], table.source,
                     torch.tensor(cands, dtype=torch.bool) if cands else None, list(table.where))


def load_log(path: str | Path, cols: LogColumns = LogColumns(), actions: Sequence[Any] = ()) -> BanditLog:
    """`read_table` + `to_log`: a file (jsonl[.gz], csv, tsv, parquet) of logged feedback."""
    return to_log(read_table(path), cols, actions)
