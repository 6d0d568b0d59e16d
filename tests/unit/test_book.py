"""The run's request book and its next action: pure, no sockets, no processes."""

from __future__ import annotations

import torch

from edgesplit.runtime import book as bk
from edgesplit.runtime import health as hl
from edgesplit.runtime.records import Transition

X = torch.zeros(2, 3)


def _health(**states: hl.DeviceState) -> dict[str, hl.DeviceHealth]:
    return {
        name: hl.DeviceHealth(state, since=0.0, last_ok=0.0, reason="" if state.value == "healthy"
                              else f"{name} {state.value}")
        for name, state in states.items()
    }  # fmt: skip


H, L = hl.DeviceState.HEALTHY, hl.DeviceState.LOST


def _book(planned_for: tuple[str, ...], sent: dict[int, int]) -> bk.Book:
    """A book planned for ``planned_for`` with request id -> epoch of its one send."""
    book = bk.Book(planned_for=planned_for)
    for request_id, epoch in sent.items():
        assert bk.admit(book, request_id, X, finished=False) is None
        bk.sent(book, request_id, epoch, bytes_out=24, t=1.0)
    return book


def test_nothing_to_do_when_every_plan_is_on_usable_devices() -> None:
    book = _book(("a", "b"), {1: 1, 2: 1})
    assert bk.next_action(book, _health(a=H, b=H), {1: ("a", "b")}) is None


def test_every_device_lost_aborts_and_says_what_finished() -> None:
    book = _book(("a", "b"), {3: 1})
    book.finished = 4
    action = bk.next_action(book, _health(a=L, b=L), {1: ("a", "b")})
    assert isinstance(action, bk.Abort)
    assert "every device is lost (a: a lost; b: b lost)" in action.reason
    assert "4 requests completed, 1 unfinished" in action.reason


def test_changed_devices_replan_first_and_name_what_changed() -> None:
    book = _book(("a", "b", "c"), {1: 1})
    action = bk.next_action(book, _health(a=H, b=L, c=H), {1: ("a", "b")})
    assert action == bk.Replan(("a", "c"), "lost b")
    back = bk.next_action(bk.Book(planned_for=("a",)), _health(a=H, b=H), {1: ("a",)})
    assert back == bk.Replan(("a", "b"), "re-admitted b")


def test_requests_on_a_dead_plan_replay_in_id_order_until_none_is_left() -> None:
    book = _book(("a", "c"), {5: 1, 2: 1, 9: 2})
    health, installed = _health(a=H, b=L, c=H), {1: ("a", "b"), 2: ("a", "c")}
    seen = []
    while isinstance(action := bk.next_action(book, health, installed), bk.Replay):
        seen.append(action.request_id)
        assert action.after_loss and action.lost == ("b",)
        bk.replaying(book, action)
        bk.sent(book, action.request_id, 2, bytes_out=24, t=2.0)
    assert seen == [2, 5]
    assert action == bk.Drop(1, ("a",), "epoch 1 drained")  # nothing uses epoch 1 any more
    assert book.replayed == 2 and book.pending[2].attempts == 2 and book.pending[9].attempts == 1


def test_a_request_whose_epoch_is_gone_is_replayed() -> None:
    book = _book(("a",), {1: 7})
    action = bk.next_action(book, _health(a=H), {8: ("a",)})
    assert action == bk.Replay(1, "lost its epoch", after_loss=True, lost=())


def test_drained_old_epochs_drop_on_their_usable_devices_only() -> None:
    book = _book(("a", "c"), {1: 2, 2: 3})
    health = _health(a=H, b=L, c=H)
    installed = {1: ("a", "b"), 2: ("a", "c"), 3: ("c", "a")}
    # epoch 1 has no request left; epoch 2 still has one; epoch 3 is current
    assert bk.next_action(book, health, installed) == bk.Drop(1, ("a",), "epoch 1 drained")
    del installed[1]
    assert bk.next_action(book, health, installed) is None
    assert bk.completed(book, 1, epoch=2, arrival=3.0) is not None
    assert bk.next_action(book, health, installed) == bk.Drop(2, ("a", "c"), "epoch 2 drained")


def test_failure_reports_replay_until_the_attempt_limit() -> None:
    book = _book(("a",), {1: 1})
    replay = bk.after_failure(book, 1, epoch=1, why="boom")
    assert replay == bk.Replay(1, "boom")
    bk.replaying(book, replay)
    bk.sent(book, 1, 1, bytes_out=24, t=2.0)
    bk.sent(book, 1, 1, bytes_out=24, t=3.0)
    abort = bk.after_failure(book, 1, epoch=1, why="boom again", max_attempts=3)
    assert abort == bk.Abort("request 1 failed 3 times; last: boom again")


def test_failure_reports_for_other_copies_are_ignored() -> None:
    book = _book(("a",), {1: 2})
    assert bk.after_failure(book, 1, epoch=1, why="old copy") is None
    assert bk.after_failure(book, 42, epoch=2, why="finished") is None


def test_results_are_counted_once_whichever_copy_arrives_first() -> None:
    book = _book(("a",), {1: 1})
    assert bk.completed(book, 1, epoch=1, arrival=2.0) is not None
    assert bk.completed(book, 1, epoch=2, arrival=2.5) is None
    assert (book.finished, book.duplicates, book.pending) == (1, 1, {})


def test_a_request_id_given_twice_is_refused() -> None:
    book = _book(("a",), {1: 1})
    assert bk.admit(book, 1, X, finished=False) == (
        "request id 1 was given twice; ids must be unique"
    )
    assert bk.admit(book, 2, X, finished=True) is not None
    assert bk.admit(book, 3, X, finished=False) is None


def test_loss_credit_and_recovery_follow_the_failure() -> None:
    book = _book(("a", "b"), {1: 1, 2: 1})
    lost = Transition("b", 10.0, "suspect", "lost", "no heartbeat")
    other = Transition("a", 10.5, "healthy", "suspect", "slow")
    assert [f.device for f in bk.note_losses(book, [lost, other])] == ["b"]
    bk.replanned(book, ("a",), epoch=2)
    failure = book.failures[0]
    assert failure.recovery_epoch == 2
    for request_id in (1, 2):
        action = bk.next_action(book, _health(a=H, b=L), {1: ("a", "b"), 2: ("a",)})
        assert isinstance(action, bk.Replay) and action.request_id == request_id
        bk.replaying(book, action)
        bk.sent(book, request_id, 2, bytes_out=24, t=11.0)
    assert failure.replayed == 2
    # a failure report's replay is not a loss's
    bk.replaying(book, bk.Replay(1, "boom"))
    assert failure.replayed == 2 and book.replayed == 3
    # a result under the old epoch does not end the recovery; one under the new one does
    bk.completed(book, 1, epoch=1, arrival=11.5)
    assert failure.recovery_s is None
    bk.completed(book, 2, epoch=2, arrival=12.25)
    assert failure.recovery_s == 2.25
