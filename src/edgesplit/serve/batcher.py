"""Admission and dynamic batching for ``edgesplit serve``.

A :class:`Job` is one HTTP request: ``n`` preprocessed images. The :class:`Batcher` holds jobs
whose images are not all sent yet (at most ``max_queue`` of them: one more is refused with
:class:`~edgesplit.errors.RequestError` 429) and packs their images, oldest first, into
micro-batches of at most ``max_batch`` images. A micro-batch leaves when it is full or when the
oldest waiting image has waited ``max_wait_s``, whichever comes first (Triton's dynamic batcher:
max batch size, max queue delay). A job larger than ``max_batch`` spans several micro-batches;
one micro-batch may hold parts of several jobs. A job whose deadline passed before its images
left is dropped (it gets 504) instead of costing the pipeline.

Every method takes the time (``now``, seconds, ``time.time()``) from the caller and locks one
lock, so the same object is used from the server's thread (submit) and the run's (take).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from edgesplit.errors import RequestError
from edgesplit.runtime.live import ResultSeen


@dataclass(eq=False)
class Job:
    """One request's images and, as results arrive, its outputs (one row per image)."""

    job_id: int
    x: torch.Tensor
    """Preprocessed images, (n, C, S, S)."""
    received: float
    deadline: float | None
    """Absolute time after which the answer is useless (504), or None."""
    on_done: Callable[[Job], None]
    """Called once, from the run's thread, when every image has a result or the job failed."""
    sent: int = 0
    """Images handed to micro-batches so far."""
    finished: int = 0
    outputs: torch.Tensor | None = None
    first_sent: float | None = None
    """When its first micro-batch left the batcher."""
    error: RequestError | None = None
    parts: list[int] = field(default_factory=list)
    """Run request ids of the micro-batches that carry its images."""
    timing: ResultSeen | None = None
    """How the micro-batch that delivered its last rows spent its time (hop records)."""
    _called: bool = False

    @property
    def images(self) -> int:
        return int(self.x.shape[0])

    def fail(self, error: RequestError) -> None:
        if self._called:
            return
        self.error = error
        self._called = True
        self.on_done(self)

    def deliver(self, start: int, rows: torch.Tensor) -> None:
        """Rows ``[start, start + len(rows))`` of the outputs arrived."""
        if self._called:
            return  # failed (deadline) meanwhile; the late rows are dropped
        if self.outputs is None:
            self.outputs = torch.empty((self.images, *rows.shape[1:]), dtype=rows.dtype)
        self.outputs[start : start + rows.shape[0]] = rows
        self.finished += int(rows.shape[0])
        if self.finished >= self.images:
            self._called = True
            self.on_done(self)


@dataclass(frozen=True)
class Part:
    """Images ``[start, end)`` of ``job`` at ``offset`` in a micro-batch."""

    job: Job
    start: int
    end: int
    offset: int


@dataclass(frozen=True)
class MicroBatch:
    x: torch.Tensor
    parts: tuple[Part, ...]
    formed: float

    def deliver(self, output: torch.Tensor) -> None:
        """Hand each job its rows of the micro-batch's output."""
        for p in self.parts:
            p.job.deliver(p.start, output[p.offset : p.offset + (p.end - p.start)])


@dataclass(frozen=True)
class BatchPolicy:
    """Named defaults of the dynamic batcher and the admission queue."""

    max_batch: int = 16
    """Images per micro-batch at most."""
    max_wait_s: float = 0.005
    """How long the oldest waiting image may wait for a fuller micro-batch."""
    max_queue: int = 64
    """Requests waiting for their images to leave; one more gets 429."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise RequestError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_s < 0:
            raise RequestError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        if self.max_queue < 1:
            raise RequestError(f"max_queue must be >= 1, got {self.max_queue}")


class Batcher:
    """The admission queue and the dynamic batcher (see the module doc)."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._jobs: deque[Job] = deque()
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        """Notified when jobs arrive or leave (the session's waker waits on it)."""
        self.refused = 0
        self.expired = 0

    def submit(self, job: Job, retry_after_s: Callable[[], float] = lambda: 1.0) -> None:
        """Queue ``job``; :class:`RequestError` 429 when ``max_queue`` jobs already wait, with
        ``retry_after_s()`` (asked only then) as its Retry-After."""
        with self._lock:
            full = len(self._jobs) >= self.policy.max_queue
            if full:
                self.refused += 1
            else:
                self._jobs.append(job)
                self.changed.notify_all()
        if full:
            raise RequestError(
                f"the queue is full ({self.policy.max_queue} requests waiting); retry later",
                status=429,
                retry_after_s=retry_after_s(),
            )

    def queued(self) -> tuple[int, int]:
        """(requests, images) waiting to be sent."""
        with self._lock:
            return len(self._jobs), sum(j.images - j.sent for j in self._jobs)

    def ready_in_s(self, now: float) -> float | None:
        """Seconds until a micro-batch may leave (0: now); None when nothing waits."""
        with self._lock:
            return self._ready_in(now)

    def ready_in_locked(self, now: float) -> float | None:
        """:meth:`ready_in_s` for a caller holding :attr:`changed` (the session's waker)."""
        return self._ready_in(now)

    def _ready_in(self, now: float) -> float | None:
        if not self._jobs:
            return None
        if sum(j.images - j.sent for j in self._jobs) >= self.policy.max_batch:
            return 0.0
        return max(0.0, self._jobs[0].received + self.policy.max_wait_s - now)

    def take(self, now: float) -> MicroBatch | None:
        """The next micro-batch if one may leave now (full, or its oldest image waited
        ``max_wait_s``), else None. Jobs past their deadline are failed with 504 first."""
        expired: list[Job] = []
        with self._lock:
            while self._jobs and self._jobs[0].deadline is not None:
                if self._jobs[0].deadline > now and self._jobs[0].error is None:
                    break
                expired.append(self._jobs.popleft())
            self.expired += len(expired)
            ready = self._ready_in(now)
            batch = self._form(now) if ready is not None and ready <= 0 else None
            if batch is not None and not batch.parts:
                batch = None  # every waiting job had failed meanwhile
            self.changed.notify_all()
        for job in expired:
            job.fail(RequestError("the request's deadline passed while it waited", status=504))
        return batch

    def _form(self, now: float) -> MicroBatch:
        parts: list[Part] = []
        size = 0
        while self._jobs and size < self.policy.max_batch:
            job = self._jobs[0]
            if job.error is not None:  # failed meanwhile (its client gave up)
                self._jobs.popleft()
                continue
            take = min(job.images - job.sent, self.policy.max_batch - size)
            parts.append(Part(job, job.sent, job.sent + take, size))
            if job.first_sent is None:
                job.first_sent = now
            job.sent += take
            size += take
            if job.sent >= job.images:
                self._jobs.popleft()
        x = torch.cat([p.job.x[p.start : p.end] for p in parts]) if parts else torch.empty(0)
        return MicroBatch(x, tuple(parts), now)

    def drain(self, error: RequestError) -> None:
        """Fail every waiting job with ``error`` (the session ends)."""
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
            self.changed.notify_all()
        for job in jobs:
            job.fail(error)
