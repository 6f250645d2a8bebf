"""The report's tables as HTML: the runs side by side, held-out metrics first and last, classification reports,
and before/after samples. Every value from a run folder is escaped: completions are model output."""
from __future__ import annotations

import html
from typing import Any, Sequence

from .runs import RunData, numeric

MAX_SAMPLES = 8  # rows per samples table
MAX_CHARS = 400  # of a prompt or completion shown


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return ""
    return str(v)


def text(v: Any) -> str:
    s = fmt(v)
    return html.escape(s if len(s) <= MAX_CHARS else s[:MAX_CHARS] + " …")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{text(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary_table(runs: Sequence[RunData]) -> str:
    """One line per run: what trained it, the model, its steps, its best held-out value, training time, folder."""
    rows = []
    for run in runs:
        summary = run.split("summary")
        if run.split("best"):  # generative runs and LM SFT name the metric in their `best` rows
            best_text = ", ".join(f"{k} {fmt(v)}" for k, v in run.split("best")[-1].items() if k not in ("step", "split"))
        else:  # the classifier trainers' summary row holds the best value of train.best_metric
            metric = (run.config.get("train") or {}).get("best_metric", "best") if "rm" not in run.config else "best"
            best_text = f"{metric} {fmt(summary[-1].get('best'))}" if summary else ""
        steps = max((int(r.get("step", 0)) for r in run.rows), default=0)
        rows.append([run.label, run.kind, (run.config.get("model") or {}).get("name", ""), steps, best_text,
                     f"{summary[-1]['train_s']:.1f} s" if summary and numeric(summary[-1], "train_s") is not None
                     else "", str(run.dir)])
    return table(["run", "trained", "model", "steps", "best", "training time", "folder"], rows)


def held_out_table(run: RunData, keys: Sequence[str]) -> str:
    """Each held-out evaluation's first and last rows (before → after), over the plotted keys it has; test last."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in run.rows:
        if r.get("split") in ("val", "eval", "test"):
            groups.setdefault((r["split"], str(r.get("decoding") or "")), []).append(r)
    lines = []
    for (split, decoding), rows in sorted(groups.items(), key=lambda g: g[0][0] == "test"):
        picked = rows if len(rows) <= 2 else [rows[0], rows[-1]]
        cols = [k for k in keys if any(numeric(r, k) is not None for r in rows)]
        for r in picked:
            lines.append((f"{split} {decoding}".strip() + f", step {r.get('step', '')}", cols, r))
    if not lines:
        return ""
    cols = list(dict.fromkeys(k for _, c, _ in lines for k in c))
    return table(["evaluation", *cols], [[name, *(r.get(k) for k in cols)] for name, _, r in lines], "wide")


def classification_reports(run: RunData) -> list[tuple[str, str, list[list[int]]]]:
    """(title, per-label table, confusion matrix) of the last validation report and of the test report."""
    picked = [r for r in run.split("val") if "confusion" in r][-1:] + [r for r in run.split("test") if "confusion" in r]
    out = []
    for r in picked:
        names = run.label_names or [str(i) for i in range(len(r["confusion"]))]
        rows = [[n, r.get(f"{n}_precision"), r.get(f"{n}_recall"), r.get(f"{n}_f1"),
                 sum(r["confusion"][i]) if i < len(r["confusion"]) else ""] for i, n in enumerate(names)]
        rows.append(["macro avg", r.get("macro_precision"), r.get("macro_recall"), r.get("macro_f1"),
                     sum(map(sum, r["confusion"]))])
        title = f"{run.label}: {r['split']} at step {r.get('step', '')}, accuracy {fmt(r.get('accuracy'))}"
        out.append((title, table(["label", "precision", "recall", "f1", "support"], rows), r["confusion"]))
    return out


def samples_html(run: RunData) -> str:
    """Held-out completions before and after (the first and the last evaluation, prompt by prompt), and the
    training samples of the first and the last logged step."""
    parts = []
    held = [s for s in run.samples if s.get("split") == "eval"]
    steps = sorted({s.get("step", 0) for s in held})
    if steps:
        a, b = steps[0], steps[-1]
        before = [s for s in held if s.get("step") == a][:MAX_SAMPLES]
        after = {}
        for s in (s for s in held if s.get("step") == b):
            after.setdefault(s.get("prompt"), []).append(s)
        rows = []
        for s in before:
            match = after.get(s.get("prompt")) or [{}]
            t = match.pop(0) if len(match) > 1 else match[0]
            rows.append([s.get("prompt"), s.get("completion"), s.get("reward"), t.get("completion"), t.get("reward")])
        parts.append(f"<h4>held-out prompts: step {a} → step {b}</h4>" + table(
            ["prompt", f"step {a}", "reward", f"step {b}", "reward"], rows, "samples"))
    train = [s for s in run.samples if "split" not in s]
    steps = sorted({s.get("step", 0) for s in train})
    for step in dict.fromkeys(steps[:1] + steps[-1:]):
        rows = [[s.get("prompt"), s.get("completion"), s.get("reward"),
                 ", ".join(f"{k} {fmt(v)}" for k, v in (s.get("rewards") or {}).items())]
                for s in train if s.get("step") == step][:MAX_SAMPLES]
        parts.append(f"<h4>training samples, step {step}</h4>" + table(
            ["prompt", "completion", "reward", "components"], rows, "samples"))
    return "".join(parts)
