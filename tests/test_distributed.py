"""Multi-process equivalence: 2 CPU processes (gloo) × batch b train the same weights as 1 process × batch 2b.

`train.batch_size` is the global batch (summed over processes), so the same `rewardtune sft` /
`rewardtune rl` command line is launched once as a plain single process and once with 2 processes
(torchrun; `accelerate launch` for rl too). After one epoch (6 optimiser steps) the saved
checkpoints must agree to float tolerance, and must differ from the starting weights (so the
comparison can fail). tests/ddp_worker.py runs the unchanged CLI and checks that accelerate really
formed a 2-process group.

The model is a tiny BERT with dropout off: dropout masks differ between 1 and 2 processes, which
would make the runs differ for a reason unrelated to gradient synchronisation. Gradient clipping is
off to isolate the check (clipping the global norm is equivalent under DDP too).
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import WORDS, make_tokenizer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
TIMEOUT_S = 240  # a desynchronised process group hangs (gloo waits 30 min): fail instead

# 32 rows per label, val_fraction 0.25 → 48 train rows → 6 full global batches of 8 (4 rows per process).
N_ROWS, BATCH, VAL_FRACTION = 64, 8, 0.25
STEPS = (N_ROWS - 2 * round(N_ROWS / 2 * VAL_FRACTION)) // BATCH
COMMON = [f"train.batch_size={BATCH}", "train.epochs=1", "train.lr=1e-3", "train.max_grad_norm=0",
          "train.max_length=24", "train.log_every=1", f"data.val_fraction={VAL_FRACTION}", "seed=0"]
EXTRA = {"sft": [], "rl": ["rl.estimator=expected", "rl.kl_coef=0.1", "rl.entropy_coef=0.01"],
         "rm": ["rm.mode=pairwise", "rm.center_coef=0.5"]}  # the centring term's mean is the global batch's
CLI = {"sft": ["sft"], "rl": ["rl"], "rm": ["rm", "train"]}

# Only the float32 summation order differs with 2 processes (half batches, padding to the longer
# half, gloo's all-reduce); observed: ≤ 2.2e-7 after 6 AdamW steps at lr 1e-3. The weights move by
# ~3.5e-3 from their start; a per-step error (a wrong LR, unsynchronised or mis-weighted gradients)
# gives differences of 1e-4 … 1e-3.
ATOL = 1e-5


@pytest.fixture(scope="module")
def deterministic_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT like `tiny_encoder_dir`, but without dropout."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tok = make_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    out = tmp_path_factory.mktemp("tiny-bert-nodropout")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reviews_file(tmp_path_factory) -> Path:
    """64 labelled texts of 4–15 words (so batches need padding), 32 per label."""
    rng = random.Random(0)
    pos, neg = ["good", "great", "loved", "fun", "brilliant"], ["bad", "awful", "boring", "hated", "dull"]
    rows = []
    for i in range(N_ROWS):
        label = "pos" if i % 2 == 0 else "neg"
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(pos if label == "pos" else neg))
        rows.append({"text": " ".join(words), "label": label})
    path = tmp_path_factory.mktemp("data") / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """64 prompt/chosen/rejected rows of 4–15 words: the chosen text holds a positive word, the rejected a negative one."""
    rng = random.Random(1)
    rows = []
    for _ in range(N_ROWS):
        texts = []
        for good in (True, False):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
            words.insert(rng.randrange(len(words) + 1), rng.choice(["good", "great", "fun"] if good else ["bad", "dull"]))
            texts.append(" ".join(words))
        rows.append({"prompt": rng.choice(WORDS), "chosen": texts[0], "rejected": texts[1]})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
        HF_ENDPOINT=env.get("HF_ENDPOINT", "http://127.0.0.1:9"), HF_HUB_OFFLINE="1",
        # No ACCELERATE_USE_CPU: start_run itself must form the CPU (gloo) process group on a machine
        # without a GPU, or each launched process would silently train alone (ddp_worker catches that).
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: str, nproc: int, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    if nproc == 1:
        cmd = [sys.executable, str(WORKER)]
    elif launcher == "torchrun":  # --standalone: a local rendezvous on a free port
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(WORKER)]
    else:  # accelerate launch starts several local CPU processes only via torch elastic (--multi_gpu) or mpirun
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={nproc}",
               "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
               f"--main_process_port={_free_port()}", str(WORKER)]
    fh = open(log, "w", encoding="utf-8")
    proc = subprocess.Popen(cmd + args, cwd=REPO, env={**_env(), **(env or {})}, stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log_file = fh  # type: ignore[attr-defined]
    return proc


def _wait(proc: subprocess.Popen, log: Path) -> None:
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the launcher and its workers (their own session, started above)
        proc.wait()
    finally:
        proc.log_file.close()  # type: ignore[attr-defined]
    assert proc.returncode == 0, f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-6000:]}"


def _wait_failed(proc: subprocess.Popen, log: Path) -> str:
    """Wait for a launch that must fail, killing it (and its workers) if it hangs instead; → its output."""
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail(f"{proc.args} hung for {TIMEOUT_S} s instead of failing:\n{log.read_text()[-4000:]}")
    finally:
        proc.log_file.close()  # type: ignore[attr-defined]
    assert proc.returncode != 0, f"{proc.args} should have failed:\n{log.read_text()[-4000:]}"
    return log.read_text()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _train_rows(run_dir: Path, split: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == split]


@pytest.mark.parametrize("command,launcher", [("sft", "torchrun"), ("rl", "torchrun"), ("rl", "accelerate"),
                                              ("rm", "torchrun")])
def test_two_processes_match_one_process_with_the_same_global_batch(command, launcher, tmp_path,
                                                                   deterministic_encoder_dir, reviews_file, pairs_file):
    t0 = time.time()
    runs = tmp_path / "runs"
    data = pairs_file if command == "rm" else reviews_file
    base = COMMON + EXTRA[command] + [f"model.name={deterministic_encoder_dir}", f"data.path={data}",
                                      f"runs_dir={runs}"]
    procs = {n: _launch(launcher, n, [str(tmp_path / f"info{n}.json"), *CLI[command], *base, f"name=np{n}"],
                        tmp_path / f"log{n}.txt")
             for n in (1, 2)}  # both at once: the tiny model leaves cores to spare
    for n, p in procs.items():
        _wait(p, tmp_path / f"log{n}.txt")

    infos = {n: json.loads((tmp_path / f"info{n}.json").read_text()) for n in (1, 2)}
    assert infos[1]["num_processes"] == 1
    assert infos[2] == {"num_processes": 2, "distributed_type": "MULTI_CPU", "backend": "gloo"}

    # Same number of optimiser steps and the same learning rate at each of them.
    train1, train2 = _train_rows(runs / "np1"), _train_rows(runs / "np2")
    assert [r["step"] for r in train1] == [r["step"] for r in train2] == list(range(1, STEPS + 1))
    # The logged loss is over both processes' shares (equal here), so it is the global batch's, as with one process.
    loss1, loss2 = [r["loss"] for r in train1], [r["loss"] for r in train2]
    assert loss2 == pytest.approx(loss1, rel=1e-4, abs=1e-6), (loss1, loss2)
    lr1, lr2 = [r["lr"] for r in train1], [r["lr"] for r in train2]
    assert lr2 == pytest.approx(lr1, rel=1e-9), (
        f"learning rates per step: 1 process {lr1}, 2 processes {lr2}; accelerate steps a prepared scheduler "
        "num_processes times per call unless Accelerator(step_scheduler_with_optimizer=False)")

    # The validation rows (each process predicts a share: the classifiers' report, the reward model's metrics) are
    # one process's. rl evaluates its start model too (step 0), then the end of the epoch.
    val1, val2 = _train_rows(runs / "np1", "val"), _train_rows(runs / "np2", "val")
    assert [r["step"] for r in val1] == [r["step"] for r in val2] == ([0, STEPS] if command == "rl" else [STEPS])
    for a, b in zip(val1, val2):
        assert a.keys() == b.keys()
        numbers = [{k: v for k, v in row.items() if isinstance(v, float)} for row in (a, b)]
        assert numbers[0] and numbers[1] == pytest.approx(numbers[0], rel=1e-4, abs=1e-5), (val1, val2)

    # Both kept the same best (sft, rm: the end of the one epoch; rl: the start or the end), and the weights after the
    # last step (its checkpoint) are the same.
    metas = [json.loads((runs / f"np{n}" / "checkpoints" / "best" / "rewardtune.json").read_text()) for n in (1, 2)]
    assert metas[0]["step"] == metas[1]["step"] in ((0, STEPS) if command == "rl" else (STEPS,))
    last = f"step-{STEPS:08d}"
    one = _weights(runs / "np1" / "checkpoints" / last)
    two = _weights(runs / "np2" / "checkpoints" / last)
    assert one.keys() == two.keys()
    diffs = {k: (one[k] - two[k]).abs().max().item() for k in one}
    worst = max(diffs, key=diffs.get)

    # Training moved the encoder (which started from the saved tiny BERT) far beyond the tolerance.
    start = {f"bert.{k}": v for k, v in _weights(deterministic_encoder_dir).items()}
    moved = {k: (one[k] - start[k]).abs().max().item() for k in one if k in start}
    print(f"\n{command} ({launcher}): max |1 proc - 2 procs| = {diffs[worst]:.3g} ({worst}); "
          f"largest move from the start {max(moved.values()):.3g}; {time.time() - t0:.1f} s")
    assert len(moved) >= len(one) - 2, f"unexpected parameter names: {sorted(set(one) - set(moved))}"
    assert max(moved.values()) > 100 * ATOL
    assert sum(m > 10 * ATOL for m in moved.values()) >= len(moved) // 2, moved

    for k in one:
        assert torch.allclose(one[k], two[k], rtol=0, atol=ATOL), f"{k}: max abs diff {diffs[k]:.3g} > {ATOL}"


def test_generative_rl_runs_on_two_processes_with_sharded_prompt_groups(tmp_path, tiny_causal_lm_dir):
    """`rl policy=causal-lm` under torchrun: each process samples its own whole prompt groups, the
    logged reward covers the global batch, and the checkpoint written by the main process resumes."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the film was {w}"}) + "\n" for w in WORDS[:12]))
    runs = tmp_path / "runs"
    args = ["rl", "policy=causal-lm", f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}",
            "rl.prompts_per_step=4", "rl.samples_per_prompt=2", "rl.steps=3", "eval.prompts=2", "eval.every=0",
            "rl.lr=1e-2", "gen.max_new_tokens=4", f"runs_dir={runs}", "name=lm2", "ckpt.every=1",
            "rl.aggregation=token_mean"]  # token_mean: its denominator is the global token count
    proc = _launch("torchrun", 2, [str(tmp_path / "info.json"), *args], tmp_path / "log.txt")
    _wait(proc, tmp_path / "log.txt")
    assert json.loads((tmp_path / "info.json").read_text())["num_processes"] == 2
    rows = _train_rows(runs / "lm2")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)
    ckpt = runs / "lm2" / "checkpoints" / "step-00000003"
    assert (ckpt / "rng-0.json").exists() and (ckpt / "rng-1.json").exists()  # each process's own RNG
    assert (runs / "lm2" / "checkpoints" / "final" / "adapter_model.safetensors").exists()

    # PPO: the advantage whitening sums its statistics over both processes (an all-reduce per rollout)
    ppo = _launch("torchrun", 2, [str(tmp_path / "info2.json"), *args[:-2], "rl.algorithm=ppo", "rl.steps=2",
                                  "name=ppo2"], tmp_path / "log2.txt")
    _wait(ppo, tmp_path / "log2.txt")
    rows = _train_rows(runs / "ppo2")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)

    bad = _launch("torchrun", 2, [str(tmp_path / "info3.json"), *args[:-2], "rl.prompts_per_step=3", "name=odd"],
                  tmp_path / "log3.txt")
    assert "multiple of the 2 processes" in _wait_failed(bad, tmp_path / "log3.txt")

    # The same name again: every process finds the folder taken and says so (none is left waiting for the other).
    again = _launch("torchrun", 2, [str(tmp_path / "info4.json"), *args], tmp_path / "log4.txt")
    assert _wait_failed(again, tmp_path / "log4.txt").count("already exists and is not empty") == 2
    # A runs_dir the main process cannot write to: the other process hears of it rather than waiting at a barrier.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    unwritable = _launch("torchrun", 2, [str(tmp_path / "info5.json"), *args[:-3], f"runs_dir={blocker}", "name=x"],
                         tmp_path / "log5.txt")
    log = _wait_failed(unwritable, tmp_path / "log5.txt")
    assert "is not writable" in log and "the main process could not write the run folder" in log


