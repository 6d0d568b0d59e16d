"""The one frozen Timeouts object and the module constants that read it."""

from __future__ import annotations

import dataclasses

import pytest

from edgesplit.runtime import coordinator, links, runner
from edgesplit.shared.timeouts import TIMEOUTS, Timeouts


def test_timeouts_are_frozen_positive_seconds() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TIMEOUTS.check_s = 1.0  # type: ignore[misc]
    values = dataclasses.asdict(TIMEOUTS)
    assert all(name.endswith("_s") for name in values)
    assert all(isinstance(v, float) and v > 0 for v in values.values()), values


def test_an_override_is_a_new_object() -> None:
    patient = dataclasses.replace(TIMEOUTS, send_s=120.0)
    assert patient.send_s == 120.0 and TIMEOUTS.send_s == Timeouts().send_s


def test_the_runtime_reads_its_deadlines_from_it() -> None:
    assert TIMEOUTS.check_s == coordinator.CHECK_TIMEOUT_S
    assert TIMEOUTS.engine_install_s == coordinator.ENGINE_INSTALL_S
    assert TIMEOUTS.send_s == links.SEND_TIMEOUT_S
    assert TIMEOUTS.confirm_s == runner.CONFIRM_TIMEOUT_S
