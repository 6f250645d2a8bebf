"""Run reports: one self-contained HTML page of one or several run folders (`rewardtune report`)."""
from .page import write_report
from .runs import ReportError, collect_runs

__all__ = ["ReportError", "collect_runs", "write_report"]