def test_ppo_value_heads_stay_equal_over_two_real_processes(tiny_causal_lm_dir, tmp_path):
    """DDP does not wrap PPO's value head: after one PPO step on different rollouts the two processes' heads
    are equal because ppo_step averages its gradients, and differ without that (tests/ppo_head_worker.py)."""
    out, log = tmp_path / "out.json", tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "ppo_head_worker.py"), str(out), str(tiny_causal_lm_dir), str(tmp_path / "runs")]
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_file = fh  # type: ignore[attr-defined]
        _wait(proc, log)
    res = json.loads(out.read_text())
    (equal, moved), (equal_alone, moved_alone) = res["averaged"], res["alone"]
    assert res["world"] == 2 and moved > 0 and moved_alone > 0  # the heads were trained
    assert equal and not equal_alone


@pytest.mark.parametrize("baseline", ["mean", "ema"])
def test_classifier_reinforce_baseline_is_global_over_two_real_processes(baseline, tmp_path):
    """gather_rows over gloo with 3 and 2 rows: the two processes' advantages are one process's advantages
    of the whole batch, and their EMAs agree with it (tests/gather_worker.py)."""
    out, log = tmp_path / "out.json", tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "gather_worker.py"), str(out), baseline]
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_file = fh  # type: ignore[attr-defined]
        _wait(proc, log)
    res = json.loads(out.read_text())
    assert res["world"] == 2
    assert res["shards"] == res["whole"]
    assert res["whole"][0][1] == [0.0, 0.0]  # the dropped row
    assert res["ema"] == pytest.approx([res["ema"][2]] * 3)
    if baseline == "mean":
        assert res["whole"][1][0] == [-0.375, 0.625]  # kept mean of step 2: (1 + 2 + 0 + 0) / 8


