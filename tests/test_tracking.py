"""`report_to`: each metrics.jsonl row read back from every tracker that is installed here (offline: TensorBoard's
event file, MLflow's file store, W&B's offline run, trackio's local database), the progress bar's reward/KL/loss,
and a bad or absent tracker refused before the run folder exists."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import struct
from dataclasses import fields

import pytest

from rewardtune.config import ConfigError, load_config
from rewardtune.run import RunContext
from rewardtune.tracking import TRACKERS, bar_postfix, check_report_to, flat_config, tracker_values
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.reward_model import RMConfig
from rewardtune.train.rl_classifier import RLClassifierConfig
from rewardtune.train.rl_generate import train_rl_generate
from rewardtune.train.sft import SFTConfig, train_sft
from rewardtune.train.sft_lm_config import SFTLMConfig

INSTALLED = [n for n, module in TRACKERS.items() if importlib.util.find_spec(module) is not None]


def needs(tracker: str) -> None:
    if tracker not in INSTALLED:
        pytest.skip(f"{tracker} is not installed (pip install 'rewardtune[tracking]'; scripts/setup.sh does)")


# ---------------------------------------------------------------- rows → tracker values, by hand
def test_a_row_becomes_split_prefixed_numbers():
    row = {"step": 3, "split": "train", "reward": 0.5, "reward/lexicon": 1, "kl": 0.25, "flag": True, "note": "x",
           "confusion": [[1, 0], [0, 1]]}
    assert tracker_values(row) == {"train/reward": 0.5, "train/reward.lexicon": 1.0, "train/kl": 0.25}
    assert tracker_values({"step": 4, "split": "eval", "decoding": "sampled x4", "reward": 1.0}) == {
        "eval_sampled/reward": 1.0}  # apart from the greedy evaluation at the same step
    assert tracker_values({"step": 0, "examples": 320}) == {"examples": 320.0}


def test_the_bar_shows_reward_kl_and_loss_of_train_rows_only():
    assert bar_postfix({"split": "train", "reward": 0.123456, "kl": 0.001, "loss": -2.5, "lr": 1e-3}) == {
        "reward": "0.123", "kl": "0.001", "loss": "-2.5"}
    assert bar_postfix({"split": "val", "loss": 1.0}) == {}

    class Bar:
        postfix: dict = {}

        def set_postfix(self, values, refresh=True):
            self.postfix = values

    run = RunContext(dir=None, seed=0, progress=Bar())  # type: ignore[arg-type]  (no accelerator: the main process)
    run._append = lambda *a: None  # type: ignore[method-assign]
    run.log(1, split="train", loss=0.5)
    assert run.progress.postfix == {"loss": "0.5"}


def test_flat_config_has_dotted_scalar_keys():
    assert flat_config({"rl": {"lr": 0.001, "algo": "grpo"}, "report_to": ["wandb"], "n": None}) == {
        "rl.lr": 0.001, "rl.algo": "grpo", "report_to": "['wandb']", "n": "None"}


def test_every_trainer_has_report_to():
    from rewardtune.train.bandit import BanditConfig
    from rewardtune.train.rl_tagger import TaggerRLConfig
    from rewardtune.train.span_config import SpanRLConfig, SpanSFTConfig
    from rewardtune.train.tagger import TaggerSFTConfig

    for cls in (SFTConfig, RLClassifierConfig, RMConfig, GenRLConfig, SFTLMConfig, TaggerSFTConfig, TaggerRLConfig,
                SpanSFTConfig, SpanRLConfig, BanditConfig):
        assert "report_to" in {f.name for f in fields(cls)}, cls.__name__


def test_the_tagger_trainer_sends_its_metrics_to_a_tracker(tmp_path, tiny_encoder_dir):
    """The trainers added beside the first five take report_to too (tagger as their example)."""
    pytest.importorskip("tensorboard")
    from rewardtune.config import load_config
    from rewardtune.train.tagger import TaggerSFTConfig, train_sft_tagger

    rows = [{"tokens": ["Ann", "went", "to", "Rome"], "tags": ["B-PER", "O", "O", "B-LOC"]}] * 16
    data = tmp_path / "ner.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(TaggerSFTConfig, None, [f"model.name={tiny_encoder_dir}", f"data.path={data}",
                                              "train.max_steps=2", "train.batch_size=4", f"runs_dir={tmp_path}",
                                              "name=tagged", "report_to=[tensorboard]"])
    train_sft_tagger(cfg, show_progress=False)
    assert list((tmp_path / "tagged" / "tensorboard").rglob("events.out.tfevents.*"))


def test_an_unknown_or_absent_tracker_fails_before_the_run_folder(tmp_path, monkeypatch, tiny_encoder_dir):
    with pytest.raises(ConfigError, match="unknown tracker.*'tensorbord'.*tensorboard, wandb, mlflow, trackio"):
        check_report_to(["tensorbord"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"wandb is not installed; pip install wandb"):
        train_sft(load_config(SFTConfig, None, [f"model.name={tiny_encoder_dir}", "report_to=[wandb]",
                                                f"runs_dir={tmp_path}", "name=r"]), show_progress=False)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- one tiny GRPO run sent to every tracker here
@pytest.fixture(scope="module")
def tracked(tiny_causal_lm_dir, tmp_path_factory):
    """A 3-step GRPO run on a tiny Llama with every installed tracker; returns (run folder, metrics rows, bar text)."""
    if not INSTALLED:
        pytest.skip("no tracker is installed (pip install 'rewardtune[tracking]')")
    root = tmp_path_factory.mktemp("tracked")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the film {w}"}) + "\n" for w in "was is plot very".split()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("TRACKIO_DIR", str(root / "trackio"))  # read when trackio is first imported: below
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = load_config(GenRLConfig, None, [
            f"model.name={tiny_causal_lm_dir}", f"data.path={prompts}", "rl.prompts_per_step=2",
            "rl.samples_per_prompt=2", "rl.steps=3", "eval.prompts=2", "eval.every=0", "gen.max_new_tokens=4",
            "rl.kl_coef=0.1", f"report_to=[{','.join(INSTALLED)}]", f"runs_dir={root}", "name=tracked"])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            train_rl_generate(cfg, show_progress=True)
    run = root / "tracked"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return run, rows, err.getvalue()


def train_rewards(rows):
    return {r["step"]: r["reward"] for r in rows if r["split"] == "train"}


def test_the_progress_bar_shows_reward_kl_and_loss(tracked):
    bar = tracked[2]
    assert "rl-grpo" in bar and all(f"{k}=" in bar for k in ("reward", "kl", "loss")), bar[-500:]


def test_tensorboard_event_file_holds_every_train_reward(tracked):
    needs("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, rows, _ = tracked
    acc = EventAccumulator(str(run / "tensorboard" / "rewardtune"))  # the scalars (the hyper-parameters: a sub-folder)
    acc.Reload()
    got = {e.step: e.value for e in acc.Scalars("train/reward")}
    assert got == pytest.approx(train_rewards(rows)) and len(got) == 3
    assert "eval_sampled/reward" in acc.Tags()["scalars"] or "eval/reward" in acc.Tags()["scalars"]


def test_mlflow_file_store_in_the_run_folder_holds_every_train_reward(tracked):
    needs("mlflow")
    from mlflow.tracking import MlflowClient

    run, rows, _ = tracked
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    (exp,) = [e for e in client.search_experiments() if e.name == "rewardtune"]
    (found,) = client.search_runs([exp.experiment_id])
    assert found.data.tags["mlflow.runName"] == "tracked" and found.data.params["rl.algorithm"] == "grpo"
    got = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "train/reward")}
    assert got == pytest.approx(train_rewards(rows))


def wandb_history(path):
    """The history rows of an offline W&B run file: LevelDB-style log blocks of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf, out = path.read_bytes(), 7, 32768, b"", []  # 7: the ':W&B' file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


