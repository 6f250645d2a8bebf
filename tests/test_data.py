"""Data: every reader, every bad-input message, skipping, splits, inspect, real data."""
from __future__ import annotations

import gzip
import json
import logging

import pytest

from rewardtune.data import (DataError, inspect_table, load_examples, normalize_label, read_table, split)

from helpers import needs_shared_data

ROWS = [{"text": "great film", "label": "pos"}, {"text": "awful plot", "label": "neg"},
        {"text": "loved it", "label": "pos"}]


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "csv", "tsv", "parquet"])
def test_each_file_format_reads_the_same_examples(tmp_path, suffix):
    path = tmp_path / f"d.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, ROWS)
    elif suffix == "jsonl.gz":
        write_jsonl(path, ROWS, gzip.open)
    elif suffix in ("csv", "tsv"):
        sep = "," if suffix == "csv" else "\t"
        path.write_text("text" + sep + "label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    ex = load_examples(path)
    assert ex.texts == ["great film", "awful plot", "loved it"]
    assert ex.label_names == ["neg", "pos"] and ex.labels == [1, 0, 1]


def test_aclimdb_folder(tmp_path):
    for split_name, lab, name, text in [("train", "pos", "0_9", "Loved it."), ("train", "neg", "1_2", "Hated it."),
                                        ("test", "pos", "2_10", "Superb.")]:
        d = tmp_path / "aclImdb" / split_name / lab
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.txt").write_text(text)
    table = read_table(tmp_path / "aclImdb")  # split defaults to train
    assert sorted((r["text"], r["label"], r["rating"]) for r in table.rows) == [("Hated it.", 0, 2), ("Loved it.", 1, 9)]
    assert [r["text"] for r in read_table(tmp_path / "aclImdb", split="test").rows] == ["Superb."]
    assert len(read_table(tmp_path / "aclImdb" / "train").rows) == 2  # the split folder itself works too
    with pytest.raises(DataError, match="aclImdb-style"):
        read_table(tmp_path / "aclImdb" / "train" / "pos")


def test_demo_set_is_balanced_and_prompts_load():
    ex = load_examples("demo")
    assert len(ex) >= 300 and ex.label_names == ["negative", "positive"]
    assert ex.labels.count(0) == ex.labels.count(1)
    prompts = load_examples("demo-prompts", text_column="prompt", label_column=None)
    assert len(prompts) >= 24 and prompts.labels is None


def test_labels_as_ints_or_strings_are_one_label_set(tmp_path):
    assert [normalize_label(v) for v in (1, "1", 1.0, " 1 ", "pos", True)] == [1, 1, 1, 1, "pos", 1]
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "0"}])
    assert load_examples(path).label_names == ["0", "1"]
    ex = load_examples(path, labels=["1", "0"])  # a given label set fixes the order
    assert ex.label_names == ["1", "0"] and ex.labels == [0, 1]


# ---------------------------------------------------------------- bad input
def test_missing_column_lists_existing_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match=r"d.jsonl: no column 'sentence'; the columns are: text, label"):
        load_examples(path, text_column="sentence")


def test_label_outside_label_set_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS + [{"text": "meh", "label": "neutral"}])
    with pytest.raises(DataError, match=r"d.jsonl, line 4: field 'label': label 'neutral' is not in the label set"):
        load_examples(path, labels=["neg", "pos"])


def test_empty_text_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:1] + [{"text": "   ", "label": "pos"}])
    with pytest.raises(DataError, match=r"d.jsonl, line 2: field 'text': empty text"):
        load_examples(path)
    path = write_jsonl(tmp_path / "e.jsonl", [{"text": 5, "label": "pos"}])
    with pytest.raises(DataError, match=r"line 1: field 'text': expected text, got int 5"):
        load_examples(path)


def test_undecodable_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 1}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: not valid UTF-8"):
        load_examples(path)
    tsv = tmp_path / "d.tsv"
    tsv.write_bytes(b"sentence\tlabel\nfine\t1\nbad \xff\t0\n")
    with pytest.raises(DataError, match=r"d.tsv, line 3: not valid UTF-8"):
        read_table(tsv)


