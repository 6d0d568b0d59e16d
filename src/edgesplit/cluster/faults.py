"""Fault injection for emulated clusters: spec strings, and a thread that fires them on time.

A spec is ``TARGET:ACTION@AT[+DURATION]``, times as ``10s``, ``1.5s`` or ``500ms`` after the
run (or the emulator) starts::

    pi2:stress@10s            a CPU hog takes 3/4 of pi2's CPU share (+DURATION ends it)
    pi3:kill@20s              SIGKILL: the device crashes
    pi2:pause@15s+5s          SIGSTOP, then SIGCONT 5 s later (no +DURATION: paused for good)
    link:pi1-pi2:bandwidth=50mbps@10s          both directions; units kbps, mbps, gbps
    link:pi1-pi2:bandwidth=50mbps,latency=5ms@10s+20s

A link change is applied where links are emulated, in the sending worker: the injector calls
the worker's ``SetLink`` RPC on both ends (authenticated with the cluster token). The network
changes under the coordinator's feet, as a real one would: the cluster file and the planner's
view stay as they were. Links to the coordinator cannot be injected (its upload side is shaped
in the coordinator process, which the emulator does not reach).

On namespaced hosts (``--hosts``, :mod:`edgesplit.cluster.emulate_hosts`) the kernel shapes
bandwidth: a bandwidth change is a ``tc class change`` of the link's HTB classes, both
directions, and only a latency change goes to the workers' ``SetLink``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import grpc

from edgesplit.errors import ConfigError, EdgesplitError, WorkerError
from edgesplit.shared.timeouts import TIMEOUTS

if TYPE_CHECKING:
    from edgesplit.cluster.emulate import EmulatedCluster

log = logging.getLogger(__name__)

Action = Literal["stress", "kill", "pause", "link"]
ACTIONS: tuple[Action, ...] = ("stress", "kill", "pause", "link")
FORM = (
    'expected DEVICE:ACTION@TIME[+DURATION] with ACTION stress, kill or pause (e.g. "pi2:pause'
    '@15s+5s"), or link:A-B:bandwidth=50mbps[,latency=5ms]@TIME[+DURATION]'
)
_TIME = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(s|ms)$")
_RATE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(kbps|mbps|gbps)$")
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
_PER_MBPS = {"kbps": 1e-3, "mbps": 1.0, "gbps": 1e3}
LINK_TIMEOUT_S = TIMEOUTS.fault_link_s


@dataclass(frozen=True)
class Injection:
    """One parsed ``--inject`` spec. ``devices``: the device, or a link's two ends."""

    spec: str
    action: Action
    devices: tuple[str, ...]
    at_s: float
    duration_s: float | None = None
    bandwidth_mbps: float | None = None
    """For links: the new bandwidth (None: unchanged)."""
    latency_ms: float | None = None


def _seconds(text: str, what: str, spec: str) -> float:
    match = _TIME.match(text.strip())
    if not match:
        raise ConfigError(f"--inject {spec!r}: {what} {text!r} is not a time like 10s or 500ms")
    value = float(match.group(1))
    return value / 1000.0 if match.group(2) == "ms" else value


def _link_params(text: str, spec: str) -> tuple[float | None, float | None]:
    bandwidth = latency = None
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        value = value.strip().lower()
        if key == "bandwidth" and sep:
            match = _RATE.match(value)
            if not match or not float(match.group(1)) > 0:
                raise ConfigError(
                    f"--inject {spec!r}: bandwidth {value!r} is not a rate like 50mbps "
                    "(units kbps, mbps, gbps; > 0)"
                )
            bandwidth = float(match.group(1)) * _PER_MBPS[match.group(2)]
        elif key == "latency" and sep:
            latency = _seconds(value, "latency", spec) * 1000.0
        else:
            raise ConfigError(
                f"--inject {spec!r}: link setting {item!r} is not bandwidth=RATE or latency=TIME"
            )
    return bandwidth, latency


