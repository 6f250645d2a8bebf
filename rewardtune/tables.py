"""Rows as read (`Table`, or a `RowStream` read while it is used), the error bad data raises, and the readers of
the `datasets` library's own forms: JSON arrays (`Dataset.to_json(lines=False)`), `save_to_disk` folders, and hub
datasets with a config name (`glue`, `sst2`). The line-based files (jsonl, csv, tsv) are read in data.py.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

PEEK = 1000  # rows whose keys name a table's columns


class DataError(ValueError):
    """Input data that cannot be used, with the file, line, field and what was expected."""


@dataclass
class Table:
    """Raw rows as read, each with its location for error messages."""

    rows: list[dict[str, Any]]
    where: list[str]  # "file line N" per row
    source: str

    @property
    def columns(self) -> list[str]:
        return column_names(self.rows[:PEEK])

    def items(self) -> Iterable[tuple[dict[str, Any], str]]:
        """(row, where it is) pairs."""
        return zip(self.rows, self.where)


class RowStream:
    """Rows read one at a time as they are used, so that a large file is never held whole beside what is kept of
    it: the first rows are peeked at for the column names, the rest follow. Iterable once."""

    def __init__(self, pairs: Iterator[tuple[dict[str, Any], str]], source: str) -> None:
        self.head = list(itertools.islice(pairs, PEEK))
        self.rest, self.source = pairs, source

    @property
    def columns(self) -> list[str]:
        return column_names([row for row, _ in self.head])

    def items(self) -> Iterable[tuple[dict[str, Any], str]]:
        head, self.head = self.head, []
        return itertools.chain(head, self.rest)


def column_names(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def collect(pairs: Iterable[tuple[dict[str, Any], str]], source: str) -> Table:
    """A Table of every (row, where) pair; a source without rows is an error."""
    rows, where = [], []
    for row, at in pairs:
        rows.append(row)
        where.append(at)
    if not rows:
        raise DataError(f"{source}: the file holds no rows")
    return Table(rows, where, source)


def is_json_array(p: Path) -> bool:
    """Whether a .json file holds one JSON array (else JSON Lines: one object per line)."""
    with open(p, "rb") as fh:
        start = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")  # a BOM and blank space are not data
    return start.startswith(b"[")


def read_json_array(p: Path) -> Table:
    """A .json file holding one array of objects (as `Dataset.to_json(path, lines=False)` writes)."""
    try:
        items = json.loads(p.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 (byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{p}: invalid JSON array ({e})") from None
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise DataError(f"{p}, element {i + 1}: expected a JSON object with named fields, got {type(obj).__name__}")
    return collect(((obj, f"{p}, element {i + 1}") for i, obj in enumerate(items)), str(p))


def is_saved_dataset(p: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    return (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()


def read_saved_dataset(p: Path, split: str) -> Table:
    """The rows of a `save_to_disk` folder: a Dataset, or split `split` of a DatasetDict."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(p))
    except Exception as e:  # a half-written or foreign folder
        raise DataError(f"{p}: a `save_to_disk` folder that cannot be loaded ({e})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{p}: no split {split!r}; its splits are: {', '.join(ds)} (set data.split)")
        ds, source = ds[split], f"{p}[{split}]"
    else:
        source = str(p)
    return collect(((row, f"{source} row {i + 1}") for i, row in enumerate(ds)), source)


def read_hub(name: str, split: str, config: str = "", unreachable: str = "") -> Table:
    """Split `split` of hub dataset `name` (config `config`, e.g. glue's sst2). `unreachable`: why the hub cannot
    be reached now ('' when it can); offline mode still reads the local `datasets` cache."""
    from . import hub

    what = f"{name!r}" + (f" (config {config!r})" if config else "")
    if unreachable and not hub.offline():
        raise DataError(f"{what} is not a file, folder or 'demo', so it was taken as a Hugging Face dataset name, but "
                        f"the hub cannot be reached ({unreachable}). Give a local file (jsonl, json, csv, tsv, parquet), "
                        "a save_to_disk folder or an aclImdb folder.")
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # missing config, unknown split, offline without a cache: the library's words, one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"hub dataset {what} (split {split!r}) could not be loaded: {first}"
                        + (" (HF_HUB_OFFLINE=1: only datasets in the local cache load)" if hub.offline() else "")
                        + (" Fix: give its config name as data.config." if "config" in str(e).lower() and not config
                           else "")) from None
    source = f"hub:{name}" + (f"/{config}" if config else "")
    return collect(((row, f"{name}[{split}] row {i + 1}") for i, row in enumerate(ds)), source)
