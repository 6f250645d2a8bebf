"""Whether the Hugging Face hub can be used now: offline mode, a reachable endpoint, the local cache.

Asked before anything touches the hub (a model or dataset name, `rewardtune export --push-to-hub`), so that an
unusable hub is one line with the fix at once, not a client retrying for half a minute or a long traceback.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the hub clients use their cache only."""
    return any((os.environ.get(k) or "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def unreachable() -> str:
    """Why the hub cannot be reached now ('' when it can): offline mode, or no connection to its endpoint (3 s)."""
    if offline():
        return "HF_HUB_OFFLINE=1 (offline mode) is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError as e:
        return f"{url.hostname} cannot be reached ({e})"
    return ""


def in_cache(repo_id: str, filename: str = "config.json", repo_type: str = "model") -> bool:
    """Whether the local HF cache holds `filename` of `repo_id` (a model's config.json, by default)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)
    except Exception:  # a name that is no valid repo id, an unreadable cache: not there
        return False
