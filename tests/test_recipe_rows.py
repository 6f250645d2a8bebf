"""`rewardtune data recipe`'s label rows: the validation rows come in a seeded shuffled order, because the packs'
files are sorted by label and held-out evaluation reads the first `eval.prompts` rows (Banking77's first 100
validation rows had held 20 of its 77 intents)."""
import pytest
import yaml

from rewardtune.config import config_path
from rewardtune.data import read_table
from rewardtune.models import ALIASES, is_prepared, load_tokenizer
from rewardtune.recipes import _label_rows

from helpers import needs_shared_data


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


def test_the_intent_recipes_generation_budget_holds_every_intent_name():
    """label_match can only reward a label the model writes whole: the longest Banking77 intent,
    balance_not_updated_after_cheque_or_cash_deposit, is 17 SmolLM2 tokens (a budget of 8 had cut 13 of 77)."""
    path = needs_shared_data("intent", "banking77", "train.jsonl.gz")
    if not is_prepared(ALIASES["smollm2-135m-instruct"]):
        pytest.skip("smollm2-135m-instruct is not prepared (rewardtune models prepare smollm2-135m-instruct)")
    tok = load_tokenizer("smollm2-135m-instruct")
    labels = sorted({str(r["label"]) for r in read_table(str(path)).rows})
    longest = max(len(tok(" " + label, add_special_tokens=False)["input_ids"]) for label in labels)
    assert len(labels) == 77 and longest == 17
    for name, key in (("recipe-intent-sft", "eval"), ("recipe-intent-rl", "gen")):
        assert yaml.safe_load(config_path(name).read_text())[key]["max_new_tokens"] >= longest, name
