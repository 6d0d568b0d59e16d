"""Adaptive re-planning while a run goes (issue #6): a pure live state (:mod:`.state`), a pure
policy (:mod:`.policy`) and the thin loop that runs it against a coordinator
(:mod:`.controller`)."""

from edgesplit.adapt.policy import AdaptPolicy, Decision, Hold, decide, live_problem
from edgesplit.adapt.state import (
    AdaptState,
    DeviceEstimate,
    LinkEstimate,
    LinkProbed,
    ResultArrived,
    SensorsSeen,
    StageSeen,
    observe,
    start,
)

__all__ = [
    "AdaptPolicy",
    "AdaptState",
    "Decision",
    "DeviceEstimate",
    "Hold",
    "LinkEstimate",
    "LinkProbed",
    "ResultArrived",
    "SensorsSeen",
    "StageSeen",
    "decide",
    "live_problem",
    "observe",
    "start",
]