def test_invalid_json_and_non_object_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n\n{"text": "broken", \n')
    with pytest.raises(DataError, match=r"d.jsonl, line 3: invalid JSON"):
        read_table(path)
    path.write_text('[1, 2]\n')
    with pytest.raises(DataError, match=r"line 1: expected a JSON object"):
        read_table(path)


def test_truncated_gzip_empty_file_and_wrong_field_count(tmp_path):
    gz = tmp_path / "d.jsonl.gz"
    write_jsonl(gz, ROWS * 200, gzip.open)
    gz.write_bytes(gz.read_bytes()[:-40])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_table(gz)
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no rows"):
        read_table(empty)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text,label\ngood,1\ntoo,many,fields\n")
    with pytest.raises(DataError, match=r"d.csv, line 3: 3 fields but the header has 2"):
        read_table(csv_path)
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unknown file type"):
        (tmp_path / "x.xml").write_text("<a/>")
        read_table(tmp_path / "x.xml")


def test_hub_name_offline_fails_fast_and_clearly():
    import time
    t = time.time()
    with pytest.raises(DataError, match="Hugging Face dataset name, but the hub cannot be reached"):
        read_table("someone/some-dataset")
    assert time.time() - t < 10


def test_skip_invalid_counts_and_logs(tmp_path, caplog):
    rows = ROWS + [{"text": "", "label": "pos"}, {"text": "x", "label": "maybe"}, {"text": "y"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rewardtune.data"):
        ex = load_examples(path, labels=["neg", "pos"], skip_invalid=True)
    assert len(ex) == 3 and ex.skipped == 3
    assert "skipped 3 invalid row(s)" in caplog.text and "line 4: field 'text': empty text" in caplog.text
    assert "line 6: field 'label': missing label" in caplog.text
    with pytest.raises(DataError, match="line 4: field 'text': empty text"):
        load_examples(path, labels=["neg", "pos"])  # without the option, the first bad row stops it


# ---------------------------------------------------------------- splits
def test_split_is_deterministic_stratified_and_disjoint():
    ex = load_examples("demo")
    tr1, va1 = split(ex, 0.25, seed=3)
    tr2, va2 = split(ex, 0.25, seed=3)
    _, va3 = split(ex, 0.25, seed=4)
    assert va1.texts == va2.texts and tr1.texts == tr2.texts
    assert va1.texts != va3.texts
    assert not set(tr1.texts) & set(va1.texts) and len(tr1) + len(va1) == len(ex)
    # 160 per class × 0.25 = 40 per class exactly
    assert va1.labels.count(0) == 40 and va1.labels.count(1) == 40
    with pytest.raises(ValueError, match="val_fraction"):
        split(ex, 1.0)


# ---------------------------------------------------------------- inspect + real data
def test_inspect_counts_and_percentiles(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    info = inspect_table(read_table(path))
    assert info["rows"] == 3 and info["label_counts"] == {"neg": 1, "pos": 2}
    assert info["length_words"] == {"p0": 2, "p50": 2, "p90": 2, "p99": 2, "max": 2}


def test_real_sst2_dev_and_imdb_train():
    dev = load_examples(needs_shared_data("sst2", "dev.tsv"), text_column="sentence")
    assert len(dev) == 872 and dev.label_names == ["0", "1"]
    imdb = load_examples(needs_shared_data("imdb", "train.jsonl.gz"), keep_columns=["rating"])
    assert len(imdb) == 25000 and imdb.labels.count(1) == 12500
    train, val = split(imdb, 0.1, seed=0)
    assert len(val) == 2500 and val.labels.count(1) == 1250


def test_max_examples_samples_both_classes_of_a_label_sorted_file(tmp_path):
    from rewardtune.config import DataSettings
    from rewardtune.train.common import setup_data

    path = tmp_path / "sorted.jsonl"  # 50 negatives, then 50 positives (as IMDb's files are)
    path.write_text("".join(json.dumps({"text": f"review {i}", "label": int(i >= 50)}) + "\n" for i in range(100)))
    data = setup_data(DataSettings(path=str(path), val_fraction=0.2, max_examples=20))
    # 80 training rows (40 per class) → 20/80 = 0.25 of each class: 10 + 10
    assert len(data.train) == 20 and sorted(data.train.labels).count(0) == 10
    again = setup_data(DataSettings(path=str(path), val_fraction=0.2, max_examples=20))
    assert again.train.texts == data.train.texts  # seeded by data.seed
    first = setup_data(DataSettings(path=str(path), val_fraction=0.2, max_examples=20, subset="first"))
    assert set(first.train.labels) == {0}  # the file's first rows: one class


@pytest.mark.parametrize("settings,key", [({"max_examples": 1}, "data.max_examples=1"),
                                          ({"val_fraction": 1.5}, "data.val_fraction=1.5")])
def test_a_split_that_cannot_be_made_names_the_setting(tmp_path, settings, key):
    from rewardtune.config import ConfigError, DataSettings
    from rewardtune.train.common import setup_data

    path = tmp_path / "three.jsonl"  # 3 classes × 10 rows, 24 after validation: 1 example = 8/24 per class, rounds to 0
    path.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 3}) + "\n" for i in range(30)))
    with pytest.raises(ConfigError, match=key) as e:
        setup_data(DataSettings(path=str(path), **{"val_fraction": 0.2, **settings}))
    assert "3 classes" in str(e.value) and "data.stratify=false" in str(e.value)