def test_an_epoch_ending_in_a_filler_share_logs_over_both_processes(tmp_path, deterministic_encoder_dir, reviews_file):
    """48 training rows in global batches of 47: the second batch has one row, so the second process holds a
    weight-0 filler share. Its logged row must neither hang the all-reduce (the same keys on both processes) nor
    count: the logged loss equals one process's on the same batches, and no row is counted as dropped."""
    runs = tmp_path / "runs"
    args = ["rl", *[a.replace(f"train.batch_size={BATCH}", "train.batch_size=47") for a in COMMON],
            *EXTRA["rl"], f"model.name={deterministic_encoder_dir}", f"data.path={reviews_file}", f"runs_dir={runs}"]
    procs = {n: _launch("torchrun", n, [str(tmp_path / f"info{n}.json"), *args, f"name=np{n}"], tmp_path / f"log{n}.txt")
             for n in (1, 2)}
    for n, p in procs.items():
        _wait(p, tmp_path / f"log{n}.txt")
    train1, train2 = _train_rows(runs / "np1"), _train_rows(runs / "np2")
    assert [r["step"] for r in train2] == [1, 2]
    assert [r["loss"] for r in train2] == pytest.approx([r["loss"] for r in train1], rel=1e-4, abs=1e-6)
    assert all(r["reward_dropped"] == 0 for r in train2)


