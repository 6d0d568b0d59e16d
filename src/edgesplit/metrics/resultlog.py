"""``results.jsonl``: every result, appended to the run folder as it reaches the coordinator.

One JSON object a line: ``{"start": 32, "predictions": [3, 1, ...], "t": 1.25, "epoch": 1}``,
the micro-batch's first image index in the dataset, the predicted class of each of its images,
and when it arrived (seconds since the run started). A run that is resumed appends a line
``{"resumed": ..., "t": ...}`` first.

What a crash can lose: every line is written and flushed to the operating system as its result
arrives, so a coordinator killed by any signal (SIGKILL, the OOM killer) loses no result that
reached it; only the micro-batches still in flight then (at most the run's window) are computed
again by ``edgesplit run --resume``. The file is also ``fsync``ed every :data:`FSYNC_EVERY_S`
seconds, so a power cut loses at most that much. A line cut by the crash is ignored when read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edgesplit.errors import ConfigError

FILE = "results.jsonl"
FSYNC_EVERY_S = 2.0
"""Longest time a written result waits for ``fsync`` (what a power cut can lose)."""


@dataclass(frozen=True)
class LoggedResult:
    start: int
    """Dataset index of the micro-batch's first image."""
    predictions: tuple[int, ...]
    t: float


class ResultLog:
    """Appends results to ``folder/results.jsonl`` (see the module doc). Use as a context
    manager, or call :meth:`close`."""

    def __init__(self, folder: Path, started: float | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / FILE
        self._file: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._started = time.time() if started is None else started
        self._synced = time.monotonic()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        if time.monotonic() - self._synced >= FSYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def append(self, start: int, predictions: Sequence[int], epoch: int | None = None) -> None:
        record: dict[str, Any] = {
            "start": start,
            "predictions": list(predictions),
            "t": round(time.time() - self._started, 4),
        }
        if epoch is not None:
            record["epoch"] = epoch
        self._write(record)

    def mark_resumed(self, done_images: int) -> None:
        self._write({"resumed": done_images, "t": 0.0})

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read(folder: Path) -> list[LoggedResult]:
    """Every complete result line of ``folder/results.jsonl`` in order (a later line for the
    same ``start`` replaces an earlier one); [] when there is no log."""
    path = folder / FILE
    if not path.exists():
        return []
    by_start: dict[int, LoggedResult] = {}
    for record in _lines(path):
        if "start" not in record:
            continue
        try:
            result = LoggedResult(
                int(record["start"]),
                tuple(int(p) for p in record["predictions"]),
                float(record.get("t", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: a result line is malformed ({exc}): {record}") from None
        by_start[result.start] = result
    return [by_start[k] for k in sorted(by_start)]


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                return  # cut by a crash mid-write: everything before it is whole
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def completed_images(folder: Path) -> int:
    """How many images ``folder``'s log holds a prediction for."""
    return sum(len(r.predictions) for r in read(folder))