def test_wandb_offline_run_in_the_run_folder_holds_every_train_reward(tracked):
    needs("wandb")
    run, rows, _ = tracked
    (offline,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    got = {h["_step"]: h["train/reward"] for h in wandb_history(offline) if "train/reward" in h}
    assert got == pytest.approx(train_rewards(rows))


def test_trackio_local_database_holds_every_train_reward(tracked):
    needs("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    run, rows, _ = tracked
    logs = SQLiteStorage.get_logs("rewardtune", "tracked")
    assert (run.parent / "trackio" / "rewardtune.db").exists()
    got = {r["step"]: r["train/reward"] for r in logs if "train/reward" in r}
    assert got == pytest.approx(train_rewards(rows))


def test_a_classifier_run_sends_its_validation_report(tiny_encoder_dir, tmp_path):
    needs("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"the film was {w}", "label": y}) + "\n"
                            for w, y in [("good", "pos"), ("bad", "neg")] * 8))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train_sft(load_config(SFTConfig, None, [
            f"model.name={tiny_encoder_dir}", f"data.path={data}", "train.epochs=1", "train.batch_size=4",
            "train.max_length=8", "train.log_every=1", "report_to=[tensorboard]", f"runs_dir={tmp_path}", "name=s"]))
    acc = EventAccumulator(str(tmp_path / "s" / "tensorboard" / "rewardtune"))
    acc.Reload()
    val = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
           if '"val"' in line]
    assert [e.value for e in acc.Scalars("val/accuracy")] == pytest.approx([r["accuracy"] for r in val])
    assert "loss=" in err.getvalue()


def test_report_to_may_change_on_resumption_and_older_runs_lack_it(tmp_path):
    import yaml

    from rewardtune.config import dump_config
    from rewardtune.run import _check_resume

    old = yaml.safe_load(dump_config(load_config(SFTConfig, None, [])))
    del old["report_to"]  # a run folder from before report_to existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert _check_resume(tmp_path, load_config(SFTConfig, None, [])) is None  # no checkpoint yet: a fresh start
    assert not (tmp_path / "config_changes.jsonl").exists()  # nothing changed
    _check_resume(tmp_path, load_config(SFTConfig, None, ["report_to=[tensorboard]"]))
    assert "report_to" in (tmp_path / "config_changes.jsonl").read_text()  # allowed, and recorded
