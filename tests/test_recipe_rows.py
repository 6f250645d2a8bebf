"""`rewardtune data recipe`'s label rows: the validation rows come in a seeded shuffled order, because the packs'
files are sorted by label and held-out evaluation reads the first `eval.prompts` rows (Banking77's first 100
validation rows had held 20 of its 77 intents)."""
from rewardtune.recipes import _label_rows


def test_label_rows_validation_is_shuffled_not_label_sorted():
    rows = [{"text": f"{lab}{i}", "label": lab} for lab in "abcdefgh" for i in range(10)]  # 80 rows sorted by label
    train, val = _label_rows(rows, "text", "label", lambda t: f"{t}\nIntent:", 0, 0.25)
    assert len(val) == 20 and len(train) == 60
    assert {r["prompt"] for r in val}.isdisjoint(r["prompt"] for r in train)
    labels = [r["label"] for r in val]
    assert labels != sorted(labels)  # not label-sorted, so the first rows are a sample of every label
    assert len(set(labels[:10])) >= 4  # seeded: the first 10 of 20 validation rows span at least 4 of 8 labels
    again = _label_rows(rows, "text", "label", lambda t: f"{t}\nIntent:", 0, 0.25)[1]
    assert [r["prompt"] for r in again] == [r["prompt"] for r in val]  # the same seed, the same order
