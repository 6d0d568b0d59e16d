"""The worker's content-addressed store of compiled models: ONNX bytes kept by their sha256.

A model arrives as a PutModel stream of chunks (:data:`CHUNK_BYTES` each, so no message nears the
64 MiB limit whatever the model's size). The store writes them to a temporary file while hashing,
checks offsets, size and digest, and only then renames the file to ``<sha256>.onnx``: a file in
the store is always whole and verified. The store is bounded (:data:`DEFAULT_MAX_BYTES`): when a
new model would pass the bound, the least recently used models leave first. A restarted worker
finds what it held, so nothing it holds is sent again.

No torch here: a lean worker uses this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from edgesplit.errors import ModelError
from edgesplit.runtime.weights import check_sha256
from edgesplit.shared.cache import cache_root

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Bytes per PutModel chunk the coordinator sends (and the most a worker accepts)."""
DEFAULT_MAX_BYTES = 2 << 30
"""The store's bound on disk (2 GiB: a few dozen models of the zoo's size, one large one)."""
MAX_MODEL_BYTES = 1 << 31
"""The largest model accepted (ONNX protobufs cannot exceed 2 GiB without external data)."""


def store_dir() -> Path:
    """Where compiled models are kept: the user cache plus ``models/``."""
    return cache_root() / "models"


class ModelStore:
    """Verified model files by sha256 in ``directory`` (default :func:`store_dir`), at most
    ``max_bytes`` in all. Thread-safe; several workers may share one directory."""

    def __init__(self, directory: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory or store_dir()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.received_bytes = 0
        """Chunk bytes received by :meth:`receive` since this store was made."""

    def path(self, sha256: str) -> Path:
        return self.directory / f"{check_sha256(sha256)}.onnx"

    def find(self, sha256: str) -> Path | None:
        """The stored file of ``sha256`` (its use time refreshed), or None."""
        path = self.path(sha256)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot use stored model %s: %s", path, exc)
            return None
        return path

    def digests(self, limit: int = 256) -> list[str]:
        """sha256 of the stored models, most recently used first (at most ``limit``)."""
        try:
            files = [p for p in self.directory.glob("*.onnx") if len(p.stem) == 64]
            files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:  # a file removed while listing: report what is sure next time
            return []
        return [p.stem for p in files[:limit]]

    def receive(self, chunks: Iterable[object]) -> Path:
        """Store the model a PutModel stream carries; :class:`ModelError` naming what is wrong
        (the partial file is removed). Chunks are ``ModelChunk`` messages."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".part-", suffix=".onnx")
        digest = hashlib.sha256()
        sha = ""
        total = received = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    sha, total = self._check_chunk(chunk, sha, total, received)
                    data = chunk.data  # type: ignore[attr-defined]
                    fh.write(data)
                    digest.update(data)
                    received += len(data)
                    with self._lock:
                        self.received_bytes += len(data)
            if not sha:
                raise ModelError("PutModel carried no chunks")
            if received != total:
                raise ModelError(f"PutModel ended at byte {received} of {total}")
            actual = digest.hexdigest()
            if actual != sha:
                raise ModelError(f"model digest mismatch: expected {sha}, got {actual}")
            self._make_room(total, keep=sha)
            path = self.path(sha)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("stored model %s (%d bytes)", sha[:12], total)
        return path

    def _check_chunk(self, chunk: object, sha: str, total: int, received: int) -> tuple[str, int]:
        c_sha = chunk.sha256  # type: ignore[attr-defined]
        c_total = int(chunk.total_bytes)  # type: ignore[attr-defined]
        offset = int(chunk.offset)  # type: ignore[attr-defined]
        size = len(chunk.data)  # type: ignore[attr-defined]
        if not sha:
            sha = check_sha256(c_sha)
            total = c_total
            if not 0 < total <= MAX_MODEL_BYTES:
                raise ModelError(f"a model must have 1 to {MAX_MODEL_BYTES} bytes, got {total}")
        elif c_sha != sha or c_total != total:
            raise ModelError("every chunk of one PutModel must name the same sha256 and size")
        if offset != received:
            raise ModelError(f"chunk at offset {offset}; expected {received}")
        if size > CHUNK_BYTES or received + size > total:
            raise ModelError(
                f"chunk of {size} bytes at {offset}: chunks are at most {CHUNK_BYTES} bytes "
                f"and end by byte {total}"
            )
        return sha, total

    def _make_room(self, incoming: int, keep: str) -> None:
        """Remove least recently used models until ``incoming`` more bytes fit the bound."""
        with self._lock:
            try:
                files = [p for p in self.directory.glob("*.onnx") if p.stem != keep]
                stats = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in files)
            except OSError as exc:
                log.warning("cannot list the model store %s: %s", self.directory, exc)
                return
            used = sum(size for _, size, _ in stats)
            for _, size, path in stats:
                if used + incoming <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                used -= size
                log.info("model store full: removed %s", path.name)


def chunks(data: bytes, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterable[object]:
    """``data`` as ModelChunk messages for a PutModel stream (the coordinator's side)."""
    from edgesplit.runtime.proto import edgesplit_pb2 as pb

    total = len(data)
    view = memoryview(data)
    for offset in range(0, total, chunk_bytes):
        yield pb.ModelChunk(
            sha256=sha256,
            total_bytes=total,
            offset=offset,
            data=bytes(view[offset : offset + chunk_bytes]),
        )