def _one_and_two_processes(worker: str, model_dir: Path, tmp_path: Path) -> dict[int, dict]:
    """tests/<worker> under torchrun with 1, then 2 processes: {n: the JSON it wrote}."""
    res = {}
    for n in (1, 2):
        out, log = tmp_path / f"out{n}.json", tmp_path / f"log{n}.txt"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               str(REPO / "tests" / worker), str(out), str(model_dir), str(tmp_path / f"runs{n}")]
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            proc.log_file = fh  # type: ignore[attr-defined]
            _wait(proc, log)
        res[n] = json.loads(out.read_text())
    return res


def test_generative_rl_gradient_over_two_processes_is_one_process_gradient(tiny_causal_lm_dir, tmp_path):
    """The gradient an update steps with (after DDP's all-reduce) is the same with 1 and 2 processes, for
    token_mean (a global token count), the per-sequence mean and PPO, with micro-batches (tests/gen_ddp_worker.py);
    and micro-batches add no all-reduce: only a step's last micro-batch synchronises (DDP's no_sync)."""
    res = _one_and_two_processes("gen_ddp_worker.py", tiny_causal_lm_dir, tmp_path)
    assert res[1]["world"] == 1 and res[2]["world"] == 2
    one, two = res[1]["cases"], res[2]["cases"]
    for case in one:
        g1, g2 = one[case]["grads"], two[case]["grads"]
        assert sorted(g1) == sorted(g2) and len(g1) >= 8, case  # the LoRA matrices (and PPO's value head)
        for k in g1:
            a, b = torch.tensor(g1[k]), torch.tensor(g2[k])
            assert a.abs().max() > 1e-4, (case, k)  # a gradient that could be wrong
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (case, k, float((a - b).abs().max()))
    calls = {case: two[case]["allreduce_calls"] for case in two}
    assert calls["token_mean"] >= 1 and len(set(calls.values())) == 1, calls  # 4 / 2 / 4 micro-batches: one sync each


