"""Examples from files, folders or the hub: read → validate → split.

Reading keeps where each row came from ("train.jsonl line 12"), so that validation,
which happens later with the column mapping in hand, can still name the line.
Nothing is dropped silently: a bad row is an error unless `skip_invalid` is set, and
then it is counted and the first reasons are logged.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import random
import reprlib
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from .tables import (DataError, RowStream, Table, collect, is_json_array, is_saved_dataset, read_hub,  # noqa: F401
                     read_json_array, read_saved_dataset)

log = logging.getLogger("rewardtune.data")

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_FILES = {"demo": DEMO_DIR / "reviews.jsonl", "demo-prompts": DEMO_DIR / "prompts.jsonl"}
FORMATS = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".csv", ".tsv", ".parquet")
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".gz")  # a missing file, not a hub name
csv.field_size_limit(2**31 - 1)  # long reviews are data, not an attack


@dataclass
class Examples:
    """Validated examples: texts, label indices into `label_names`, and any other columns."""

    texts: list[str]
    labels: list[int] | None
    label_names: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    source: str = ""
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int]) -> "Examples":
        return replace(
            self, texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            columns={k: [v[i] for i in idx] for k, v in self.columns.items()}, skipped=0,
        )


# ---------------------------------------------------------------- readers
def read_table(path: str | Path, split: str = "train", config: str = "") -> Table:
    """Read rows from a file (jsonl[.gz], json (lines or an array), csv, tsv, parquet), a `save_to_disk` folder, an
    aclImdb folder, 'demo', or a hub name (`config`: the hub dataset's config name, e.g. glue's sst2)."""
    lines = _line_rows(path, split, config)
    if lines is not None:
        return collect(lines, _source(path))
    p = _local(path)
    if p.is_dir():
        return read_saved_dataset(p, split) if is_saved_dataset(p) else _read_imdb_folder(p, split)
    if p.exists():
        name = p.name.lower()
        if name.endswith(".json"):
            return read_json_array(p)
        if name.endswith(".parquet"):
            return _read_parquet(p)
        raise DataError(f"{p}: unknown file type; expected one of {', '.join(FORMATS)}, a save_to_disk folder or an "
                        "aclImdb-style folder")
    if str(path).startswith(("/", ".", "~")) or Path(str(path)).suffix.lower() in _FILE_SUFFIXES:
        raise DataError(f"{path}: no such file or folder")
    from .hub import unreachable

    return read_hub(str(path), split, config, unreachable())


def stream_table(path: str | Path, split: str = "train", config: str = "") -> Table | RowStream:
    """As `read_table`, but the rows of a line-based file (jsonl, JSON Lines .json, csv, tsv, gzipped or not) are
    read as they are used, not held whole first (`load_examples` keeps only the columns it needs of each)."""
    lines = _line_rows(path, split, config)
    return RowStream(_nonempty(lines, _source(path)), _source(path)) if lines is not None else read_table(path, split, config)


def _local(path: str | Path) -> Path:
    return Path(DEMO_FILES.get(str(path), path)).expanduser()


def _source(path: str | Path) -> str:
    return str(_local(path))


def _line_rows(path: str | Path, split: str, config: str) -> Iterator[tuple[dict[str, Any], str]] | None:
    """The (row, where) pairs of a line-based file, read lazily; None for every other source."""
    p = _local(path)
    if not p.is_file():
        return None
    name = p.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")) or (name.endswith(".json") and not is_json_array(p)):
        return _iter_jsonl(p)
    if name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return _iter_delimited(p)
    return None


def _nonempty(pairs: Iterator[tuple[dict[str, Any], str]], source: str) -> Iterator[tuple[dict[str, Any], str]]:
    empty = True
    for pair in pairs:
        empty = False
        yield pair
    if empty:
        raise DataError(f"{source}: the file holds no rows")


def _open_bytes_lines(p: Path) -> Iterator[bytes]:
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            yield from fh
    except (EOFError, OSError, zlib.error) as e:  # zlib.error: a gzip header on corrupt data
        raise DataError(f"{p}: cannot read compressed/binary data ({e}); is the file truncated or corrupt?") from None


def _iter_jsonl(p: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, where) of each non-blank line of a JSON Lines file, as it is read."""
    for n, raw in enumerate(_open_bytes_lines(p), start=1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a leading BOM is not data
        except UnicodeDecodeError as e:
            raise DataError(f"{p}, line {n}: not valid UTF-8 (byte {e.start} of the line: {raw[e.start:e.start + 4]!r})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}, line {n}: invalid JSON ({e.msg} at column {e.colno}): {line[:80]!r}") from None
        except (ValueError, RecursionError) as e:  # an int of 4300+ digits, or nesting too deep
            raise DataError(f"{p}, line {n}: unreadable JSON ({e}): {line[:80]!r}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p}, line {n}: expected a JSON object with named fields, got {type(obj).__name__}")
        yield obj, f"{p}, line {n}"


def _decoded_lines(p: Path) -> Iterator[str]:
    """The file's lines as text, one at a time (never the whole file in memory as bytes and again as text)."""
    for n, raw in enumerate(_open_bytes_lines(p), start=1):
        try:
            yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{p}, line {n}: not valid UTF-8 ({raw[e.start:e.start + 4]!r})") from None


def _iter_delimited(p: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, where) of each non-blank row of a CSV/TSV file with a header line, as it is read."""
    delimiter = "\t" if ".tsv" in p.name.lower() else ","
    # TSV files such as GLUE's are not quoted: a stray '"' in a sentence must stay literal.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(_decoded_lines(p), delimiter=delimiter, quoting=quoting)
    header = next((values for values in reader if any(v.strip() for v in values)), None)
    if header is None:
        raise DataError(f"{p}: no header line (the file is empty or holds only blank lines)")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:  # dict(zip(...)) would keep only the last of them
        raise DataError(f"{p}, line {reader.line_num}: column name(s) {', '.join(map(repr, repeated))} "
                        "appear more than once in the header")
    start, found = reader.line_num + 1, False
    for values in reader:
        line, start = start, reader.line_num + 1  # a quoted field may span lines: name the first
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(
                f"{p}, line {line}: {len(values)} fields but the header has {len(header)} "
                f"({', '.join(header)})" + _span_hint(line, reader.line_num)
            )
        found = True
        yield dict(zip(header, values)), f"{p}, line {line}"
    if not found:
        raise DataError(f"{p}: the file has a header but no rows")


def _span_hint(first: int, last: int) -> str:
    return "" if first == last else f"; this row runs on to line {last}: is a quote left open?"


def _read_parquet(p: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{p}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{p}: not a readable parquet file ({e})") from None
    if not rows:
        raise DataError(f"{p}: the file holds no rows")
    return Table(rows, [f"{p}, row {i + 1}" for i in range(len(rows))], str(p))


def _read_imdb_folder(p: Path, split: str) -> Table:
    """aclImdb layout: `<root>/<split>/{pos,neg}/<id>_<rating>.txt`, or the split folder itself."""
    base = p / split if (p / split).is_dir() else p
    label_dirs = [(base / "neg", 0), (base / "pos", 1)]
    if not any(d.is_dir() for d, _ in label_dirs):
        raise DataError(f"{p}: a folder must be aclImdb-style ({split}/pos/*.txt and {split}/neg/*.txt)")
    rows, where = [], []
    for d, label in label_dirs:
        for f in sorted(d.glob("*.txt")) if d.is_dir() else []:
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{f}: not valid UTF-8 (byte {e.start})") from None
            stem = f.stem.split("_")
            rating = int(stem[1]) if len(stem) == 2 and stem[1].isdigit() else None
            rows.append({"id": f.stem, "text": text, "rating": rating, "label": label})
            where.append(str(f))
    if not rows:
        raise DataError(f"{base}: no .txt files under pos/ or neg/")
    return Table(rows, where, str(base))


# ---------------------------------------------------------------- validation
def normalize_label(value: Any) -> int | str:
    """Labels may be ints or strings; '1' and 1 and 1.0 are the same label."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s) if s.lstrip("-").isdigit() else s
        except ValueError:  # '--1', '²', or more digits than int() converts: a string label
            return s
    raise TypeError(f"expected an int or string label, got {type(value).__name__} {reprlib.repr(value)}")


def to_examples(table: Table | RowStream, text_column: str = "text", label_column: str | None = "label",
                labels: Sequence[Any] = (), skip_invalid: bool = False,
                keep_columns: Sequence[str] = ()) -> Examples:
    """Validate rows into `Examples`; `labels` fixes the label set (else it is inferred, sorted)."""
    cols = table.columns
    for needed in [text_column] + ([label_column] if label_column else []):
        if needed not in cols:
            raise DataError(f"{table.source}: no column {needed!r}; the columns are: {', '.join(cols)}")
    try:
        label_set = [normalize_label(v) for v in labels]
    except TypeError as e:
        raise DataError(f"the given label set {reprlib.repr(list(labels))}: {e}") from None
    texts, raw_labels, extra, reasons = [], [], {c: [] for c in keep_columns}, []
    for row, where in table.items():
        try:
            text, label = _check_row(row, text_column, label_column, label_set)
        except DataError as e:
            if not skip_invalid:
                raise DataError(f"{where}: {e}") from None
            reasons.append(f"{where}: {e}")
            continue
        texts.append(text)
        raw_labels.append(label)
        for c in keep_columns:
            extra[c].append(row.get(c))
    if reasons:
        log.warning("skipped %d invalid row(s) of %s; first: %s", len(reasons), table.source, "; ".join(reasons[:3]))
    if not texts:
        raise DataError(f"{table.source}: no valid rows left" + (f" ({len(reasons)} skipped)" if reasons else ""))
    if not label_column:
        return Examples(texts, None, [], extra, table.source, len(reasons))
    names = label_set or sorted(set(raw_labels), key=lambda v: (isinstance(v, str), v))
    index = {v: i for i, v in enumerate(names)}
    return Examples(texts, [index[v] for v in raw_labels], [str(v) for v in names], extra, table.source, len(reasons))


def _check_row(row: dict, text_column: str, label_column: str | None, label_set: list) -> tuple[str, Any]:
    text = row.get(text_column)
    if text is None:
        raise DataError(f"field {text_column!r}: missing text (null or absent)")
    if not isinstance(text, str):
        raise DataError(f"field {text_column!r}: expected text, got {type(text).__name__} {reprlib.repr(text)}")
    if not text.strip():
        raise DataError(f"field {text_column!r}: empty text")
    if not text.isascii() and not _encodable(text):
        raise DataError(f"field {text_column!r}: text holds an unpaired surrogate escape (invalid Unicode)")
    if not label_column:
        return text, None
    raw = row.get(label_column)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"field {label_column!r}: missing label")
    try:
        label = normalize_label(raw)
    except TypeError as e:
        raise DataError(f"field {label_column!r}: {e}") from None
    if label_set and label not in label_set:
        raise DataError(f"field {label_column!r}: label {reprlib.repr(raw)} is not in the label set {label_set}")
    return text, label


