"""Data in the `datasets` library's own forms: `.json` files (JSON Lines or one array, as `Dataset.to_json` writes
them), `save_to_disk` folders, hub datasets with a config name (`data.config`; offline only the argument plumbing
can be tested: `datasets.load_dataset` is replaced by a recorder), and line-based files streamed, not held whole."""
from __future__ import annotations

import json
import tracemalloc

import pytest

from rewardtune.config import DataSettings
from rewardtune.data import DataError, load_examples, read_table, stream_table
from rewardtune.tables import RowStream, Table

ROWS = [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}", "label": i % 2, "id": i} for i in range(10)]


@pytest.fixture()
def dataset():
    from datasets import Dataset

    return Dataset.from_list(ROWS)


def _same(ex) -> None:
    assert ex.texts == [r["text"] for r in ROWS] and ex.labels == [r["label"] for r in ROWS]
    assert ex.label_names == ["0", "1"]


@pytest.mark.parametrize("lines", [True, False], ids=["json-lines", "json-array"])
def test_json_files_written_by_datasets_load(dataset, tmp_path, lines):
    path = tmp_path / "d.json"
    dataset.to_json(str(path), lines=lines)
    assert path.read_text().lstrip().startswith("[") is not lines  # the two forms really differ
    _same(load_examples(path))
    table = read_table(path)
    assert len(table.rows) == 10 and table.where[2] == (f"{path}, line 3" if lines else f"{path}, element 3")


def test_save_to_disk_folders_load(dataset, tmp_path):
    from datasets import DatasetDict

    dataset.save_to_disk(str(tmp_path / "one"))
    _same(load_examples(tmp_path / "one"))
    DatasetDict({"train": dataset, "validation": dataset.select(range(4))}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_examples(tmp_path / "dict", split="validation")) == 4
    with pytest.raises(DataError, match=r"no split 'test'; its splits are: train, validation \(set data.split\)"):
        load_examples(tmp_path / "dict", split="test")


def test_cli_sft_trains_on_a_json_array(dataset, tiny_encoder_dir, tmp_path):
    from rewardtune.cli import main

    dataset.to_json(str(tmp_path / "d.json"), lines=False)
    assert main(["sft", f"model.name={tiny_encoder_dir}", f"data.path={tmp_path / 'd.json'}", "train.max_steps=1",
                 "train.epochs=1", "data.val_fraction=0.2", f"runs_dir={tmp_path}", "name=j"]) == 0
    assert (tmp_path / "j" / "checkpoints" / "best").is_dir()


@pytest.fixture()
def hub_recorder(monkeypatch):
    """`datasets.load_dataset` replaced: the hub is 'reachable' and every call is recorded (offline tests)."""
    import datasets

    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"sentence": "a fine film", "label": 1}, {"sentence": "dull", "label": 0}] * 5)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("rewardtune.hub.unreachable", lambda: "")
    return calls


def test_data_config_reaches_load_dataset(hub_recorder):
    from rewardtune.train.common import setup_data

    data = setup_data(DataSettings(path="glue", config="sst2", split="validation", text_column="sentence",
                                    val_fraction=0.2))
    assert hub_recorder == [("glue", "sst2", "validation")] and len(data.train) + len(data.val) == 10
    assert read_table("imdb").source == "hub:imdb" and hub_recorder[-1] == ("imdb", None, "train")  # no config: None


def test_data_config_from_the_command_line(hub_recorder, tiny_encoder_dir, tmp_path):
    from rewardtune.cli import main

    assert main(["sft", f"model.name={tiny_encoder_dir}", "data.path=glue", "data.config=sst2",
                 "data.text_column=sentence", "data.val_fraction=0.2", "train.max_steps=1", "train.epochs=1", f"runs_dir={tmp_path}",
                 "name=g"]) == 0
    assert hub_recorder[0] == ("glue", "sst2", "train")
    assert "config: sst2" in (tmp_path / "g" / "config.yaml").read_text()


def test_a_missing_config_name_says_which_key_to_set(monkeypatch):
    import datasets

    def load_dataset(name, config=None, split=None):
        raise ValueError("Config name is missing.\nPlease pick one among the available configs: ['cola', 'sst2']")
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("rewardtune.hub.unreachable", lambda: "")
    with pytest.raises(DataError, match=r"hub dataset 'glue' \(split 'train'\) could not be loaded: Config name is "
                                        r"missing\. Fix: give its config name as data\.config\.") as e:
        read_table("glue")
    assert "\n" not in str(e.value)


def _big_file(tmp_path, kind: str, n: int = 4000):
    junk = "x" * 2000  # a column no one asked for: 8 MB over the file
    if kind == "jsonl":
        path = tmp_path / "big.jsonl"
        path.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2, "junk": junk}) + "\n" for i in range(n)))
    else:
        path = tmp_path / "big.csv"
        path.write_text("text,label,junk\n" + "".join(f"t {i},{i % 2},{junk}\n" for i in range(n)))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_large_line_files_are_streamed_not_held_whole(tmp_path, kind):
    path = _big_file(tmp_path, kind)
    assert isinstance(stream_table(path), RowStream) and isinstance(read_table(path), Table)
    tracemalloc.start()
    ex = load_examples(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ex) == 4000 and "junk" not in ex.columns
    # Held whole, the rows' junk alone is 4000 × 2000 bytes = 8 MB; streamed, at most the 1000 peeked rows (2 MB)
    # and the texts are held at once.
    assert peak < 4e6, f"peak {peak / 1e6:.1f} MB: the file was held whole"
