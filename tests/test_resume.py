"""Exact resumption: N steps straight == N/2 steps, stop, resume, N/2 steps (bit-identical), for every
training command; atomic checkpoints; config changes on resume; NaN steps skipped."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from rewardtune import checkpoint
from rewardtune.checkpoint import CheckpointError, complete_checkpoints
from rewardtune.config import ConfigError, load_config
from rewardtune.rewards import RewardError
from rewardtune.train.reward_model import RMConfig, train_reward_model
from rewardtune.train.rl_classifier import RLClassifierConfig, train_rl_classifier
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.rl_generate import train_rl_generate
from rewardtune.train.sft import SFTConfig, train_sft

WORDS = {"pos": "good great fun loved".split(), "neg": "bad awful dull hated".split()}
FILLER = "the film movie plot was very".split()
TIMES = ("train_s", "train_examples_per_s", "time_generate", "time_score", "time_update", "tokens_per_s")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.sample(FILLER, 3) + [rng.choice(WORDS[y])]), "label": y}
            for y in ["pos", "neg"] * 20]
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rng = random.Random(1)
    rows = [{"prompt": "", "chosen": " ".join(rng.sample(FILLER, 3) + [rng.choice(WORDS["pos"])]),
             "rejected": " ".join(rng.sample(FILLER, 3) + [rng.choice(WORDS["neg"])])} for _ in range(40)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"the film {w}"}) + "\n" for w in FILLER * 2))
    return path


def classifier_args(model, data, root, name):
    # 30 train rows / batch 8 → 4 steps per epoch (the last one short); 3 epochs = 12 steps.
    return [f"model.name={model}", f"data.path={data}", "data.val_fraction=0.25", "train.epochs=3",
            "train.batch_size=8", "train.lr=5e-3", "train.max_length=16", "train.log_every=1",
            f"runs_dir={root}", f"name={name}"]


def commands(tiny_encoder_dir, tiny_causal_lm_dir, labelled, pairs, prompts):
    """(config class, train function, overrides(root, name), total steps) per training command."""
    return {
        "sft": (SFTConfig, train_sft, lambda r, n: classifier_args(tiny_encoder_dir, labelled, r, n), 12),
        "rl-reinforce-ema": (RLClassifierConfig, train_rl_classifier, lambda r, n: classifier_args(
            tiny_encoder_dir, labelled, r, n) + ["rl.estimator=reinforce", "rl.baseline=ema", "rl.kl_coef=0.1"], 12),
        "rm-pairwise-lora": (RMConfig, train_reward_model, lambda r, n: [
            f"model.name={tiny_encoder_dir}", f"data.path={pairs}", "data.val_fraction=0.25", "train.epochs=2",
            "train.batch_size=8", "train.lr=5e-3", "train.max_length=16", "train.log_every=1", "rm.mode=pairwise",
            "model.lora.r=4", f"runs_dir={r}", f"name={n}"], 8),
        "rl-causal-lm-grpo": (GenRLConfig, train_rl_generate, lambda r, n: [
            f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
            "rl.samples_per_prompt=3", "rl.steps=6", "eval.prompts=2", "eval.every=2", "rl.lr=1e-2",
            "reward.normalize=running", "gen.max_new_tokens=5", f"runs_dir={r}", f"name={n}"], 6),
        "rl-causal-lm-ppo": (GenRLConfig, train_rl_generate, lambda r, n: [
            f"model.name={tiny_causal_lm_dir}", f"data.path={prompts}", "rl.algorithm=ppo", "rl.prompts_per_step=2",
            "rl.samples_per_prompt=2", "rl.steps=4", "eval.prompts=2", "eval.every=0", "rl.lr=1e-3",
            "gen.max_new_tokens=4", f"runs_dir={r}", f"name={n}"], 4),
    }


def rows(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in TIMES})
    return out


def final_weights(run_dir, total):
    folder = run_dir / "checkpoints" / f"step-{total:08d}"
    return {f.name: load_file(str(f)) for f in folder.glob("*.safetensors") if not f.name.startswith("rng")}


@pytest.mark.parametrize("command", ["sft", "rl-reinforce-ema", "rm-pairwise-lora", "rl-causal-lm-grpo", "rl-causal-lm-ppo"])
def test_stop_and_resume_is_bit_identical(command, tiny_encoder_dir, tiny_causal_lm_dir, labelled, pairs, prompts, tmp_path):
    cls, train, args, total = commands(tiny_encoder_dir, tiny_causal_lm_dir, labelled, pairs, prompts)[command]
    straight = train(load_config(cls, None, args(tmp_path, "straight")), show_progress=False)
    assert not straight.get("stopped")
    half = total // 2 + 1  # odd for the classifiers: mid-epoch, so the data position matters
    first = train(load_config(cls, None, args(tmp_path, "resumed") + [f"ckpt.stop_after={half}"]), show_progress=False)
    assert first["stopped"] and first["steps"] == half
    assert [c.name for c in complete_checkpoints(tmp_path / "resumed" / "checkpoints")] == [f"step-{half:08d}"]
    second = train(load_config(cls, None, args(tmp_path, "resumed") + ["ckpt.resume=auto"]), show_progress=False)
    assert not second.get("stopped")
    a, b = final_weights(tmp_path / "straight", total), final_weights(tmp_path / "resumed", total)
    assert a.keys() == b.keys() and a
    for f in a:
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k)
    assert rows(tmp_path / "straight") == rows(tmp_path / "resumed")
    mid = final_weights(tmp_path / "resumed", half)["model.safetensors"]
    assert any(not torch.equal(mid[k], a["model.safetensors"][k]) for k in mid)  # the second half did train


def test_resume_refuses_a_changed_meaning_and_records_harmless_changes(tiny_encoder_dir, labelled, tmp_path):
    args = classifier_args(tiny_encoder_dir, labelled, tmp_path, "run")
    train_sft(load_config(SFTConfig, None, args + ["ckpt.stop_after=2"]), show_progress=False)
    with pytest.raises(ConfigError, match=r"(?s)changes what is trained.*train.lr: 0.005 -> 0.001"):
        train_sft(load_config(SFTConfig, None, args + ["ckpt.resume=auto", "train.lr=1e-3"]), show_progress=False)
    out = train_sft(load_config(SFTConfig, None, args + ["ckpt.resume=auto", "train.log_every=2"]), show_progress=False)
    assert out["steps"] == 12
    change = json.loads((tmp_path / "run" / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["changed"]["train.log_every"] == [1, 2]


def test_resume_of_a_run_from_before_a_key_existed(tiny_encoder_dir, labelled, tmp_path):
    import yaml

    args = classifier_args(tiny_encoder_dir, labelled, tmp_path, "run")
    train_sft(load_config(SFTConfig, None, args + ["ckpt.stop_after=2"]), show_progress=False)
    saved = tmp_path / "run" / "config.yaml"
    cfg = yaml.safe_load(saved.read_text())
    del cfg["data"]["subset"], cfg["model"]["lora"]["base_dtype"]  # as an older rewardtune wrote it
    saved.write_text(yaml.safe_dump(cfg))
    # Those runs took the first rows: the new default (a random sample) would change them ...
    with pytest.raises(ConfigError, match=r"data.subset: None -> 'random'"):
        train_sft(load_config(SFTConfig, None, args + ["ckpt.resume=auto"]), show_progress=False)
    # ... the value that reproduces them resumes (float32 base weights are what they had)
    out = train_sft(load_config(SFTConfig, None, args + ["ckpt.resume=auto", "data.subset=first"]), show_progress=False)
    assert out["steps"] == 12


def test_new_run_in_a_used_folder_is_refused(tiny_encoder_dir, labelled, tmp_path):
    args = classifier_args(tiny_encoder_dir, labelled, tmp_path, "run") + ["train.epochs=1"]
    train_sft(load_config(SFTConfig, None, args), show_progress=False)
    with pytest.raises(FileExistsError, match="ckpt.resume=auto"):
        train_sft(load_config(SFTConfig, None, args), show_progress=False)


def test_half_written_checkpoint_is_ignored_and_old_ones_pruned(tiny_encoder_dir, labelled, tmp_path):
    args = classifier_args(tiny_encoder_dir, labelled, tmp_path, "run") + ["ckpt.every=2", "ckpt.keep_last=2"]
    train_sft(load_config(SFTConfig, None, args + ["ckpt.stop_after=7"]), show_progress=False)
    root = tmp_path / "run" / "checkpoints"
    assert [c.name for c in complete_checkpoints(root)] == ["step-00000006", "step-00000007"]
    # A crash while writing step 8: its folder is there, without COMPLETE; resuming must use step 7.
    (root / "step-00000008.tmp").mkdir()
    (root / "step-00000008.tmp" / "model.safetensors").write_bytes(b"half")
    fake = root / "step-00000009"
    fake.mkdir()  # renamed but never marked complete (cannot happen with os.replace, tolerated anyway)
    out = train_sft(load_config(SFTConfig, None, args + ["ckpt.resume=auto"]), show_progress=False)
    assert out["steps"] == 12
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == list(range(1, 13))  # each step once


def test_checkpoint_holds_no_pickled_code(tiny_encoder_dir, labelled, tmp_path):
    args = classifier_args(tiny_encoder_dir, labelled, tmp_path, "run") + ["ckpt.stop_after=3"]
    train_sft(load_config(SFTConfig, None, args), show_progress=False)
    folder = complete_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    for f in folder.glob("*.pt"):
        torch.load(f, weights_only=True)  # raises on anything but tensors and plain containers
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "optimizer.pt", "scheduler.pt", "state.json",
                                                   "rng-0.safetensors", "rng-0.json", "config.yaml", "COMPLETE"}


def test_nan_loss_is_skipped_then_stops_after_too_many(tiny_encoder_dir, labelled, tmp_path, monkeypatch):
    from rewardtune.checkpoint import NonFiniteError
    from rewardtune.train import sft

    real = sft.F.cross_entropy
    calls = {"n": 0}

    def flaky(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] in (3, 6, 7, 8) else loss  # steps 3, then 6-8 in a row

    monkeypatch.setattr(sft.F, "cross_entropy", flaky)
    args = classifier_args(tiny_encoder_dir, labelled, tmp_path, "run") + ["ckpt.every=4"]
    with pytest.raises(NonFiniteError, match=r"3 consecutive steps.*step 8\); stopped: the newest checkpoint, "
                                             r".*step-00000004, is from before them"):
        train_sft(load_config(SFTConfig, None, args), show_progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in logged if r["split"] == "skipped"]
    assert [r["step"] for r in skipped] == [3, 6, 7, 8] and len(skipped[0]["batch_ids"]) == 8
    assert [c.name for c in complete_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000004"]


@pytest.mark.parametrize("error,kind", [(RuntimeError("PytorchStreamWriter failed writing file"), CheckpointError),
                                        (TypeError("cannot pickle 'generator' object"), TypeError)])
def test_a_failed_checkpoint_write_is_a_checkpoint_error_and_a_bug_is_itself(tmp_path, monkeypatch, error, kind):
    """torch.save's and safetensors' disk-full errors are not OSError: a RuntimeError from a write is reported as a
    CheckpointError (with its type), while a bug such as a TypeError keeps its own type and traceback."""
    from rewardtune.checkpoint import CheckpointSettings, Checkpointer
    from rewardtune.stop import StopGuard
    from rewardtune.run import start_run
    from rewardtune.train.gen_config import GenRLConfig

    cfg = load_config(GenRLConfig, None, [f"runs_dir={tmp_path}", "name=w", "data.path=demo-prompts"])
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed)
    model = torch.nn.Linear(2, 2)
    cp = Checkpointer(run, CheckpointSettings(), {"model": model}, torch.optim.SGD(model.parameters(), lr=0.1), None,
                      StopGuard(0))

    def fails(*_, **__):
        raise error
    monkeypatch.setattr(checkpoint, "save_checkpoint", fails)
    with pytest.raises(kind, match=f"{type(error).__name__}: {error}" if kind is CheckpointError else str(error)):
        cp.save(1, {"step": 1})
    assert not list((tmp_path / "w" / "checkpoints").glob("*.tmp"))


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tiny_encoder_dir, labelled, tmp_path, monkeypatch):
    import errno

    from rewardtune import checkpoint
    from rewardtune.checkpoint import CheckpointError

    real = checkpoint.save_checkpoint

    def full_at_step_8(root, step, *a, **k):
        if step == 8:
            (checkpoint.tmp_folder(root, step) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(root, step, *a, **k)

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_at_step_8)
    args = classifier_args(tiny_encoder_dir, labelled, tmp_path, "run") + ["ckpt.every=4"]
    with pytest.raises(CheckpointError, match="step 8.*No space left.*step-00000004, is intact"):
        train_sft(load_config(SFTConfig, None, args), show_progress=False)
    root = tmp_path / "run" / "checkpoints"
    assert [c.name for c in complete_checkpoints(root)] == ["step-00000004"] and not list(root.glob("*.tmp"))
    monkeypatch.setattr(checkpoint, "save_checkpoint", real)
    out = train_sft(load_config(SFTConfig, None, args + ["ckpt.resume=auto"]), show_progress=False)
    assert out["steps"] == 12


def test_unwritable_run_folder_fails_before_training(tiny_encoder_dir, labelled, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot create a folder under a file
    with pytest.raises(OSError, match="not writable.*choose another"):
        train_sft(load_config(SFTConfig, None, classifier_args(tiny_encoder_dir, labelled, blocker, "run")),
                  show_progress=False)


def test_cli_resume_of_a_causal_lm_run_finds_its_policy_kind(tiny_causal_lm_dir, prompts, tmp_path, capsys):
    from rewardtune.cli import main

    args = ["rl", "policy=causal-lm", f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}",
            "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.steps=3", "eval.prompts=2", "eval.every=0",
            "gen.max_new_tokens=4", f"runs_dir={tmp_path}", "name=lm", "ckpt.stop_after=1"]
    assert main(args) == 0 and '"stopped": true' in capsys.readouterr().out
    assert main(["rl", "--resume", str(tmp_path / "lm")]) == 0  # policy=causal-lm comes from its config.yaml
    out = capsys.readouterr().out
    assert "resumed from" in out and '"steps": 3' in out
    assert main(["rl", "--resume", str(tmp_path / "lm"), "--config", "x.yaml"]) == 2  # one or the other


def test_a_generative_run_from_before_memory_only_keys_existed_resumes(tiny_causal_lm_dir, prompts, tmp_path):
    import yaml

    args = [f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
            "rl.samples_per_prompt=2", "rl.steps=2", "eval.prompts=2", "eval.every=0", "gen.max_new_tokens=4",
            f"runs_dir={tmp_path}", "name=lm"]
    train_rl_generate(load_config(GenRLConfig, None, args + ["ckpt.stop_after=1"]), show_progress=False)
    saved = tmp_path / "lm" / "config.yaml"
    cfg = yaml.safe_load(saved.read_text())
    del cfg["gen"]["fast_decode"], cfg["runtime"]["inference_batch_size"]  # as an older rewardtune wrote it
    saved.write_text(yaml.safe_dump(cfg))
    out = train_rl_generate(load_config(GenRLConfig, None, args + ["ckpt.resume=auto", "runtime.inference_batch_size=2"]),
                            show_progress=False)
    assert out["steps"] == 2  # neither changes what is trained
    with pytest.raises(ConfigError, match=r"rl.lr"):  # while a real change is still refused
        train_rl_generate(load_config(GenRLConfig, None, args + ["ckpt.resume=auto", "rl.lr=0.5"]), show_progress=False)


def assert_same_run(straight, other, total):
    """Bit-identical final weights and the same metrics rows (timings aside)."""
    a, b = final_weights(straight, total), final_weights(other, total)
    assert a.keys() == b.keys() and a
    for f in a:
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k)
    assert rows(straight) == rows(other)


FLAKY = {"calls": 0, "fail_at": None, "how": "nan"}


def flaky_reward(prompts, completions, **_):
    """Word counts; at call number FLAKY["fail_at"], NaN for the first completion or one value too few."""
    FLAKY["calls"] += 1
    out = [float(len(c.split())) for c in completions]
    if FLAKY["calls"] == FLAKY["fail_at"]:
        return [float("nan")] + out[1:] if FLAKY["how"] == "nan" else out[1:]
    return out


def fail_then_resume(train, cls, args, tmp_path, fail_at, match, total, how="nan"):
    """A straight run; the same run with the reward failing at call `fail_at` (a RewardError matching `match`); that
    run resumed once the reward is fixed, which must equal the straight one. → (the straight run's scoring calls,
    the failed run's complete checkpoints)."""
    FLAKY.update(calls=0, fail_at=None, how=how)
    train(load_config(cls, None, args("straight")), show_progress=False)
    calls = FLAKY["calls"]
    FLAKY.update(calls=0, fail_at=fail_at)
    with pytest.raises(RewardError, match=match):
        train(load_config(cls, None, args("failed")), show_progress=False)
    kept = [c.name for c in complete_checkpoints(tmp_path / "failed" / "checkpoints")]
    FLAKY.update(fail_at=None)
    train(load_config(cls, None, args("failed") + ["ckpt.resume=auto"]), show_progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "failed", total)
    return calls, kept


def generative_args(model, prompts, root, eval_every):
    return lambda name: [f"model.name={model}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
                         "rl.samples_per_prompt=3", "rl.steps=4", "eval.prompts=2", f"eval.every={eval_every}",
                         "rl.lr=1e-2", "reward.functions=[test_resume:flaky_reward]", "gen.max_new_tokens=5",
                         f"runs_dir={root}", f"name={name}"]


@pytest.mark.parametrize("how,match", [("nan", "returned nan"), ("short", "returned 5 values for 6")])
def test_a_reward_failing_mid_run_keeps_the_steps_before_and_resumes_exactly(tiny_causal_lm_dir, prompts, tmp_path,
                                                                              how, match):
    """ckpt.every=0 (no periodic checkpoints): a reward that fails while scoring step 3 must not lose steps 1–2. The
    state after step 2 is checkpointed with the random state of step 3's start, so the resumed run equals a run that
    never failed."""
    # calls: 1, the step-0 evaluation; 2, 3, 4: steps 1, 2, 3
    _, kept = fail_then_resume(train_rl_generate, GenRLConfig, generative_args(tiny_causal_lm_dir, prompts, tmp_path, 0),
                               tmp_path, 4, rf"(?s){match}.*; while scoring step 3; the state after step 2 is checkpointed "
                                            r"in .*step-00000002.*resume with --resume", 4, how)
    assert kept == ["step-00000002"]


def test_a_classifier_reward_failing_mid_epoch_keeps_the_steps_before(tiny_encoder_dir, labelled, tmp_path):
    """The shared epoch loop (classifier rl): the reward fails while scoring step 6 (mid-epoch 2, ckpt.every=0); the
    state after step 5 is checkpointed with its data position and step 6's random state; the resumed run equals a
    run that never failed."""
    args = lambda name: classifier_args(tiny_encoder_dir, labelled, tmp_path, name) + [  # noqa: E731
        "rl.estimator=reinforce", "rl.baseline=ema", "reward.functions=[test_resume:flaky_reward]"]
    calls, _ = fail_then_resume(train_rl_classifier, RLClassifierConfig, args, tmp_path, 6,
                                r"(?s)returned nan.*; while scoring step 6; the state after step 5 is "
                                r"checkpointed in .*step-00000005", 12)
    assert calls == 12  # one scoring call per step


def test_a_ppo_checkpoint_from_before_the_kl_settings_applied_goes_on_as_it_ran(tiny_causal_lm_dir, prompts, tmp_path,
                                                                                 capsys):
    """Before STATE_FORMAT 2, PPO put the k1 KL in the reward whatever rl.kl_mode / rl.kl_estimator said, and its
    config.yaml recorded the old defaults (loss, k3). Such a checkpoint resumes with the k1 penalty in the reward:
    bit-identical to a run that used it throughout, across a second resumption too (config.yaml is rewritten). Its
    held-out best, kept on the normalised scale, is moved aside."""
    import yaml

    def args(name):
        return [f"model.name={tiny_causal_lm_dir}", f"data.path={prompts}", "rl.algorithm=ppo", "rl.prompts_per_step=2",
                "rl.samples_per_prompt=2", "rl.steps=4", "eval.prompts=2", "eval.every=0", "rl.lr=1e-3",
                "rl.kl_coef=0.2", "reward.normalize=running", "gen.max_new_tokens=4", f"runs_dir={tmp_path}",
                f"name={name}"]
    train_rl_generate(load_config(GenRLConfig, None, args("straight")), show_progress=False)  # auto: reward, k1
    train_rl_generate(load_config(GenRLConfig, None, args("old") + ["ckpt.stop_after=2"]), show_progress=False)
    run_dir, ckpt = tmp_path / "old", tmp_path / "old" / "checkpoints" / "step-00000002"
    state = json.loads((ckpt / "state.json").read_text())
    del state["format"]  # as the old code wrote it
    (ckpt / "state.json").write_text(json.dumps(state))
    old_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    old_cfg["rl"].update(kl_mode="loss", kl_estimator="k3")  # the old defaults, which PPO ignored
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old_cfg, sort_keys=False))
    (ckpt / "config.yaml").write_text(yaml.safe_dump(old_cfg, sort_keys=False))
    capsys.readouterr()
    train_rl_generate(load_config(GenRLConfig, run_dir / "config.yaml", ["ckpt.resume=auto", "ckpt.stop_after=3"]),
                      show_progress=False)  # resumed, then paused again: the second resumption must keep k1 too
    out = capsys.readouterr().out
    assert "this PPO run started when PPO always put the k1 KL in the reward" in out
    assert "checkpoints/best-normalised-reward" in out and (run_dir / "checkpoints" / "best-normalised-reward").is_dir()
    assert "kl_mode: reward" in (run_dir / "config.yaml").read_text()  # rewritten, the change recorded
    assert '"rl.kl_mode": ["loss", "reward"]' in (run_dir / "config_changes.jsonl").read_text()
    train_rl_generate(load_config(GenRLConfig, run_dir / "config.yaml", ["ckpt.resume=auto", "ckpt.stop_after=0"]),
                      show_progress=False)
    assert "PPO always put" not in capsys.readouterr().out  # a format-2 checkpoint: nothing to translate
    a, b = final_weights(tmp_path / "straight", 4), final_weights(run_dir, 4)
    for f in a:
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k)
    assert [r for r in rows(tmp_path / "straight") if r["split"] == "train"] == \
        [r for r in rows(run_dir) if r["split"] == "train"]


def test_a_reward_failing_in_held_out_evaluation_is_evaluated_again_on_resume(tiny_causal_lm_dir, prompts, tmp_path):
    """The reward fails in the evaluation after step 2 (ckpt.every=0): the state after step 2 is checkpointed, the
    resumed run evaluates step 2 first and goes on; weights and every row equal a run that never failed."""
    # calls: evaluation 0, steps 1, 2, evaluation 2
    fail_then_resume(train_rl_generate, GenRLConfig, generative_args(tiny_causal_lm_dir, prompts, tmp_path, 2), tmp_path,
                     4, r"(?s)returned nan.*while evaluating after step 2; the state after step 2 is "
                        r"checkpointed in .*step-00000002 and a resumed run evaluates it first", 4)
    assert [r["step"] for r in rows(tmp_path / "failed") if r["split"] == "eval"] == [0, 2, 4]
