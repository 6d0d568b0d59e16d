"""Where edgesplit's caches live on disk (weights, models, stages, ONNX exports, profiles)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDGESPLIT_CACHE_DIR"


def cache_root() -> Path:
    """``$EDGESPLIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgesplit`` (``~/.cache/edgesplit``):
    every cache lives below it. The only place this package reads that variable."""
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgesplit"
