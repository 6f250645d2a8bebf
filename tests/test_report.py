"""`rewardtune report`: the page of real tiny runs (a classifier's SFT, GRPO on a causal LM, LM SFT) overlaid, opened
in headless Chromium with every plot loaded; the loader on hand-written rows; the command line."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from rewardtune.cli import main
from rewardtune.config import load_config
from rewardtune.report import ReportError, collect_runs, write_report
from rewardtune.report.figures import held_out_keys, train_keys
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.rl_generate import train_rl_generate
from rewardtune.train.sft import SFTConfig, train_sft
from rewardtune.train.sft_lm import train_sft_lm
from rewardtune.train.sft_lm_config import SFTLMConfig

WORDS = [("good", "pos"), ("bad", "neg"), ("great", "pos"), ("awful", "neg")]
# Run in the page after it loaded: how many of its images decoded to a picture (naturalWidth > 0), of how many.
CHECK = ('<script>window.addEventListener("load", () => { const imgs = [...document.images]; '
         'document.body.setAttribute("data-plots", imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + '
         'imgs.length); });</script>')


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_encoder_dir, tiny_causal_lm_dir, tmp_path_factory):
    """Three tiny real runs in one folder: sft (classifier, with a test file), rl-lm (GRPO, two rewards), sft-lm."""
    root = tmp_path_factory.mktemp("runs")
    labelled = _jsonl(root / "labelled.jsonl", [{"text": f"the film was {w}", "label": y} for w, y in WORDS * 6])
    train_sft(load_config(SFTConfig, None, [
        f"model.name={tiny_encoder_dir}", f"data.path={labelled}", f"data.test_path={labelled}", "train.epochs=2",
        "train.batch_size=6", "train.max_length=8", "train.log_every=1", f"runs_dir={root}", "name=sft"]),
        show_progress=False)
    prompts = _jsonl(root / "prompts.jsonl", [{"prompt": f"the film {w}", "completion": f"it was {w}"}
                                              for w, _ in WORDS * 2])
    train_rl_generate(load_config(GenRLConfig, None, [
        f"model.name={tiny_causal_lm_dir}", f"data.path={prompts}", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
        "rl.steps=4", "eval.prompts=2", "eval.every=2", "eval.sample_every=2", "gen.max_new_tokens=4",
        "reward.functions=[length_penalty,lexicon]", f"runs_dir={root}", "name=rl-lm"]), show_progress=False)
    train_sft_lm(load_config(SFTLMConfig, None, [
        f"model.name={tiny_causal_lm_dir}", f"data.path={prompts}", "data.val_fraction=0.25", "train.epochs=2",
        "train.batch_size=3", "train.log_every=1", "eval.prompts=2", "eval.max_new_tokens=4", f"runs_dir={root}",
        "name=sft-lm"]), show_progress=False)
    return root


@pytest.fixture(scope="module")
def page(runs):
    return write_report([runs / "sft", runs / "rl-lm", runs / "sft-lm"], runs / "report.html")


def _images(text):
    return re.findall(r'<img alt="([^"]*)"[^>]*src="data:image/png;base64,', text)


def test_the_page_plots_what_the_trainers_log_and_overlays_the_runs(page):
    text = page.read_text(encoding="utf-8")
    titles = _images(text)
    for key in ("reward", "reward/length_penalty", "reward/lexicon", "kl", "loss", "entropy", "completion_len",
                "accuracy", "macro_f1", "perplexity", "distinct_1"):
        assert key in titles, (key, titles)
    assert titles.count("loss") == 2  # training loss, held-out loss
    assert all(f"<td>{run}</td>" in text for run in ("sft", "rl-lm", "sft-lm"))  # the runs table
    assert "sft (classifier)" in text and "rl grpo (causal-lm)" in text and "sft (causal-lm)" in text
    assert re.search(r"<td>accuracy [0-9.]+</td>", text) and re.search(r"<td>loss [0-9.]+</td>", text)  # best values
    # the classifier's last validation report and its test report, each with a confusion matrix
    assert "sft: val at step 8" in text and "sft: test at step 8" in text and titles.count(
        "sft: confusion (rows gold, columns predicted)") == 2
    assert "held-out prompts: step 0 → step 4" in text and "training samples, step 2" in text
    assert not re.search(r'(src|href)="(?!data:)', text), "the page must need no other file and no network"


def test_the_metric_groups_follow_the_trainers_rows(runs):
    got = collect_runs([runs / "sft", runs / "rl-lm"])
    headline, other = train_keys(got)
    assert headline == ["reward", "reward/length_penalty", "reward/lexicon", "kl", "loss", "entropy", "completion_len"]
    assert "lr" in other and "reward_std/lexicon" in other
    held = held_out_keys(got)
    assert {"accuracy", "macro_f1", "auc", "reward", "kl_greedy"} <= set(held)
    assert not {"pos_precision", "neg_f1", "weighted_f1", "macro_recall"} & set(held)  # those are in the tables


def _chromium(page, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("Chromium is absent (apt-get install chromium; .ci/run installs it where apt-get is available)")
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                           checked.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-plots="(\d+)/(\d+)"', proc.stdout)
    assert found, (proc.returncode, proc.stderr[-2000:])
    return int(found[1]), int(found[2])


def test_every_plot_loads_in_a_headless_browser(page, tmp_path):
    loaded, total = _chromium(page, tmp_path)
    assert total == len(_images(page.read_text(encoding="utf-8"))) > 10 and loaded == total


def test_the_browser_check_sees_a_broken_plot(page, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", '<img alt="x" src="data:image/png;base64,iVBORw0KGgo=">' + "</body>"), encoding="utf-8")
    loaded, total = _chromium(broken, tmp_path)
    assert loaded == total - 1


def test_a_folder_of_runs_stands_for_them_and_the_cli_writes_the_page(runs, tmp_path, monkeypatch, capsys):
    assert [r.label for r in collect_runs([runs])] == ["sft", "rl-lm", "sft-lm"]  # oldest first
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(runs / "sft"), str(runs / "rl-lm")]) == 0  # several runs: ./report.html
    assert capsys.readouterr().out.strip() == "report written to report.html"
    assert "rl-lm" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert main(["report", str(runs / "sft"), "--out", "x/one.html"]) == 0
    assert (tmp_path / "x" / "one.html").exists()


# ---------------------------------------------------------------- the loader, on hand-written rows
def test_nan_text_a_half_written_line_and_model_output_are_handled(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "split": "train", "loss": "nan", "reward": 0.5}\n{"step": 2, "split": "train", "loss": 1.0, '
        '"reward": 0.7}\n{"step": 3, "split": "tr', encoding="utf-8")  # killed while writing step 3
    _jsonl(run / "samples.jsonl", [{"step": 1, "prompt": "p", "completion": "<script>alert(1)</script>", "reward": 1}])
    (one,) = collect_runs([run])
    assert [r["step"] for r in one.rows] == [1, 2] and one.rows[0]["loss"] != one.rows[0]["loss"]  # NaN
    text = write_report([run]).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert" not in text
    assert (run / "report.html").exists() and _images(text) == ["reward", "loss"]


def test_a_folder_that_is_not_a_run_is_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(ReportError, match="not a run folder.*rewardtune report runs/sft runs/rl"):
        collect_runs([tmp_path])
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "nowhere: no such folder" in capsys.readouterr().err
