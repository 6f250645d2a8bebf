"""The README is a newcomer's page: short, and its examples run.

The Python example and its command-line twin are taken from README.md as a reader sees them and run on a tiny
random Llama instead of the bundled SmolLM2 (the one substitution: the model name), so they run in seconds.
"""
from __future__ import annotations

import ast
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_WORDS = 1200
REAL_MODEL = "smollm2-135m-instruct"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", readme(), flags=re.S | re.M)


def python_example() -> str:
    return blocks("python")[0]


def train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "train"]


def test_readme_is_under_1200_words():
    words = len(readme().split())
    assert words < MAX_WORDS, f"README.md has {words} words; keep it under {MAX_WORDS} (details go to docs/)"


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)\)", readme())
    assert links
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_architecture_tree_names_every_module():
    """docs/architecture.md lists every module; the README's table names every package (and links that page)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert text.count("<!-- architecture -->") == 1 and text.count("<!-- /architecture -->") == 1
    tree = text.split("<!-- architecture -->")[1].split("<!-- /architecture -->")[0]
    package = ROOT / "rewardtune"
    modules = [p.relative_to(package) for p in package.rglob("*.py") if p.name != "__init__.py"]
    assert modules
    absent = [str(m) for m in modules if not re.search(rf"^\s+{re.escape(m.name)}\s", tree, flags=re.M)]
    assert not absent, f"docs/architecture.md's tree does not list: {absent}"
    table = readme().split("<!-- packages -->")[1].split("<!-- /packages -->")[0]
    packages = sorted(p.parent.name for p in package.glob("*/__init__.py"))
    assert packages and all(f"`{name}/`" in table for name in packages), (packages, table)
    assert "(docs/architecture.md)" in readme()


def test_python_example_runs(tiny_causal_lm_dir, tmp_path, monkeypatch, capsys):
    code = python_example()
    assert code.count(REAL_MODEL) == 1, "the example must run on the bundled SmolLM2"
    monkeypatch.chdir(tmp_path)  # the example's run folder, runs/my-grpo/, goes here
    exec(compile(code.replace(REAL_MODEL, str(tiny_causal_lm_dir)), str(README), "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out
    assert "'eval_start'" in printed and "'eval'" in printed
    run_dir = tmp_path / "runs" / "my-grpo"
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints" / "final").is_dir()
    rows = train_rows(run_dir)
    assert len(rows) == 8 and all("reward/myreward" in r for r in rows)
    assert "algorithm: grpo" in (run_dir / "config.yaml").read_text()


def test_command_line_example_runs(tiny_causal_lm_dir, tmp_path, monkeypatch):
    from rewardtune.cli import main

    (command,) = [b for b in blocks("bash") if "rewardtune rl policy=causal-lm" in b]
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:2] == ["PYTHONPATH=.", "rewardtune"], words
    assert not any(w.startswith("model.name=") for w in words)  # the default model: the bundled SmolLM2
    tree = ast.parse(python_example())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "myreward"]
    assert "reward.functions=[mymodule:myreward]" in words
    (tmp_path / "mymodule.py").write_text(ast.get_source_segment(python_example(), fn) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # what PYTHONPATH=. does for the `rewardtune` command
    try:
        assert main([*words[2:], f"model.name={tiny_causal_lm_dir}"]) == 0
    finally:
        sys.modules.pop("mymodule", None)
    run_dir = tmp_path / "runs" / "my-grpo-cli"
    rows = train_rows(run_dir)
    assert len(rows) == 8 and all("reward/mymodule:myreward" in r for r in rows)  # a named reward keeps its name
    assert "mymodule:myreward" in (run_dir / "config.yaml").read_text()  # reloadable: --resume finds it


@pytest.mark.parametrize("page", ["BENCHMARKS.md", "RELIABILITY.md"])
def test_readme_links_the_measurement_pages(page):
    assert f"({page})" in readme()
