"""Fuzz-style bad input: every malformed data file or config gives our own error, never a crash.

Each case writes one malformed input and checks that loading it raises `DataError` / `ConfigError`
(not a json, gzip, zlib, csv, Unicode, Key or Type error) whose message names the file and, where
it applies, the line and the field. A few inputs that look odd but are fine (a BOM, a 5 MB line)
must load. Seeded random byte mutations of valid files close the module.
"""
from __future__ import annotations

import gzip
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import Cfg, Train  # the small config that test_config.py loads too

from rewardtune.config import ConfigError, load_config
from rewardtune.data import DataError, Table, inspect_table, load_examples, read_table, split, to_examples

ROWS = [{"text": f"review number {i}", "label": i % 2} for i in range(6)]
BIG = 5_000_000  # characters in the "huge line" cases


# ---------------------------------------------------------------- writers
def jsonl_bytes(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def raw(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    """A case input: `data` written as file `name` (bytes, or a function giving them)."""
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data() if callable(data) else data)
        return path
    return make


def lines(name: str, *texts: str) -> Callable[[Path], Path]:
    return raw(name, "".join(t + "\n" for t in texts).encode())


def rows(name: str, *objs: Any) -> Callable[[Path], Path]:
    """JSONL whose last row is `objs[-1]`, after valid rows so the line number is not 1."""
    return raw(name, jsonl_bytes(list(objs)))


def gz(data: bytes, keep: float = 1.0) -> bytes:
    packed = gzip.compress(data, mtime=0)
    return packed[: int(len(packed) * keep)]


def folder(*files: tuple[str, bytes]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        root = tmp / "reviews"
        root.mkdir()
        for rel, data in files:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root
    return make


def parquet_bytes() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS * 50), buf)
    return buf.getvalue()


GOOD = jsonl_bytes(ROWS * 50)
R = ROWS[0]


# ---------------------------------------------------------------- data: must fail clearly
@dataclass
class Bad:
    id: str
    make: Callable[[Path], Path | str]
    expect: tuple[str, ...]  # fragments of the message besides the path
    kwargs: dict = field(default_factory=dict)
    names_path: bool = True


