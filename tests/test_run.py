"""RunContext: run folder layout, resolved config, metrics lines, early failure on bad folders."""
from __future__ import annotations

import json
import pytest
import torch

from rewardtune.config import DataSettings, load_config
from rewardtune.run import start_run


def test_run_folder_layout_and_metrics(tmp_path):
    cfg = load_config(DataSettings, None, ["path=x.jsonl", "seed=3"])
    run = start_run(cfg, "r1", tmp_path, seed=3)
    assert (tmp_path / "r1" / "checkpoints").is_dir()
    assert load_config(DataSettings, tmp_path / "r1" / "config.yaml") == cfg  # resolved config round-trips
    run.log(1, loss=torch.tensor(0.5), acc=0.75, bad=float("nan"))
    run.log(2, loss=0.25)
    run.log_sample(2, prompt="p", completion="c", reward=1.0)
    rows = [json.loads(line) for line in (tmp_path / "r1" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5, "acc": 0.75, "bad": "nan"}, {"step": 2, "loss": 0.25}]
    assert json.loads((tmp_path / "r1" / "samples.jsonl").read_text())["completion"] == "c"


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = DataSettings()
    start_run(cfg, "r", tmp_path).log(1, x=1)
    with pytest.raises(FileExistsError, match="already exists"):
        start_run(cfg, "r", tmp_path)
    assert (tmp_path / "r" / "metrics.jsonl").read_text().strip() == '{"step": 1, "x": 1}'  # nothing lost


def test_unwritable_root_fails_before_training(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")  # fails for root too, unlike chmod
    with pytest.raises(OSError, match="is not writable"):
        start_run(DataSettings(), "r", blocker)


def test_seed_makes_initialisation_repeatable(tmp_path):
    start_run(DataSettings(), "a", tmp_path, seed=7)
    a = torch.randn(3)
    start_run(DataSettings(), "b", tmp_path, seed=7)
    assert torch.equal(a, torch.randn(3))


def test_each_process_gets_its_own_random_stream(tmp_path):
    from types import SimpleNamespace

    from rewardtune.run import seed_this_process

    draws = []
    for rank in (0, 1):
        torch.manual_seed(0)  # start_run seeds every process alike
        seed_this_process(SimpleNamespace(seed=0, accelerator=SimpleNamespace(num_processes=2, process_index=rank)))
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])
    torch.manual_seed(0)
    state = torch.get_rng_state()
    seed_this_process(SimpleNamespace(seed=0, accelerator=SimpleNamespace(num_processes=1, process_index=0)))
    assert torch.equal(torch.get_rng_state(), state)  # one process: its stream is left as it was


def test_epoch_loop_rows_are_over_every_process_s_share(tmp_path):
    """over_processes with the other process faked. A global batch of 5 rows on 2 processes: shares of 3 and 2 rows,
    weights 2·3/5 and 2·2/5, so means are row-weighted; a filler share (weight 0, no row of its own) counts for
    nothing, its dropped dummy row included. Keys go to the all-reduce in sorted order, whatever order they came in."""
    from types import SimpleNamespace

    from rewardtune.collectives import over_processes

    def row(values, weight, other):  # other: the other process's [accuracy, loss, reward_dropped] and its weight
        sent = []

        def reduce(t, op):
            sent.append(t.clone())
            return t + torch.tensor(other)
        acc = SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=reduce)
        return over_processes(SimpleNamespace(accelerator=acc), values, weight), sent[0]

    mine = {"loss": torch.tensor(0.7), "reward_dropped": torch.tensor(1.0), "accuracy": 0.75, "note": "x"}
    got, sent = row(mine, 1.2, [0.5 * 0.8, 0.3 * 0.8, 2.0, 0.8])  # mine: 3 rows; the other: 2 rows, accuracy 0.5
    assert sent.tolist() == pytest.approx([0.75 * 1.2, 0.7 * 1.2, 1.0, 1.2])  # accuracy, loss, reward_dropped, weight
    assert got == {"loss": pytest.approx((0.7 * 3 + 0.3 * 2) / 5), "accuracy": pytest.approx((0.75 * 3 + 0.5 * 2) / 5),
                   "reward_dropped": 3.0, "note": "x"}
    got, _ = row({"loss": 9.0, "reward_dropped": 1.0, "accuracy": 0.0}, 0.0, [1.0 * 2, 0.3 * 2, 0.0, 2.0])  # a filler
    assert got == {"loss": pytest.approx(0.3), "accuracy": pytest.approx(1.0), "reward_dropped": 0.0}
    one = SimpleNamespace(accelerator=SimpleNamespace(num_processes=1))
    assert over_processes(one, {"loss": 0.7}) == {"loss": 0.7}
