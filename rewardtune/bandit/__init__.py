"""Logged bandit feedback: the log's rows (log.py), the DR reward model (direct.py), supervised-to-bandit
conversion (convert.py) and off-policy evaluation of a trained classifier (evaluate.py). The estimators' math is in
algorithms/ope.py; learning from a log is train/bandit.py."""
