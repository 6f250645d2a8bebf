"""SIGTERM/SIGINT on a real training subprocess: finish the step, checkpoint, exit 128+n; resume exactly."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.checkpoint import complete_checkpoints


def cli(*args):
    return [sys.executable, "-m", "rewardtune.cli", *args]


@pytest.fixture()
def data(tmp_path):
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.sample("the film plot was very so".split(), 3) + [w]), "label": y}
            for y, w in [("pos", "good"), ("neg", "bad")] * 20]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def args(model, data, root, name):
    # 30 rows / batch 4 = 8 steps per epoch, 16 epochs: long enough to be interrupted mid-run.
    return [f"model.name={model}", f"data.path={data}", "data.val_fraction=0.25", "train.epochs=16",
            "train.batch_size=4", "train.lr=1e-3", "train.max_length=12", "train.log_every=1",
            f"runs_dir={root}", f"name={name}"]


def wait_for_rows(path, n, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and path.read_text().count('"split": "train"') >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run logged no training rows in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_cli_resume_is_exact(sig, tiny_encoder_dir, data, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cli("sft", *args(tiny_encoder_dir, data, tmp_path, "run")), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    wait_for_rows(tmp_path / "run" / "metrics.jsonl", 3, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out
    assert f"{sig.name} received: finishing this step" in out and "resume with --resume" in out
    ckpts = complete_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(ckpts) == 1 and int(ckpts[0].name.split("-")[1]) < 128, out
    if sig == signal.SIGINT:
        return  # the resumption below is the same for both signals
    done = subprocess.run(cli("sft", "--resume", str(tmp_path / "run")), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout
    straight = subprocess.run(cli("sft", *args(tiny_encoder_dir, data, tmp_path, "straight")), capture_output=True,
                              text=True, env=env)
    assert straight.returncode == 0, straight.stderr
    a = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000128" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "checkpoints" / "step-00000128" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_second_signal_exits_at_once(tmp_path):
    code = ("import os, signal, time\n"
            "from rewardtune.stop import StopGuard\n"
            "with StopGuard() as g:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    assert g.should_stop(0)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "print('not reached')\n")
    t = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM and "second SIGTERM: exiting now" in done.stdout
    assert "not reached" not in done.stdout and time.time() - t < 25


def test_processes_agree_to_stop_when_only_one_got_the_signal(tmp_path):
    """Under several processes a signal may reach one process a step before the others. Each process's step_done
    sums the flags over processes, so all of them checkpoint and stop at the same step (here: the process that got
    no signal stops too; the reduction is faked, the other process's flag being 1)."""
    from types import SimpleNamespace

    from rewardtune.checkpoint import Checkpointer, CheckpointSettings
    from rewardtune.stop import StopGuard

    reduced = []

    def reduce(t, op):
        reduced.append((t.tolist(), op))
        return t + torch.tensor([1.0, 1.0, 0.0])  # the other process: asked to stop, by SIGTERM
    acc = SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=reduce)
    printed = []
    run = SimpleNamespace(accelerator=acc, dir=tmp_path, print=printed.append)
    cp = Checkpointer(run, CheckpointSettings(), {}, None, None, StopGuard())
    saved = []
    cp.save = lambda step, state: saved.append(step)
    assert cp.step_done(3, lambda: {}) and saved == [3] and reduced == [([0.0, 0.0, 0.0], "sum")]
    # It stops as the signalled one does (the trainers return stop_signal: every process exits 128 + 15, and none
    # waits at the command's closing barrier for one that has left), yet a signal of its own is still its first.
    assert cp.guard.stop_signal == "SIGTERM" and cp.guard.signal_name == "" and "another process received SIGTERM" in printed[-1]
    from rewardtune.train.loop import LoopResult, _stopped

    assert _stopped(LoopResult(), cp, SimpleNamespace(close=lambda: None)).signal == "SIGTERM"  # what sft & co return
    acc.reduce = lambda t, op: t  # nobody got one: go on
    assert not cp.step_done(4, lambda: {}) and saved == [3]

    # A pause (ckpt.stop_after) agreed by both, then a SIGTERM on this process during the save: every process
    # still returns the agreed '' (a pause: exit 0), so none skips the closing barrier the others wait at.
    paused = Checkpointer(run, CheckpointSettings(stop_after=3), {}, None, None, StopGuard(stop_after=3))
    paused.save = lambda step, state: paused.guard._handle(signal.SIGTERM, None)
    acc.reduce = lambda t, op: t * 2  # the other process: paused too
    assert paused.step_done(3, lambda: {}) and paused.guard.signal_name == "SIGTERM"
    assert paused.guard.stop_signal == "" and "ckpt.stop_after=3" in printed[-1]
