"""`rewardtune report RUN_DIR [RUN_DIR ...] [--out FILE]`: one HTML page of runs (rewardtune/report/)."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_report(args: argparse.Namespace) -> None:
    from .report import ReportError, write_report

    try:
        path = write_report(args.run_dirs, args.out)
    except ReportError as e:
        print(f"rewardtune: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"report written to {path}")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of runs: curves, held-out metrics, confusion "
                                      "matrices, samples; several runs overlaid",
                       description="Write one HTML page (plots embedded; opens offline) of one or several run "
                                   "folders. A folder of run folders (the quickstart's) stands for the runs in it.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, e.g. runs/sft runs/rl")
    p.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html for one run, ./report.html for several)")
    p.set_defaults(func=cmd_report)
