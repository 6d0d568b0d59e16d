"""Model weights on the wire and in the worker's cache, as safetensors (never pickle).

Weights are identified by :func:`edgesplit.model.models.state_dict_sha256`, a digest of the state
dict itself, so a worker verifies what it loaded regardless of how the file was written.
The cache lives in ``~/.cache/edgesplit/weights`` unless ``EDGESPLIT_CACHE_DIR`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgesplit.errors import ModelError
from edgesplit.shared.cache import cache_root

if TYPE_CHECKING:  # workers without torch import this module for the cache paths
    import torch
    from torch import nn

log = logging.getLogger(__name__)

MAX_CACHED_WEIGHTS = 4
"""Weight files the cache keeps; the least recently used leave first (issue #18, row 5)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """Where verified weights are kept: :func:`cache_root` plus ``weights/``."""
    return cache_root() / "weights"


def check_sha256(digest: str) -> str:
    """``digest`` if it is 64 lowercase hex digits; it names a file, so nothing else passes."""
    # fullmatch: "$" would also accept a trailing newline, which is not part of a file name.
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        shown = repr(digest[:72]) + ("..." if len(digest) > 72 else "")
        raise ModelError(f"sha256 must be 64 lowercase hex digits, got {shown}")
    return digest


def to_bytes(model: nn.Module) -> bytes:
    """The model's state dict as safetensors bytes."""
    from safetensors.torch import save as st_save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return st_save(state)


def from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes into a state dict; a malformed blob is a :class:`ModelError`."""
    from safetensors.torch import load as st_load

    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises several types for malformed input
        raise ModelError(f"weights are not a valid safetensors blob: {exc}") from exc


def trim_lru(directory: Path, pattern: str, max_files: int, max_bytes: int | None = None) -> None:
    """Remove the least recently used (oldest mtime) files matching ``pattern`` in
    ``directory`` until at most ``max_files`` (and ``max_bytes``) remain. Readers refresh a
    file's mtime when they use it. Failures are logged: a cache only costs a rebuild."""
    try:
        stats = sorted(
            ((p.stat().st_mtime, p.stat().st_size, p) for p in directory.glob(pattern)),
            reverse=True,
        )
    except OSError as exc:
        log.warning("cannot list the cache %s: %s", directory, exc)
        return
    used = 0
    for i, (_, size, path) in enumerate(stats):
        used += size
        if i >= max_files or (max_bytes is not None and used > max_bytes and i > 0):
            path.unlink(missing_ok=True)
            log.info("cache %s full: removed %s", directory.name, path.name)


def cached(sha256: str) -> bytes | None:
    """The cached safetensors bytes for ``sha256``, if present (its use time refreshed)."""
    path = cache_dir() / f"{check_sha256(sha256)}.safetensors"
    try:
        os.utime(path)
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read cached weights %s: %s", path, exc)
        return None


def store(sha256: str, data: bytes) -> Path | None:
    """Write verified weights to the cache atomically; a failure only costs a re-send later."""
    directory = cache_dir()
    path = directory / f"{check_sha256(sha256)}.safetensors"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot cache weights in %s: %s", directory, exc)
        return None
    trim_lru(directory, "*.safetensors", MAX_CACHED_WEIGHTS)
    return path
