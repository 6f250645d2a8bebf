"""Relation extraction, intent and topic with the classifier policy: SemEval-2010 T8's official score and CLINC150's
out-of-scope metrics (hand-computed), the cost matrix's wildcard, entity markers as tokens, unknown labels refused."""
from __future__ import annotations

import json

import pytest

from rewardtune.cli import main
from rewardtune.config import LoraSettings, ModelSettings
from rewardtune.eval import classification_metrics
from rewardtune.rewards.rules import cost_matrix, parse_cost_matrix
from rewardtune.task_metrics import is_semeval, out_of_scope_metrics, semeval_macro_f1
from rewardtune.train.common import setup_model

CE12, CE21, CW12, OTHER = "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Component-Whole(e1,e2)", "Other"


def test_semeval_official_score_is_hand_computed():
    gold = [CE12, CE12, CE21, CW12, OTHER, OTHER]
    pred = [CE12, CE21, CE21, OTHER, CW12, OTHER]
    # Cause-Effect: right 2 (rows 0 and 2; row 1 has the wrong direction), predicted 3 (rows 0-2), gold 3:
    #   P = R = 2/3, F1 = 2/3. Component-Whole: right 0, predicted 1 (row 4), gold 1: F1 = 0. Other is left out.
    #   Macro-F1 = (2/3 + 0) / 2 = 1/3
    assert semeval_macro_f1(gold, pred) == pytest.approx(1 / 3)
    assert semeval_macro_f1(gold, gold) == 1.0
    # ignoring direction would have scored row 1 right (Cause-Effect F1 1, macro 1/2): the direction counts
    assert semeval_macro_f1([CE12], [CE21]) == 0.0


def test_out_of_scope_metrics_are_hand_computed():
    gold, pred = ["a", "b", "oos", "oos", "a"], ["a", "oos", "oos", "a", "b"]
    # in scope: rows 0, 1, 4 → right only row 0: 1/3; out of scope: rows 2, 3 → row 2 predicted oos: 1/2
    assert out_of_scope_metrics(gold, pred) == pytest.approx({"in_scope_accuracy": 1 / 3, "oos_recall": 1 / 2})


def test_reports_carry_the_task_metrics_their_label_set_names():
    names = [CE12, CE21, CW12, OTHER]
    metrics, _, _ = classification_metrics([0, 0, 1, 2, 3, 3], [0, 1, 1, 3, 2, 3], names)
    assert metrics["semeval_macro_f1"] == pytest.approx(1 / 3)
    metrics, _, _ = classification_metrics([0, 1, 2, 2, 0], [0, 2, 2, 0, 1], ["a", "b", "oos"])
    assert metrics["in_scope_accuracy"] == pytest.approx(1 / 3) and metrics["oos_recall"] == pytest.approx(1 / 2)
    metrics, _, _ = classification_metrics([0, 1], [0, 1], ["negative", "positive"])
    assert "semeval_macro_f1" not in metrics and "in_scope_accuracy" not in metrics
    assert not is_semeval([OTHER]) and not is_semeval([CE12, "Cause-Effect"])


def test_cost_matrix_wildcards_price_every_miss_of_a_label():
    reward = cost_matrix(parse_cost_matrix("oos/*=-2, */oos=-0.5, oos/alarm=-3"))
    golds = ["oos", "oos", "alarm", "alarm", "alarm", "oos"]
    preds = ["weather", "alarm", "oos", "alarm", "weather", "oos"]
    # any miss of oos -2 (an exact pair first: oos/alarm -3); a false oos -0.5; right 1; another miss 0
    assert reward([""] * 6, preds, label=golds) == [-2.0, -3.0, -0.5, 1.0, 0.0, 1.0]


def test_entity_markers_become_single_tokens(tiny_encoder_dir):
    markers = ("<e1>", "</e1>", "<e2>", "</e2>")
    net, tok = setup_model(ModelSettings(str(tiny_encoder_dir), LoraSettings(), add_tokens=markers), ["a", "b"])
    ids = tok("the <e1>film</e1> was <e2>good</e2>", add_special_tokens=False)["input_ids"]
    assert [tok.convert_ids_to_tokens(i) for i in ids] == ["the", "<e1>", "film", "</e1>", "was", "<e2>", "good",
                                                           "</e2>"]
    assert net.get_input_embeddings().weight.shape[0] == len(tok)


def test_sft_on_marked_sentences_saves_the_markers_and_refuses_an_unknown_relation(tiny_encoder_dir, tmp_path, capsys):
    rows = [{"text": f"the <e1>film</e1> was <e2>{w}</e2>", "label": lab}
            for w, lab in [("good", CE12), ("bad", CE21), ("fun", OTHER), ("dull", CW12)] * 4]
    data = tmp_path / "re.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["sft", f"model.name={tiny_encoder_dir}", f"data.path={data}", "data.val_fraction=0.25",
            "model.add_tokens=[<e1>,</e1>,<e2>,</e2>]", "train.max_steps=2", "train.batch_size=4",
            "train.max_length=16", "train.best_metric=semeval_macro_f1", f"runs_dir={tmp_path}"]
    assert main([*base, "name=ok", f"data.labels={json.dumps([CE12, CE21, CW12, OTHER])}"]) == 0
    best = tmp_path / "ok" / "checkpoints" / "best"
    assert "semeval_macro_f1" in json.loads((best / "rewardtune.json").read_text())
    assert main(["eval", str(best), "--data", str(data)]) == 0  # the saved tokenizer and vocabulary size load back
    capsys.readouterr()
    assert main([*base, "name=bad", f"data.labels={json.dumps([CE12, CE21, OTHER])}"]) == 2
    err = capsys.readouterr().err
    assert f"{data}, line 4: field 'label': label '{CW12}' is not in the label set" in err
    assert not (tmp_path / "bad").exists()