def test_a_reward_failing_on_one_process_stops_both_with_a_checkpoint_that_resumes_exactly(tiny_causal_lm_dir, tmp_path):
    """Generative RL on 2 processes, ckpt.every=0: the reward returns NaN on process 1 only, while scoring step 2
    (tests/rank_reward.py). Both processes stop at once (before, process 0 waited forever in the next gather), both
    save the state after step 1 with their random states of step 2's start, and the run resumed with a working
    reward ends with the adapter and train rows of a run that never failed."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the film was {w}"}) + "\n" for w in WORDS[:12]))
    runs = tmp_path / "runs"
    args = lambda name: ["rl", "policy=causal-lm", f"model.name={tiny_causal_lm_dir}", "model.lora.r=4",  # noqa: E731
                         f"data.path={prompts}", "rl.prompts_per_step=4", "rl.samples_per_prompt=2", "rl.steps=3",
                         "eval.prompts=2", "eval.every=0", "rl.lr=1e-2", "reward.functions=[rank_reward:words]",
                         "gen.max_new_tokens=4", f"runs_dir={runs}", f"name={name}"]
    logs = {n: tmp_path / f"{n}.txt" for n in ("straight", "failed", "resumed")}
    _wait(_launch("torchrun", 2, [str(tmp_path / "i1.json"), *args("straight")], logs["straight"]), logs["straight"])
    # calls on each process: 1, the step-0 evaluation; 2, 3: steps 1, 2
    failed = _launch("torchrun", 2, [str(tmp_path / "i2.json"), *args("failed")], logs["failed"],
                     {"FAIL_RANK": "1", "FAIL_AT": "3"})
    out = _wait_failed(failed, logs["failed"])
    assert "returned nan" in out and "the reward failed on process 1" in out, out[-4000:]
    assert out.count("while scoring step 2; the state after step 1 is checkpointed") == 2, out[-4000:]
    step1 = runs / "failed" / "checkpoints" / "step-00000001"
    assert (step1 / "rng-0.json").exists() and (step1 / "rng-1.json").exists()
    _wait(_launch("torchrun", 2, [str(tmp_path / "i3.json"), *args("failed"), "ckpt.resume=auto"], logs["resumed"]),
          logs["resumed"])
    untimed = lambda name: [{k: v for k, v in r.items() if not k.startswith(("time", "tokens_per_s"))}  # noqa: E731
                            for r in _train_rows(runs / name)]
    assert untimed("failed") == untimed("straight") and len(untimed("straight")) == 3
    final = lambda name: _adapter(runs / name / "checkpoints" / "final")  # noqa: E731
    a, b = final("straight"), final("failed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_a_classifier_reward_failing_on_one_process_stops_both_with_a_checkpoint(tmp_path, deterministic_encoder_dir,
                                                                                 reviews_file):
    """The shared epoch loop (classifier rl) on 2 processes: the reward returns NaN on process 1 only, while scoring
    step 3; both processes stop and save the state after step 2 (each with its own random state)."""
    runs = tmp_path / "runs"
    args = ["rl", *COMMON, "rl.estimator=reinforce", "reward.functions=[rank_reward:words]",
            f"model.name={deterministic_encoder_dir}", f"data.path={reviews_file}", f"runs_dir={runs}", "name=cls"]
    proc = _launch("torchrun", 2, [str(tmp_path / "info.json"), *args], tmp_path / "log.txt",
                   {"FAIL_RANK": "1", "FAIL_AT": "3"})
    out = _wait_failed(proc, tmp_path / "log.txt")
    assert "returned nan" in out and "the reward failed on process 1" in out, out[-4000:]
    assert out.count("while scoring step 3; the state after step 2 is checkpointed") == 2, out[-4000:]
    step2 = runs / "cls" / "checkpoints" / "step-00000002"
    assert (step2 / "rng-0.json").exists() and (step2 / "rng-1.json").exists()


def test_a_checkpoint_write_failing_on_one_process_fails_on_both(tmp_path):
    """Disk full on one process while saving: every process raises CheckpointError at once, saying which failed,
    and the next save goes through on both (tests/ckpt_worker.py). Before, the other process waited at the save's
    next barrier until the test's timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "ckpt_worker.py"), str(tmp_path / "out"), str(tmp_path / "runs")]
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_file = fh  # type: ignore[attr-defined]
        _wait(proc, tmp_path / "log.txt")
    said = [json.loads((tmp_path / f"out-{r}.json").read_text()) for r in (0, 1)]
    assert "No space left on device" in said[1]["1"] and "it failed on process 1" in said[0]["1"]
    assert "No space left on device" in said[0]["2"] and "it failed on process 0" in said[1]["2"]
    assert all("no earlier checkpoint exists" in s[k] for s in said for k in ("1", "2"))
    assert said[0]["3"] == said[1]["3"] == "saved"
    step3 = tmp_path / "runs" / "ckpt" / "checkpoints" / "step-00000003"
    assert (step3 / "COMPLETE").exists() and (step3 / "rng-1.json").exists()
    assert not list((tmp_path / "runs" / "ckpt" / "checkpoints").glob("*.tmp"))  # the failed saves left nothing


