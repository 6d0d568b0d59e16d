"""The request book of one run, and what the run does next: pure bookkeeping, no I/O.

A :class:`Book` holds the unfinished requests (with their input, attempts and the epoch of
their last send), the epochs sent under, the device failures seen and what they cost, and the
counts of replays and duplicate results. Functions here read and update it; none of them
sends, sleeps or reads a clock (times are arguments), so they are tested without a cluster.

What the run does next is :func:`next_action`, a chain of ``_a(...) or _b(...)`` checks in
order of urgency (as in exo's ``worker/plan.py``)::

    no usable device                     -> Abort
    usable devices != planned for        -> Replan (the runner installs a new epoch)
    a request sent under a dead plan     -> Replay (device losses; no attempt limit)
    an old epoch no request still uses   -> Drop
    otherwise                            -> None: nothing to do

The runner applies one action and asks again until the answer is None; every action changes
what the next call sees (a replay moves its request to the current epoch, a replan records the
devices planned for, a drop removes the epoch from the installed ones), so the loop ends.
A failure report or a stall asks :func:`after_failure`, which limits attempts (``Abort`` once a
request has been sent ``max_attempts`` times).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgesplit.runtime import health as hl
from edgesplit.runtime.records import DeviceFailure, Transition

if TYPE_CHECKING:
    import torch

MAX_ATTEMPTS = 3
"""Sends of one request after failure reports or stalls (not device losses) before giving up."""

Installed = Mapping[int, Sequence[str]]
"""Epochs the workers hold: epoch -> the devices of its stages, in stage order."""


@dataclass
class Pending:
    """An unfinished request: its input stays here until its result arrives (for replays)."""

    x: torch.Tensor
    attempts: int = 0
    epoch: int = 0
    """The epoch of the last send."""
    send_start: float = 0.0
    bytes_out: int = 0


@dataclass
class Book:
    """What one run has sent and still waits for (see the module docstring)."""

    pending: dict[int, Pending] = field(default_factory=dict)
    epochs: set[int] = field(default_factory=set)
    """Every epoch a request was sent under."""
    failures: list[DeviceFailure] = field(default_factory=list)
    planned_for: tuple[str, ...] = ()
    """The usable devices the current plan was made for."""
    finished: int = 0
    """Requests whose result arrived."""
    replayed: int = 0
    duplicates: int = 0


# --- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Abort:
    """The run cannot finish."""

    reason: str


@dataclass(frozen=True)
class Replan:
    """Install a plan for ``usable`` (cluster order)."""

    usable: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Replay:
    """Send ``request_id`` again under the current epoch. ``after_loss``: its plan lost a
    device (``lost``; empty when its epoch is gone), else a failure report or a stall."""

    request_id: int
    reason: str
    after_loss: bool = False
    lost: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drop:
    """Tell ``devices`` (the usable ones of its plan) to forget ``epoch``."""

    epoch: int
    devices: tuple[str, ...]
    reason: str


Action = Abort | Replan | Replay | Drop


def next_action(
    book: Book, health: Mapping[str, hl.DeviceHealth], installed: Installed
) -> Action | None:
    """What the run does next to keep its plan on usable devices (pure; see module docstring).
    ``health``: every device in cluster order; ``installed``: the epochs the workers hold (the
    newest is the current one)."""
    usable = tuple(name for name, h in health.items() if h.usable)
    return (
        _abort(book, health, usable)
        or _replan(book, usable)
        or _replay(book, usable, installed)
        or _drop(book, usable, installed)
    )


def _abort(
    book: Book, health: Mapping[str, hl.DeviceHealth], usable: tuple[str, ...]
) -> Abort | None:
    if usable:
        return None
    lost = "; ".join(f"{name}: {h.reason or h.state.value}" for name, h in health.items())
    return Abort(
        f"run cannot finish: every device is lost ({lost}); "
        f"{book.finished} requests completed, {len(book.pending)} unfinished"
    )


def _replan(book: Book, usable: tuple[str, ...]) -> Replan | None:
    if usable == book.planned_for:
        return None
    lost = [d for d in book.planned_for if d not in usable]
    back = [d for d in usable if d not in book.planned_for]
    parts = ([f"lost {', '.join(lost)}"] if lost else []) + (
        [f"re-admitted {', '.join(back)}"] if back else []
    )
    return Replan(usable, "; ".join(parts) or "devices changed")


def _replay(book: Book, usable: tuple[str, ...], installed: Installed) -> Replay | None:
    for request_id in sorted(book.pending):
        devices = installed.get(book.pending[request_id].epoch, ())
        dead = tuple(d for d in devices if d not in usable)
        if devices and not dead:
            continue
        why = f"lost {', '.join(dead)}" if dead else "lost its epoch"
        return Replay(request_id, why, after_loss=True, lost=dead)
    return None


def _drop(book: Book, usable: tuple[str, ...], installed: Installed) -> Drop | None:
    if not installed:
        return None
    current = max(installed)
    busy = {p.epoch for p in book.pending.values()}
    for epoch in sorted(installed):
        if epoch < current and epoch not in busy:
            devices = tuple(d for d in installed[epoch] if d in usable)
            return Drop(epoch, devices, f"epoch {epoch} drained")
    return None


def after_failure(
    book: Book, request_id: int, epoch: int, why: str, max_attempts: int = MAX_ATTEMPTS
) -> Replay | Abort | None:
    """A stage reported that ``request_id`` (sent under ``epoch``) failed, or it stalled
    (``epoch`` is then its own): replay it, give up after ``max_attempts`` sends, or None when
    it is not ours to replay (finished already, or a copy sent under another epoch)."""
    pending = book.pending.get(request_id)
    if pending is None or pending.epoch != epoch:
        return None
    if pending.attempts >= max_attempts:
        return Abort(f"request {request_id} failed {pending.attempts} times; last: {why}")
    return Replay(request_id, why)


# --- updates -------------------------------------------------------------------------------------


def admit(book: Book, request_id: int, x: torch.Tensor, finished: bool) -> str | None:
    """Add a new request; the reason it is refused (its id was given before), or None."""
    if request_id in book.pending or finished:
        return f"request id {request_id} was given twice; ids must be unique"
    book.pending[request_id] = Pending(x=x)
    return None


def sent(book: Book, request_id: int, epoch: int, bytes_out: int, t: float) -> Pending:
    """Record one send of ``request_id`` under ``epoch`` at ``t``."""
    pending = book.pending[request_id]
    pending.attempts += 1
    pending.epoch = epoch
    pending.bytes_out = bytes_out
    pending.send_start = t
    book.epochs.add(epoch)
    return pending


def replaying(book: Book, action: Replay) -> None:
    """Count a replay, and credit it to the newest failure of a device it lost (of any device
    when its epoch is gone)."""
    book.replayed += 1
    if not action.after_loss:
        return
    for failure in reversed(book.failures):
        if failure.device in action.lost or not action.lost:
            failure.replayed += 1
            return
    if book.failures:
        book.failures[-1].replayed += 1


def replanned(book: Book, usable: tuple[str, ...], epoch: int | None) -> None:
    """The plan now fits ``usable``; ``epoch``: the one installed for it (None: no new one).
    Failures not yet followed by a new plan recover under ``epoch``."""
    book.planned_for = usable
    if epoch is None:
        return
    for failure in book.failures:
        if failure.recovery_epoch is None:
            failure.recovery_epoch = epoch


def note_losses(book: Book, transitions: Sequence[Transition]) -> list[DeviceFailure]:
    """A :class:`DeviceFailure` for each transition to LOST in ``transitions`` (new ones)."""
    new = [
        DeviceFailure(t.device, t.t, t.reason)
        for t in transitions
        if t.after == hl.DeviceState.LOST.value
    ]
    book.failures.extend(new)
    return new


def completed(book: Book, request_id: int, epoch: int, arrival: float) -> Pending | None:
    """A result for ``request_id`` (computed under ``epoch``) arrived at ``arrival``: the
    request it finishes, or None for a duplicate (a replayed copy arrived first). Ends the
    recovery of every failure whose new plan this result ran under."""
    pending = book.pending.pop(request_id, None)
    if pending is None:
        book.duplicates += 1
        return None
    book.finished += 1
    for failure in book.failures:
        ended = failure.recovery_epoch is not None and epoch >= failure.recovery_epoch
        if failure.recovery_s is None and ended:
            failure.recovery_s = arrival - failure.t
    return pending
