"""`rewardtune report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page of one or several runs.

Plots are PNGs embedded as base64 and the style sheet is inline, so the page is one file that opens offline,
attaches to a message or lands in a CI artefact as it is. Sections: the runs; training curves (reward and each
component, KL, loss, entropy, completion length; the rest folded); held-out metrics over steps and their
first/last values; classification reports with confusion matrices; samples before and after; each config.
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Sequence

from .figures import HELD_OUT, held_out_keys, plot_group, train_keys
from .plots import confusion_plot
from .runs import RunData, collect_runs
from .tables import classification_reports, held_out_table, samples_html, summary_table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1500px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; } h4 { margin: 1em 0 .3em; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; } figure img { display: block; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: .85em; margin: .4em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } table.samples td { max-width: 34em; white-space: pre-wrap; }
table.wide { display: block; overflow-x: auto; max-width: 100%; }
pre { background: #f7f7f7; padding: .6em; font-size: .8em; overflow-x: auto; }
.note { color: #666; font-size: .9em; }
"""


def _grid(plots: Sequence[tuple[str, str]]) -> str:
    figs = "".join(f'<figure><img alt="{html.escape(t)}" title="{html.escape(t)}" '
                   f'src="data:image/png;base64,{b64}"></figure>' for t, b64 in plots)  # the title is in the image
    return f'<div class="grid">{figs}</div>'


def _training(runs: Sequence[RunData]) -> str:
    headline, other = train_keys(runs)
    if not headline and not other:
        return '<p class="note">No training rows (split "train") in metrics.jsonl.</p>'
    more = plot_group(runs, ("train",), other)
    return _grid(plot_group(runs, ("train",), headline)) + (
        f"<details><summary>more training metrics ({len(more)})</summary>{_grid(more)}</details>" if more else "")


def _held_out(runs: Sequence[RunData]) -> str:
    keys = held_out_keys(runs)
    tables = "".join(f"<h4>{html.escape(r.label)}</h4>{t}" for r in runs if (t := held_out_table(r, keys)))
    if not keys and not tables:
        return '<p class="note">No held-out evaluation in these runs.</p>'
    return _grid(plot_group(runs, HELD_OUT, keys)) + tables


def _classification(runs: Sequence[RunData]) -> str:
    parts = []
    for run in runs:
        for title, report, matrix in classification_reports(run):
            img = confusion_plot("confusion matrix", matrix, run.label_names)
            parts.append(f'<h4>{html.escape(title)}</h4><div class="grid"><div>{report}</div>'
                         f"{_grid([(f'{run.label}: confusion (rows gold, columns predicted)', img)])}</div>")
    return "".join(parts)


def _configs(runs: Sequence[RunData]) -> str:
    out = []
    for run in runs:
        cfg = run.dir / "config.yaml"
        body = html.escape(cfg.read_text(encoding="utf-8")) if cfg.exists() else "(no config.yaml)"
        out.append(f"<details><summary>{html.escape(run.label)}: config.yaml</summary><pre>{body}</pre></details>")
    return "".join(out)


def render(runs: Sequence[RunData]) -> str:
    """The page's HTML."""
    names = ", ".join(r.label for r in runs)
    classification = _classification(runs)
    samples = "".join(f"<h3>{html.escape(r.label)}</h3>{s}" for r in runs if (s := samples_html(r)))
    sections = [("Runs", summary_table(runs)), ("Training", _training(runs)), ("Held-out evaluation", _held_out(runs)),
                ("Classification", classification), ("Samples", samples), ("Configs", _configs(runs))]
    body = "".join(f"<h2>{title}</h2>{content}" for title, content in sections if content)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>rewardtune report: '
            f"{html.escape(names)}</title><style>{STYLE}</style></head><body><h1>rewardtune report</h1>"
            f'<p class="note">{html.escape(names)} · written {time.strftime("%Y-%m-%d %H:%M")}</p>{body}'
            "</body></html>\n")


def write_report(folders: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of the run folders (a folder of run folders, such as the quickstart's, stands for them);
    default `<RUN_DIR>/report.html` for one folder, `report.html` here for several. Returns the file written."""
    runs = collect_runs(folders)
    path = Path(out) if out else (Path(folders[0]) / "report.html" if len(folders) == 1 else Path("report.html"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(runs), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a page
    return path
