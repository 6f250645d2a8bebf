"""rewardtune: reward-driven fine-tuning of language models (see README.md).

`from rewardtune import train_sft, train_rl, train_reward_model, export_run` (api.py, export.py): imported on first use,
so that `import rewardtune` (and the command line) stays light.
"""
from typing import Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)
_LAZY = {"train_sft": "api", "train_rl": "api", "train_reward_model": "api", "TrainResult": "api",
         "export_run": "export"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'rewardtune' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return getattr(module, name)