def parse_injection(spec: str) -> Injection:
    """Parse one spec strictly; :class:`ConfigError` names the expected form."""
    body, at_sep, when = spec.rpartition("@")
    if not at_sep or not body:
        raise ConfigError(f"--inject {spec!r}: no @TIME; {FORM}")
    at_text, plus, duration_text = when.partition("+")
    at_s = _seconds(at_text, "time", spec)
    duration = _seconds(duration_text, "duration", spec) if plus else None
    if duration is not None and not duration > 0:
        raise ConfigError(f"--inject {spec!r}: the duration must be > 0")
    parts = body.split(":")
    if parts[0] == "link":
        if len(parts) != 3:
            raise ConfigError(f"--inject {spec!r}: {FORM}")
        ends = tuple(parts[1].split("-"))
        if len(ends) != 2 or not all(_NAME.match(e) for e in ends) or ends[0] == ends[1]:
            raise ConfigError(
                f"--inject {spec!r}: link {parts[1]!r} is not two different device names "
                "joined by '-' (names with '-' cannot be used in link injections)"
            )
        if "coordinator" in ends:
            raise ConfigError(
                f"--inject {spec!r}: links to the coordinator cannot be injected; "
                "give a link between two devices"
            )
        bandwidth, latency = _link_params(parts[2], spec)
        return Injection(spec, "link", ends, at_s, duration, bandwidth, latency)
    if len(parts) != 2 or not parts[0] or parts[1] not in ("stress", "kill", "pause"):
        raise ConfigError(f"--inject {spec!r}: {FORM}")
    action: Action = parts[1]  # type: ignore[assignment]  # checked just above
    if action == "kill" and duration is not None:
        raise ConfigError(f"--inject {spec!r}: a kill has no +DURATION (the device stays dead)")
    return Injection(spec, action, (parts[0],), at_s, duration)


def parse_injections(specs: Sequence[str], devices: Sequence[str]) -> list[Injection]:
    """Parse every spec and check that it names devices of the cluster."""
    injections = [parse_injection(spec) for spec in specs]
    for injection in injections:
        unknown = [d for d in injection.devices if d not in devices]
        if unknown:
            raise ConfigError(
                f"--inject {injection.spec!r} names {unknown[0]!r}; devices: {', '.join(devices)}"
            )
    return injections


@dataclass(frozen=True)
class _Firing:
    at_s: float
    injection: Injection
    ending: bool
    """The end of a +DURATION (resume, stop the hog, restore the link)."""


