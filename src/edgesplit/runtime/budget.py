"""A worker's memory budget: what it may hold, in bytes, before it says RESOURCE_EXHAUSTED.

The budget bounds the worker process's resident memory. Two parts count against it:

* the *fixed* part: the process's RSS while nothing is queued (the interpreter, the model's
  units, installed stages and their arenas), re-read whenever the worker is idle, and
* *reservations*: bytes of work accepted and not yet finished (a decoded micro-batch waiting
  for compute with the estimated working memory of its stage, an output waiting for its link,
  a model or stage being built, a profile's activations).

A request whose reservation would pass the budget is refused at once with
``RESOURCE_EXHAUSTED`` (the coordinator's uploads and a worker's sender treat that as "busy,
retry later"). The RSS itself is also checked, so memory nobody reserved still stops new
work. Default budget: :data:`DEFAULT_SHARE` of the device's RAM (``--max-memory-mb``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import psutil

from edgesplit.errors import Refused

DEFAULT_SHARE = 0.5
"""Share of the device's total RAM a worker may use unless ``--max-memory-mb`` says."""
IDLE_REFRESH_S = 0.5
"""How often (at most) the fixed part is re-read while the worker is idle."""
MB = 1 << 20


def default_budget_bytes() -> int:
    """:data:`DEFAULT_SHARE` of this device's RAM."""
    return int(psutil.virtual_memory().total * DEFAULT_SHARE)


@dataclass
class Reservation:
    """Bytes held against a :class:`Budget` until :meth:`release` (idempotent)."""

    budget: Budget | None
    nbytes: int
    what: str

    def release(self) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget._give_back(self.nbytes)


class Budget:
    """Thread-safe accounting of a worker's memory against ``limit_bytes``."""

    def __init__(self, limit_bytes: int, count_process: bool = True) -> None:
        """``count_process=False`` counts reservations only: for a worker that shares its
        process with others (in-process tests), whose RSS is not its own."""
        self.limit_bytes = int(limit_bytes)
        self.count_process = count_process
        self._lock = threading.Lock()
        self._process = psutil.Process()
        self._reserved = 0
        self._fixed = self._counted_rss()
        self._fixed_at = time.monotonic()

    def rss_bytes(self) -> int:
        return int(self._process.memory_info().rss)

    def _counted_rss(self) -> int:
        return self.rss_bytes() if self.count_process else 0

    @property
    def reserved_bytes(self) -> int:
        with self._lock:
            return self._reserved

    @property
    def fixed_bytes(self) -> int:
        with self._lock:
            return self._fixed

    def refresh_fixed(self, force: bool = False) -> None:
        """Re-read the fixed part when nothing is reserved (at most every
        :data:`IDLE_REFRESH_S` unless ``force``)."""
        now = time.monotonic()
        with self._lock:
            if self._reserved or (not force and now - self._fixed_at < IDLE_REFRESH_S):
                return
        rss = self._counted_rss()
        with self._lock:
            if not self._reserved:
                self._fixed, self._fixed_at = rss, now

    def free_bytes(self) -> int:
        with self._lock:
            return self.limit_bytes - self._fixed - self._reserved

    def reserve(self, nbytes: int, what: str) -> Reservation:
        """Hold ``nbytes`` for ``what``, or raise ``Refused(RESOURCE_EXHAUSTED)`` saying how much
        is in use and what the budget is."""
        nbytes = max(0, int(nbytes))
        self.refresh_fixed()
        rss = self._counted_rss()
        with self._lock:
            used = max(self._fixed + self._reserved, rss)
            if used + nbytes > self.limit_bytes:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"memory budget: {what} needs {nbytes / MB:.1f} MB, {used / MB:.0f} MB of "
                    f"{self.limit_bytes / MB:.0f} MB in use (RSS {rss / MB:.0f} MB); retry later",
                )
            self._reserved += nbytes
        return Reservation(self, nbytes, what)

    def check(self, nbytes: int, what: str) -> None:
        """Raise like :meth:`reserve` when ``nbytes`` more would not fit; holds nothing."""
        self.reserve(nbytes, what).release()

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - nbytes)