def _encodable(text: str) -> bool:
    """False for JSON such as "\\ud800", which tokenizers reject far from the file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_examples(path: str | Path, text_column: str = "text", label_column: str | None = "label",
                  labels: Sequence[Any] = (), split: str = "train", skip_invalid: bool = False,
                  keep_columns: Sequence[str] = (), config: str = "") -> Examples:
    """`read_table` + `to_examples` in one call; a line-based file is streamed (`stream_table`)."""
    table = stream_table(path, split, config)
    return to_examples(table, text_column, label_column, labels, skip_invalid, keep_columns)


# ---------------------------------------------------------------- splits
def split(examples: Examples, val_fraction: float, seed: int = 0, stratify: bool = True) -> tuple[Examples, Examples]:
    """Deterministic (train, val) split; stratified by label when labels exist."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    keys = examples.labels if (stratify and examples.labels is not None) else [0] * len(examples)
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    val: list[int] = []
    for k in sorted(groups):
        idx = groups[k]
        rng.shuffle(idx)
        val += idx[: round(len(idx) * val_fraction)]
    val_set = set(val)
    train = [i for i in range(len(examples)) if i not in val_set]
    if not train or not val:
        raise ValueError(f"split of {len(examples)} examples with val_fraction={val_fraction} leaves a side empty")
    return examples.subset(train), examples.subset(sorted(val))