def test_held_out_evaluation_over_two_processes_equals_one_process(tiny_causal_lm_dir, tmp_path):
    """Each process evaluates its share of the held-out prompts (2 and 3 of 5) with the draws one process would give
    them; the metrics, over both shares, equal one process's, greedy and sampled (tests/eval_worker.py)."""
    res = _one_and_two_processes("eval_worker.py", tiny_causal_lm_dir, tmp_path)
    assert res[1]["world"] == 1 and res[2]["world"] == 2
    assert res[1]["decoded"] == [[5, 10]] and res[2]["decoded"] == [[2, 4], [3, 6]]  # greedy, 2 samples: the shares
    for decoding in ("samples0", "samples2"):
        one, two = res[1]["metrics"][decoding], res[2]["metrics"][decoding]
        assert one.keys() == two.keys() and ("kl_greedy" in one or "kl" in one), one
        assert abs(one.get("kl", one.get("kl_greedy"))) > 1e-4  # a KL that could be summed wrongly
        assert two == pytest.approx(one, rel=1e-5, abs=1e-6), (decoding, one, two)


def _children(pid: int) -> list[int]:
    """The launcher's child processes (Linux /proc): torchrun's workers."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through Linux's /proc")
def test_a_signal_to_one_process_stops_both_with_its_exit_code(tmp_path, deterministic_encoder_dir, reviews_file):
    """SIGTERM to one of 2 real workers (torchrun): both checkpoint the same step and exit 143, the other one saying
    another process received it, neither waiting for the other (before, the one without the signal exited 0 only
    after waiting at the closing barrier, until torchrun killed it); the checkpoint resumes to the end."""
    runs = tmp_path / "runs"
    args = ["sft", *COMMON[:1], *COMMON[2:], "train.epochs=40", f"model.name={deterministic_encoder_dir}",
            f"data.path={reviews_file}", f"runs_dir={runs}", "name=sig"]  # 240 steps: long enough to be interrupted
    log = tmp_path / "log.txt"
    proc = _launch("torchrun", 2, [str(tmp_path / "info.json"), *args], log)
    end, metrics = time.time() + TIMEOUT_S, runs / "sig" / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count('"split": "train"') >= 3):
        assert proc.poll() is None and time.time() < end, log.read_text()[-4000:]
        time.sleep(0.1)
    env = lambda pid: dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)  # noqa: E731
    rank = {int(env(w)[b"RANK"]): w for w in _children(proc.pid)}  # each worker by the RANK torchrun gave it
    assert sorted(rank) == [0, 1], rank
    os.kill(rank[1], signal.SIGTERM)  # process 1 only; the main process prints why it stopped
    out = _wait_failed(proc, log)
    assert "stopped after step" in out and "(another process received SIGTERM)" in out, out[-3000:]
    # Each exits with the signal's code; once the first has left, torchrun may SIGTERM the other during its teardown
    # (-15). Neither fails (exit 1) in the closing barrier, as the main process did before.
    codes = {int(c) for c in re.findall(r"exitcode  : (-?\d+)", out)}
    assert 143 in codes and codes <= {143, -15}, out[-3000:]
    assert out.count('"signal": "SIGTERM"') == 2, out[-3000:]  # both commands' results: stopped by the signal
    step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    _wait(_launch("torchrun", 2, [str(tmp_path / "info2.json"), *args, "ckpt.resume=auto"], tmp_path / "log2.txt"),
          tmp_path / "log2.txt")
    assert _train_rows(runs / "sig")[-1]["step"] == 240 and step < 240


def test_reward_columns_follow_their_prompts_on_two_processes(tiny_causal_lm_dir, tmp_path):
    """Each process takes whole prompt rows, columns included: the reward (tests/test_reward_columns.py: trl_style)
    raises if any completion's ground truth is not its own prompt's, in training (4 prompts over 2 processes) and in
    the held-out evaluation (each process a share of 4 prompts, 2 samples each)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the film was {w}", "ground_truth": w}) + "\n"
                               for w in WORDS[:12]))
    runs, log = tmp_path / "runs", tmp_path / "log.txt"
    args = ["rl", "policy=causal-lm", f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}",
            "rl.prompts_per_step=4", "rl.samples_per_prompt=2", "rl.steps=2", "eval.prompts=4", "eval.samples=2",
            "eval.every=1", "reward.functions=[test_reward_columns:trl_style]", "gen.max_new_tokens=4",
            f"runs_dir={runs}", "name=cols"]
    _wait(_launch("torchrun", 2, [str(tmp_path / "i.json"), *args], log), log)
    rows = [json.loads(line) for line in (runs / "cols" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("split") == "train"] == [1, 2]
    assert [r["step"] for r in rows if r.get("split") == "eval"] == [0, 1, 2]


def test_lm_sft_runs_on_two_processes(tiny_causal_lm_dir, tmp_path):
    """`sft policy=causal-lm` under torchrun: each process a share of every batch, the validation split over both,
    and the reward-scored generations of the held-out prompts (each process a share); the run ends, validated twice."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the film was {w}", "completion": f" {w} and {w}"}) + "\n"
                            for w in WORDS[:12]))
    runs, log = tmp_path / "runs", tmp_path / "log.txt"
    args = ["sft", "policy=causal-lm", f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={data}",
            "data.val_fraction=0.25", "train.epochs=2", "train.batch_size=4", "train.lr=0.01", "train.log_every=1",
            "eval.prompts=2", "eval.max_new_tokens=4", "reward.functions=[token_f1]",
            "reward.reference_column=completion", f"runs_dir={runs}", "name=sft-lm"]
    _wait(_launch("torchrun", 2, [str(tmp_path / "i.json"), *args], log), log)
    rows = [json.loads(line) for line in (runs / "sft-lm" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval"]
    assert len(evals) >= 2 and all(math.isfinite(r["loss"]) for r in evals if "loss" in r), evals
    assert (runs / "sft-lm" / "checkpoints" / "final").is_dir()


@pytest.fixture(scope="module")
def tiny_bart_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BART that forces its first decoded token, as facebook/bart-large-cnn does."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    tok = make_tokenizer()
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id,
        decoder_start_token_id=tok.eos_token_id))
    model.generation_config.forced_bos_token_id = tok.cls_token_id
    out = tmp_path_factory.mktemp("tiny-bart")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_seq2seq_sft_then_rl_run_on_two_processes(tiny_bart_dir, tmp_path):
    """`sft` then `rl` with `policy=seq2seq` under torchrun: each process a share of every SFT batch and its own
    whole prompt groups in RL (the encoder's once-per-prompt pass is skipped under DDP, whose hooks expect one
    forward call), the held-out generations split over both; RL starts from SFT's checkpoint and resumes."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"the film was {w}", "completion": f"it was {w}"}) + "\n"
                            for w in WORDS[:12]))
    runs = tmp_path / "runs"
    sft = ["sft", "policy=seq2seq", f"model.name={tiny_bart_dir}", "model.lora.r=4", f"data.path={rows}",
           "data.val_fraction=0.25", "train.epochs=1", "train.batch_size=4", "train.lr=0.01", "train.log_every=1",
           "eval.prompts=2", "eval.max_new_tokens=4", "reward.functions=[chrf]", "reward.reference_column=completion",
           f"runs_dir={runs}", "name=sft"]
    _wait(_launch("torchrun", 2, [str(tmp_path / "i1.json"), *sft], tmp_path / "log1.txt"), tmp_path / "log1.txt")
    evals = [r for r in _train_rows(runs / "sft", "eval") if "loss" in r]
    assert evals and all(math.isfinite(r["loss"]) for r in evals)
    rl = ["rl", "policy=seq2seq", f"model.name={runs / 'sft' / 'checkpoints' / 'best'}", "model.lora.r=4",
          f"data.path={rows}", "rl.prompts_per_step=4", "rl.samples_per_prompt=2", "rl.steps=2", "eval.prompts=2",
          "eval.every=0", "rl.lr=1e-2", "gen.max_new_tokens=4", "reward.functions=[chrf]",
          "reward.reference_column=completion", f"runs_dir={runs}", "name=rl", "ckpt.every=1"]
    _wait(_launch("torchrun", 2, [str(tmp_path / "i2.json"), *rl], tmp_path / "log2.txt"), tmp_path / "log2.txt")
    assert json.loads((tmp_path / "i2.json").read_text())["num_processes"] == 2
    train = _train_rows(runs / "rl")
    assert [r["step"] for r in train] == [1, 2] and all(math.isfinite(r["loss"]) for r in train)
    assert (runs / "rl" / "checkpoints" / "step-00000002" / "rng-1.json").exists()  # each process's own RNG
    assert (runs / "rl" / "checkpoints" / "final" / "adapter_model.safetensors").exists()