DATA_ERRORS = [
    # gzip
    Bad("gz-cut-in-half", raw("d.jsonl.gz", lambda: gz(GOOD, 0.5)), ("truncated or corrupt",)),
    Bad("gz-header-only", raw("d.jsonl.gz", lambda: gz(GOOD)[:10]), ("truncated or corrupt",)),
    Bad("gz-header-on-garbage", raw("d.jsonl.gz", lambda: gz(GOOD)[:10] + random.Random(0).randbytes(400)),
        ("truncated or corrupt",)),
    Bad("gz-name-on-plain-text", raw("d.jsonl.gz", GOOD), ("Not a gzipped file",)),
    Bad("gz-bad-json-line-2", raw("d.jsonl.gz", lambda: gz(b'{"text": "a", "label": 1}\n{"text": \n')),
        ("line 2: invalid JSON",)),
    # JSON lines
    Bad("json-invalid-line-1", lines("d.jsonl", '{"text": "a", "label": 1'), ("line 1: invalid JSON",)),
    Bad("json-invalid-line-5", lines("d.jsonl", *[json.dumps(R)] * 4, "{'text': 'single quotes'}"),
        ("line 5: invalid JSON",)),
    Bad("json-huge-invalid-line", raw("d.jsonl", lambda: b'{"text": "' + b"x" * BIG + b'", }\n'),
        ("line 1: invalid JSON",)),
    Bad("json-line-is-list", lines("d.jsonl", json.dumps(R), "[1, 2]"), ("line 2: expected a JSON object", "list")),
    Bad("json-line-is-number", lines("d.jsonl", json.dumps(R), "42"), ("line 2: expected a JSON object", "int")),
    Bad("json-line-is-string", lines("d.jsonl", '"just text"'), ("line 1: expected a JSON object", "str")),
    Bad("json-line-is-null", lines("d.jsonl", json.dumps(R), "null"), ("line 2: expected a JSON object",)),
    Bad("json-int-too-long", lines("d.jsonl", '{"text": "a", "label": ' + "7" * 5000 + "}"),
        ("line 1: unreadable JSON",)),
    Bad("json-nested-too-deep", lines("d.jsonl", "[" * 100_000 + "]" * 100_000), ("line 1: unreadable JSON",)),
    # wrong types in a field
    Bad("text-is-number", rows("d.jsonl", R, {"text": 3.5, "label": 1}),
        ("line 2: field 'text': expected text, got float",)),
    Bad("text-is-list", rows("d.jsonl", R, {"text": ["a", "b"], "label": 1}),
        ("line 2: field 'text': expected text, got list",)),
    Bad("text-is-null", rows("d.jsonl", R, R, {"text": None, "label": 1}), ("line 3: field 'text': missing text",)),
    Bad("text-key-absent", rows("d.jsonl", R, {"label": 1}), ("line 2: field 'text': missing text",)),
    Bad("text-is-huge-list", rows("d.jsonl", {"text": list(range(200_000)), "label": 1}),
        ("line 1: field 'text': expected text, got list",)),
    Bad("text-lone-surrogate", lines("d.jsonl", json.dumps(R), '{"text": "bad \\ud800 text", "label": 1}'),
        ("line 2: field 'text'", "surrogate")),
    Bad("label-is-dict", rows("d.jsonl", R, {"text": "a", "label": {"y": 1}}), ("line 2: field 'label'", "got dict")),
    Bad("label-is-nan", lines("d.jsonl", json.dumps(R), '{"text": "a", "label": NaN}'),
        ("line 2: field 'label'", "got float nan")),
    Bad("label-is-infinity", lines("d.jsonl", '{"text": "a", "label": -Infinity}'),
        ("line 1: field 'label'", "float -inf")),
    Bad("label-is-fraction", rows("d.jsonl", R, {"text": "a", "label": 0.5}),
        ("line 2: field 'label'", "got float 0.5")),
    Bad("label-is-list", rows("d.jsonl", R, {"text": "a", "label": [1]}), ("line 2: field 'label'", "got list")),
    Bad("label-is-null", rows("d.jsonl", R, {"text": "a", "label": None}), ("line 2: field 'label': missing label",)),
    Bad("label-huge-not-in-set", rows("d.jsonl", {"text": "a", "label": "z" * BIG}),
        ("line 1: field 'label'", "not in the label set"), {"labels": ["0", "1"]}),
    Bad("label-set-unusable", rows("d.jsonl", R), ("the given label set", "got list"), {"labels": [[0, 1]]},
        names_path=False),
    # columns
    Bad("text-column-missing", rows("d.jsonl", {"sentence": "a", "label": 1}),
        ("no column 'text'; the columns are: sentence, label",)),
    Bad("label-column-missing", rows("d.jsonl", R), ("no column 'stars'; the columns are: text, label",),
        {"label_column": "stars"}),
    Bad("csv-column-missing", lines("d.csv", "review,label", "nice,1"),
        ("no column 'text'; the columns are: review, label",)),
    # bytes that are not UTF-8
    Bad("jsonl-latin1-line-3", raw("d.jsonl", jsonl_bytes([R, R]) + b'{"text": "caf\xe9", "label": 1}\n'),
        ("line 3: not valid UTF-8",)),
    Bad("csv-latin1-line-2", raw("d.csv", b"text,label\ncaf\xe9,1\n"), ("line 2: not valid UTF-8",)),
    Bad("csv-latin1-header", raw("d.csv", b"t\xe9xt,label\na,1\n"), ("line 1: not valid UTF-8",)),
    Bad("tsv-binary-line-4", raw("d.tsv", b"text\tlabel\na\t1\nb\t0\n\x80\x81\x82\t1\n"), ("line 4: not valid UTF-8",)),
    # empty and blank
    Bad("jsonl-0-bytes", raw("d.jsonl", b""), ("holds no rows",)),
    Bad("jsonl-gz-0-bytes", raw("d.jsonl.gz", b""), ("holds no rows",)),
    Bad("jsonl-gz-of-nothing", raw("d.jsonl.gz", lambda: gz(b"")), ("holds no rows",)),
    Bad("jsonl-blank-lines", raw("d.jsonl", b"\n   \n\t\n\r\n"), ("holds no rows",)),
    Bad("csv-0-bytes", raw("d.csv", b""), ("no header line",)),
    Bad("tsv-0-bytes", raw("d.tsv", b""), ("no header line",)),
    Bad("csv-blank-lines", raw("d.csv", b"\n\n  \n"), ("no header line",)),
    Bad("csv-header-only", lines("d.csv", "text,label"), ("a header but no rows",)),
    Bad("tsv-header-only", lines("d.tsv", "text\tlabel", "", ""), ("a header but no rows",)),
    # wrong shape of CSV / TSV
    Bad("csv-too-many-fields", lines("d.csv", "text,label", "a,1", "b,0,extra"),
        ("line 3: 3 fields but the header has 2 (text, label)",)),
    Bad("csv-too-few-fields", lines("d.csv", "text,label", "only text"), ("line 2: 1 fields but the header has 2",)),
    Bad("tsv-too-many-fields", lines("d.tsv", "text\tlabel", "a\t1", "b\t0", "c\t1\tx"), ("line 4: 3 fields",)),
    Bad("csv-unclosed-quote", lines("d.csv", "text,label", '"never closed,1', "b,0", "c,1"),
        ("line 2: 1 fields", "runs on to line 4", "quote left open")),
    Bad("csv-repeated-column", lines("d.csv", "text,label,text", "a,1,b"), ("line 1", "'text' appear more than once")),
    # parquet, folders, paths
    Bad("parquet-is-text", lines("d.parquet", "text,label", "a,1"), ("not a readable parquet file",)),
    Bad("parquet-0-bytes", raw("d.parquet", b""), ("not a readable parquet file",)),
    Bad("parquet-cut-in-half", raw("d.parquet", lambda: parquet_bytes()[: len(parquet_bytes()) // 2]),
        ("not a readable parquet file",)),
    Bad("folder-not-aclimdb", folder(("a.txt", b"hi"), ("sub/b.txt", b"ho")), ("aclImdb-style",)),
    Bad("folder-aclimdb-no-reviews", folder(("train/pos/readme.md", b"x")), ("no .txt files under pos/ or neg/",)),
    Bad("folder-aclimdb-latin1-review", folder(("train/pos/0_9.txt", b"good"), ("train/neg/1_2.txt", b"na\xefve")),
        ("1_2.txt", "not valid UTF-8")),
    Bad("path-missing-jsonl", lambda tmp: tmp / "nope.jsonl", ("no such file",)),
    Bad("path-missing-ndjson-relative", lambda tmp: "data/nope.ndjson", ("no such file",)),
    Bad("path-missing-upper-case", lambda tmp: "data/NOPE.CSV", ("no such file",)),
    Bad("path-unknown-extension", lines("d.xml", "<a/>"), ("unknown file type", ".jsonl")),
    # A .json file is JSON Lines or one array of objects (tests/test_data_formats.py); an array of anything else is not
    Bad("json-array-of-numbers", raw("d.json", b"[1, 2]"), ("element 1", "expected a JSON object")),
    Bad("json-array-cut-short", raw("d.json", json.dumps(ROWS).encode()[:-5]), ("invalid JSON array",)),
]


@pytest.mark.parametrize("case", DATA_ERRORS, ids=lambda c: c.id)
def test_bad_data_gives_a_clear_data_error(tmp_path, case):
    path = case.make(tmp_path)
    t = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_examples(path, **case.kwargs)
    assert time.perf_counter() - t < 30, "must fail fast, not hang"
    msg = str(e.value)
    if case.names_path:
        assert str(path) in msg
    for fragment in case.expect:
        assert fragment in msg
    assert len(msg) < 1000, "a message must not echo a huge value"
    # no chained json/gzip/Unicode traceback under ours
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


# ---------------------------------------------------------------- data: odd but fine, must load
@dataclass
class Good:
    id: str
    make: Callable[[Path], Path]
    check: Callable[[Table], bool]


def example_texts(t: Table) -> list:
    return to_examples(t).texts


DATA_LOADS = [
    Good("jsonl-bom", raw("d.jsonl", b"\xef\xbb\xbf" + jsonl_bytes([R])), lambda t: example_texts(t) == [R["text"]]),
    Good("jsonl-gz-bom", raw("d.jsonl.gz", lambda: gz(b"\xef\xbb\xbf" + jsonl_bytes([R]))), lambda t: len(t.rows) == 1),
    Good("csv-bom", raw("d.csv", b"\xef\xbb\xbftext,label\nfine,1\n"), lambda t: t.columns == ["text", "label"]),
    Good("tsv-bom", raw("d.tsv", b"\xef\xbb\xbftext\tlabel\nfine\t1\n"), lambda t: t.columns == ["text", "label"]),
    Good("jsonl-5mb-line", raw("d.jsonl", lambda: jsonl_bytes([{"text": "w " * (BIG // 2), "label": 1}])),
         lambda t: len(example_texts(t)[0]) == BIG),
    Good("csv-5mb-field", raw("d.csv", lambda: b"text,label\n" + b"w" * BIG + b",1\n"),
         lambda t: len(example_texts(t)[0]) == BIG),
    Good("csv-blank-lines-before-header", raw("d.csv", b"\n\ntext,label\na,1\n"),
         lambda t: t.where == [f"{t.source}, line 4"]),
    Good("csv-crlf", raw("d.csv", b"text,label\r\na,1\r\nb,0\r\n"), lambda t: example_texts(t) == ["a", "b"]),
    Good("csv-quoted-newline-names-first-line", raw("d.csv", b'text,label\n"two\nlines",1\nb,0\n'),
         lambda t: [w.rsplit(" ", 1)[1] for w in t.where] == ["2", "4"]),
    Good("csv-odd-string-labels", lines("d.csv", "text,label", "a,--1", "b,\u00b2", "c," + "9" * 5000),
         lambda t: to_examples(t).label_names == ["--1", "9" * 5000, "\u00b2"]),
    Good("jsonl-trailing-blank-lines", raw("d.jsonl", jsonl_bytes([R]) + b"\n\n  \n"), lambda t: len(t.rows) == 1),
]


@pytest.mark.parametrize("case", DATA_LOADS, ids=lambda c: c.id)
def test_odd_but_valid_data_loads(tmp_path, case):
    t = time.perf_counter()
    table = read_table(case.make(tmp_path))
    assert case.check(table)
    assert time.perf_counter() - t < 30


# ---------------------------------------------------------------- inspect and split never crash
WEIRD_TABLES = {
    "values-of-every-type": [{"text": v, "label": v} for v in (None, 1, 2.5, [1], {"a": 1}, "", "ok", True)],
    "columns-differ-per-row": [{"text": "a"}, {"label": 1}, {"other": "x"}],
}


@pytest.mark.parametrize("name", WEIRD_TABLES)
def test_inspect_never_crashes_on_odd_values(name):
    table = Table(WEIRD_TABLES[name], [f"t line {i + 1}" for i in range(len(WEIRD_TABLES[name]))], "t")
    info = inspect_table(table)
    assert info["rows"] == len(table.rows) and info["length_chars"]["max"] >= 0
    with pytest.raises(DataError, match=r"t line \d+: field '(text|label)'"):
        to_examples(table)


def test_split_too_small_to_split_says_so():
    ex = to_examples(Table([{"text": "a", "label": 1}], ["t line 1"], "t"))
    with pytest.raises(ValueError, match="leaves a side empty"):
        split(ex, 0.1)


# ---------------------------------------------------------------- config


@dataclass
class BadConfig:
    id: str
    yaml: str | bytes | None  # None: no file
    overrides: tuple[str, ...]
    expect: tuple[str, ...]
    names_file: bool = True  # False: the mistake is in an override, so the file must not be blamed


TOP_KEYS = "valid keys are: model, data, train, name"
CONFIG_ERRORS = [
    BadConfig("yaml-unclosed-list", "train:\n  lr: 0.1\n  epochs: [1,\n", (), ("line 4: invalid YAML",)),
    BadConfig("yaml-bad-indent", "train:\n  lr: 0.1\n epochs: 2\n", (), ("line 3: invalid YAML",)),
    BadConfig("yaml-tab-indent", "train:\n\tlr: 0.1\n", (), ("line 2: invalid YAML",)),
    BadConfig("yaml-unclosed-quote", 'name: run\ntrain:\n  algo: "rloo\n', (), ("line 4: invalid YAML",)),
    BadConfig("yaml-python-tag", "name: !!python/object/apply:os.system ['true']\n", (), ("line 1: invalid YAML",)),
    BadConfig("yaml-not-utf8", b"name: caf\xe9\n", (), ("not UTF-8",)),
    BadConfig("top-level-list", "- train\n- model\n", (), ("expected a mapping", "list")),
    BadConfig("top-level-number", "42\n", (), ("expected a mapping", "int")),
    BadConfig("top-level-string", "just some words\n", (), ("expected a mapping", "str")),
    BadConfig("top-level-list-with-override", "- 1\n", ("train.lr=0.1",), ("expected a mapping", "list")),
    BadConfig("top-level-number-with-override", "7\n", ("name=x",), ("expected a mapping", "int")),
    BadConfig("unknown-top-key", "trian:\n  lr: 0.1\n", (), ("unknown key(s) 'trian'", TOP_KEYS)),
    BadConfig("unknown-nested-key", "train:\n  learning_rate: 0.1\n", (),
              ("train: unknown key(s) 'learning_rate'", "valid keys are: lr, epochs, algo")),
    BadConfig("non-string-keys", "1: 2\nfoo: 3\n~: 4\n", (), ("unknown key(s) 1, None, 'foo'", TOP_KEYS)),
    BadConfig("string-for-int", "train:\n  epochs: three\n", (), ("train.epochs: expected int, got 'three'",)),
    BadConfig("list-for-float", "train:\n  lr: [0.1, 0.2]\n", (), ("train.lr: expected float, got [0.1, 0.2]",)),
    BadConfig("bool-for-int", "train:\n  epochs: yes\n", (), ("train.epochs: expected int, got True",)),
    BadConfig("mapping-for-str", "name: {first: a}\n", (), ("name: expected str",)),
    BadConfig("scalar-for-section", "train: 5\n", (), ("train: expected a mapping", "int")),
    BadConfig("literal-not-a-choice", "train:\n  algo: ppo\n", (),
              ("train.algo: 'ppo' is not one of 'reinforce', 'rloo'",)),
    BadConfig("override-without-equals", "name: run\n", ("train.epochs",), ("expected key=value",), names_file=False),
    BadConfig("override-empty-key", None, ("=3",), ("empty key",)),
    BadConfig("override-unknown-section", None, ("optim.lr=0.1",), ("unknown key(s) 'optim'", TOP_KEYS)),
    BadConfig("override-unknown-section-with-file", "name: run\n", ("optim.lr=0.1",),
              ("unknown key(s) 'optim'", TOP_KEYS), names_file=False),
    BadConfig("override-wrong-type-with-file", "train:\n  lr: 0.1\n", ("train.epochs=three",),
              ("train.epochs: expected int, got 'three'",), names_file=False),
    BadConfig("override-list-for-float", None, ("train.lr=[1, 2]",), ("train.lr: expected float",)),
    BadConfig("override-into-a-value", "name: run\n", ("name.first=x",), ("'name' is not a section",),
              names_file=False),
]


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=lambda c: c.id)
def test_bad_config_gives_a_clear_config_error(tmp_path, case):
    path = None
    if case.yaml is not None:
        path = tmp_path / "run.yaml"
        path.write_bytes(case.yaml if isinstance(case.yaml, bytes) else case.yaml.encode())
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, path, list(case.overrides))
    msg = str(e.value)
    if path is not None:
        assert (str(path) in msg) == case.names_file
    for fragment in case.expect:
        assert fragment in msg
    assert e.value.__cause__ is None


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_config_path_that_is_not_a_file(tmp_path, kind):
    path = tmp_path / "run.yaml"
    if kind == "folder":
        path.mkdir()
    with pytest.raises(ConfigError, match="does not exist" if kind == "missing" else "cannot be read") as e:
        load_config(Cfg, path)
    assert str(path) in str(e.value)


# An empty file is "no settings": a user who empties a config expects the defaults, as with no file.
CONFIG_LOADS = {
    "empty-file": ("", (), Cfg()),
    "comments-only": ("# nothing set yet\n", (), Cfg()),
    "document-marker-only": ("---\n", (), Cfg()),
    "empty-section": ("train:\n", (), Cfg()),
    "empty-section-then-override": ("train:\n", ("train.lr=0.5",), Cfg(train=Train(lr=0.5))),
    "float-in-e-notation": ("train:\n  lr: 3e-5\n", (), Cfg(train=Train(lr=3e-5))),
}


@pytest.mark.parametrize("name", CONFIG_LOADS)
def test_odd_but_valid_config_loads(tmp_path, name):
    text, overrides, expected = CONFIG_LOADS[name]
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert load_config(Cfg, path, list(overrides)) == expected


# ---------------------------------------------------------------- random mutations of valid files
def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op, i = rng.randrange(4), rng.randrange(len(b))
        if op == 0:
            b[i] = rng.randrange(256)  # flip a byte
        elif op == 1:
            del b[i:i + rng.randint(1, 20)]  # drop a run
        elif op == 2:
            b[i:i] = rng.choice([b'"', b",", b"\t", b"\n", b"{", b"\\u", b"\x00", b"\xff", b"NaN", b"[[["])
        else:
            del b[i:]  # truncate
        if not b:
            break
    return bytes(b)


FUZZ_BASES = {
    "jsonl": lambda: jsonl_bytes(ROWS),
    "jsonl.gz": lambda: gz(jsonl_bytes(ROWS)),
    "csv": lambda: ("text,label\n" + "".join(f'"{r["text"]}, quoted",{r["label"]}\n' for r in ROWS)).encode(),
    "tsv": lambda: ("text\tlabel\n" + "".join(f'{r["text"]}\t{r["label"]}\n' for r in ROWS)).encode(),
    "parquet": parquet_bytes,
}
FUZZ_SEEDS = range(20)


@pytest.mark.parametrize("fmt", FUZZ_BASES)
def test_random_mutations_load_or_fail_clearly(tmp_path, fmt):
    base = FUZZ_BASES[fmt]()
    for seed in FUZZ_SEEDS:
        path = tmp_path / f"m{seed}.{fmt}"
        path.write_bytes(_mutate(base, random.Random(f"{fmt}-{seed}")))
        try:
            load_examples(path)
        except DataError as e:
            assert str(path) in str(e) and len(str(e)) < 1000, (seed, str(e))


CASES = [*DATA_ERRORS, *DATA_LOADS, *WEIRD_TABLES, *CONFIG_ERRORS, *CONFIG_LOADS]
N_CASES = len(CASES) + 1 + 2 + len(FUZZ_BASES) * len(FUZZ_SEEDS)  # + split + config paths + mutations
