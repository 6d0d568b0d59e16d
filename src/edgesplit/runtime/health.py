"""Device health as data: the states a device passes through and one pure transition function.

::

    HEALTHY --missed heartbeat--> SUSPECT --silent for deadline_s--> LOST
       ^                             |                                 |  ^
       +-------heartbeat ok----------+                   heartbeat ok  |  | missed, send failed
       |                                                               v  |
       +-------- healthy for probation_s (no beat missed) ---------- PROBATION

A confirmed failed send to a device (a peer reported it and our own probe failed too) makes it
LOST at once. Only HEALTHY and SUSPECT devices take work: a SUSPECT device may be merely slow to
answer, so it keeps its stage until the deadline passes; a PROBATION device must first prove
it stays up. Times are seconds on the coordinator's clock.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from edgesplit.errors import ConfigError


class DeviceState(enum.Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    LOST = "lost"
    PROBATION = "probation"


@dataclass(frozen=True)
class HealthPolicy:
    """When a silent device is given up, and when a returning one is trusted again."""

    deadline_s: float = 2.0
    """A device without a successful heartbeat for this long is LOST."""
    probation_s: float = 3.0
    """A LOST device that answers again takes work after this long without a missed beat."""

    def __post_init__(self) -> None:
        if not self.deadline_s > 0:
            raise ConfigError(f"deadline_s must be > 0, got {self.deadline_s}")
        if not self.probation_s >= 0:
            raise ConfigError(f"probation_s must be >= 0, got {self.probation_s}")


@dataclass(frozen=True)
class DeviceHealth:
    """One device as the coordinator sees it. ``since``: when it entered ``state``."""

    state: DeviceState
    since: float
    last_ok: float
    """Time of the last successful heartbeat."""
    reason: str = ""
    """Why it is in this state (empty while healthy)."""

    @property
    def usable(self) -> bool:
        """May a plan give this device a stage?"""
        return self.state in (DeviceState.HEALTHY, DeviceState.SUSPECT)


def healthy(now: float) -> DeviceHealth:
    """A device that just answered a health check."""
    return DeviceHealth(DeviceState.HEALTHY, since=now, last_ok=now)


@dataclass(frozen=True)
class HeartbeatOk:
    t: float


@dataclass(frozen=True)
class HeartbeatMissed:
    t: float
    why: str


@dataclass(frozen=True)
class SendFailed:
    """A peer could not send to this device, and our own probe could not reach it either."""

    t: float
    why: str


@dataclass(frozen=True)
class Tick:
    """Time passes (lets a heartbeat that never returns still hit the deadline)."""

    t: float


Observation = HeartbeatOk | HeartbeatMissed | SendFailed | Tick


def step(health: DeviceHealth, obs: Observation, policy: HealthPolicy) -> DeviceHealth:
    """The device's health after ``obs`` (pure). A transition is a change of ``.state``."""
    state = health.state
    if isinstance(obs, HeartbeatOk):
        if state is DeviceState.HEALTHY:
            return dataclasses.replace(health, last_ok=obs.t)
        if state is DeviceState.SUSPECT:
            return DeviceHealth(DeviceState.HEALTHY, obs.t, obs.t)
        if state is DeviceState.LOST:
            return DeviceHealth(DeviceState.PROBATION, obs.t, obs.t, "answering again")
        if obs.t - health.since >= policy.probation_s:
            return DeviceHealth(DeviceState.HEALTHY, obs.t, obs.t)
        return dataclasses.replace(health, last_ok=obs.t)
    if state is DeviceState.LOST:
        return health
    if isinstance(obs, SendFailed):
        return DeviceHealth(DeviceState.LOST, obs.t, health.last_ok, f"send failed: {obs.why}")
    silent_s = obs.t - health.last_ok
    if isinstance(obs, HeartbeatMissed):
        if state is DeviceState.PROBATION:
            return DeviceHealth(DeviceState.LOST, obs.t, health.last_ok, obs.why)
        if silent_s >= policy.deadline_s:
            return DeviceHealth(
                DeviceState.LOST,
                obs.t,
                health.last_ok,
                f"no heartbeat for {silent_s:.1f} s (last: {obs.why})",
            )
        if state is DeviceState.HEALTHY:
            return DeviceHealth(DeviceState.SUSPECT, obs.t, health.last_ok, obs.why)
        return health
    if silent_s >= policy.deadline_s:
        return DeviceHealth(
            DeviceState.LOST, obs.t, health.last_ok, f"no heartbeat for {silent_s:.1f} s"
        )
    return health