# ---------------------------------------------------------------- inspect
def inspect_table(table: Table, text_column: str | None = None, label_column: str | None = None) -> dict[str, Any]:
    """Row count, columns, label counts and text-length percentiles (in words and characters)."""
    cols = table.columns
    text_column = text_column or next((c for c in ("text", "sentence", "prompt", "chosen") if c in cols), None)
    label_column = label_column or next((c for c in ("label", "labels") if c in cols), None)
    info: dict[str, Any] = {"source": table.source, "rows": len(table.rows), "columns": cols}
    if label_column:
        counts: dict[str, int] = {}
        for r in table.rows:
            key = str(r.get(label_column))
            counts[key] = counts.get(key, 0) + 1
        info["label_column"] = label_column
        info["label_counts"] = dict(sorted(counts.items()))
    if text_column:
        words = sorted(len(str(r.get(text_column) or "").split()) for r in table.rows)
        chars = sorted(len(str(r.get(text_column) or "")) for r in table.rows)
        info["text_column"] = text_column
        info["length_words"] = _percentiles(words)
        info["length_chars"] = _percentiles(chars)
    return info


def _percentiles(sorted_values: list[int]) -> dict[str, int]:
    n = len(sorted_values)
    return {f"p{q}": sorted_values[min(n - 1, int(q / 100 * n))] for q in (0, 50, 90, 99)} | {"max": sorted_values[-1]}


def repeat_columns(columns: dict[str, list[Any]], k: int, rows: slice | None = None) -> dict[str, list[Any]]:
    """Each column's values of `rows` (default all), each repeated k times in a row: aligned with K completions per
    prompt, prompt-major, as sampling lays them out."""
    rows = rows or slice(None)
    return {name: [v for v in values[rows] for _ in range(k)] for name, values in columns.items()}