class Injector:
    """Fires injections against an emulated cluster at their times after :meth:`start`.

    Every firing is recorded in :attr:`events` (``time_s``, ``spec``, ``action``, ``devices``,
    and ``error`` when it could not be done, e.g. pausing a device that was killed); an
    injection never raises into the run. ``on_event`` is called with each record as it fires.
    """

    def __init__(
        self,
        cluster: EmulatedCluster,
        injections: Sequence[Injection],
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.on_event = on_event
        firings = [_Firing(i.at_s, i, False) for i in injections]
        firings += [
            _Firing(i.at_s + i.duration_s, i, True) for i in injections if i.duration_s is not None
        ]
        self._firings = sorted(firings, key=lambda f: (f.at_s, f.ending))
        self.events: list[dict[str, Any]] = []
        self.started: float | None = None
        self._due = 0
        """Firings the loop has reached (done, or failed with an ``error`` event)."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="inject", daemon=True)

    def start(self) -> Injector:
        self.started = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop firing (what already fired stays: a paused device stays paused)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _loop(self) -> None:
        assert self.started is not None
        for firing in self._firings:
            if self._stop.wait(max(self.started + firing.at_s - time.time(), 0.0)):
                return
            self.fire(firing.injection, firing.ending)
            self._due += 1

    def not_fired(self) -> list[dict[str, Any]]:
        """The firings still to come when the injector stopped (the run ended before they
        were due; issue #20): ``spec``, ``action`` and ``at_s`` (since :meth:`start`)."""
        return [
            {
                "spec": f.injection.spec,
                "action": f"end {f.injection.action}" if f.ending else f.injection.action,
                "at_s": f.at_s,
            }
            for f in self._firings[self._due :]
        ]

    def fire(self, injection: Injection, ending: bool = False) -> dict[str, Any]:
        """Do one injection (or end it) now and record it. A link change runs on its own
        thread (a frozen device may hold it for seconds) and is recorded when it is done."""
        event: dict[str, Any] = {
            "event": "inject",
            "t": time.time(),
            "spec": injection.spec,
            "action": f"end {injection.action}" if ending else injection.action,
            "devices": list(injection.devices),
        }
        if injection.action == "link" and threading.current_thread() is self._thread:
            threading.Thread(
                target=self._fire, args=(injection, ending, event), name="inject-link", daemon=True
            ).start()
        else:
            self._fire(injection, ending, event)
        return event

    def _fire(self, injection: Injection, ending: bool, event: dict[str, Any]) -> None:
        try:
            self._do(injection, ending)
        except EdgesplitError as exc:
            event["error"] = str(exc)
            log.warning("injection %s (%s) failed: %s", injection.spec, event["action"], exc)
        else:
            log.warning("injected %s (%s)", injection.spec, event["action"])
        with self._lock:
            self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _do(self, injection: Injection, ending: bool) -> None:
        name = injection.devices[0]
        if injection.action == "kill":
            self.cluster.kill(name)
        elif injection.action == "pause":
            (self.cluster.resume if ending else self.cluster.pause)(name)
        elif injection.action == "stress":
            if ending:
                self.cluster.stop_hogs(name)
            else:
                self.cluster.start_hog(name)
        else:
            self._set_link(injection, ending)

    def _set_link(self, injection: Injection, ending: bool) -> None:
        network = self.cluster.network
        if network is None:
            self._set_sender_link(injection, ending, injection.bandwidth_mbps)
            return
        if ending or injection.bandwidth_mbps is not None:
            a, b = injection.devices
            network.set_bandwidth(a, b, None if ending else injection.bandwidth_mbps)
        if ending or injection.latency_ms is not None:
            self._set_sender_link(injection, ending, None)

    def _set_sender_link(
        self, injection: Injection, ending: bool, bandwidth_mbps: float | None
    ) -> None:
        """The workers' SetLink on both ends: the shaping their send path applies."""
        from edgesplit.runtime.proto import edgesplit_pb2 as pb
        from edgesplit.runtime.proto.edgesplit_pb2_grpc import WorkerStub
        from edgesplit.runtime.transport import describe_rpc_error, open_channel

        spec = self.cluster.spec
        token = spec.token_for(injection.devices[0])
        a, b = (spec.device(name) for name in injection.devices)
        for sender, receiver in ((a, b), (b, a)):
            request = pb.SetLinkRequest(to=receiver.address, clear=ending)
            if not ending and bandwidth_mbps is not None:
                request.bandwidth_mbps = bandwidth_mbps
            if not ending and injection.latency_ms is not None:
                request.latency_ms = injection.latency_ms
            channel = open_channel(sender.address, token, spec.tls)
            try:
                WorkerStub(channel).SetLink(request, timeout=LINK_TIMEOUT_S)
            except grpc.RpcError as exc:
                raise WorkerError(
                    f"{sender.name} at {sender.address} did not take the link change: "
                    f"{describe_rpc_error(exc)}"
                ) from None
            finally:
                channel.close()


def relative(events: Sequence[dict[str, Any]], started: float) -> list[dict[str, Any]]:
    """Injection records with ``time_s`` since ``started`` instead of the clock time ``t``."""
    return [
        {"time_s": round(e["t"] - started, 3), **{k: v for k, v in e.items() if k != "t"}}
        for e in events
    ]
