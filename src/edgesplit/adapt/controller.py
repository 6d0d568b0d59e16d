"""The thin loop around the pure policy: it turns the run's live events into observations,
calls :func:`~edgesplit.adapt.policy.decide` every ``interval_s`` against the coordinator's
current plan, and switches plan epochs when the policy says so.

Threads: :meth:`Controller.observe` runs on the run's threads (results, heartbeats) and only
folds an observation into the state under a lock; :meth:`Controller.tick` runs on the
controller's own thread (planning takes milliseconds, installing a plan a few round trips).
The current plan is read from the coordinator on every tick, so a re-plan after a device loss
(the runner's) is taken as given.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesplit.adapt.policy import AdaptPolicy, Decision, Hold, decide, live_problem
from edgesplit.adapt.state import (
    AdaptState,
    LinkProbed,
    Observation,
    ResultArrived,
    SensorsSeen,
    StageSeen,
    observe,
    start,
)
from edgesplit.errors import EdgesplitError
from edgesplit.plan import planner
from edgesplit.plan.autoplan import PlanRequest
from edgesplit.plan.profile import Profile
from edgesplit.runtime.live import LiveEvent, ResultSeen, StatusSeen
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stage, Stages, as_plan
from edgesplit.shared.timeouts import TIMEOUTS

if TYPE_CHECKING:
    from edgesplit.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)

LinkProbe = Callable[[str, str, int], float]
"""``(a, b, nbytes)`` -> ms to send ``nbytes`` from device ``a`` to device ``b``."""

TICK_S = 0.5
LINK_FRESH_S = 10.0
"""A link observed more recently than this is not probed before a switch onto it."""
PROBE_BYTES = (64 * 1024, 4 * 1024 * 1024)
"""A probe sends the tensor the new plan would send over the link, within these bounds."""
PROBE_TIMEOUT_S = TIMEOUTS.adapt_probe_s
RECORD_EVERY_S = 5.0
"""A decision whose kind did not change is still recorded this often (plans.jsonl)."""
PLANS_FILE = "plans.jsonl"


def _kind(d: Decision) -> str:
    """The decision without its numbers: a new kind is worth a line in plans.jsonl."""
    return "switch" if d.switch else re.sub(r"[-+]?\d[\d.]*", "#", d.reason)


class Controller:
    """Adapts the coordinator's plan while a run goes; :meth:`start` / :meth:`stop` the loop."""

    def __init__(
        self,
        coordinator: Coordinator,
        profile: Profile,
        request: PlanRequest,
        policy: AdaptPolicy | None = None,
        interval_s: float = TICK_S,
        clock: Callable[[], float] = time.time,
        probe: LinkProbe | None = None,
    ) -> None:
        self.c = coordinator
        self.profile = profile
        self.request = request
        self.policy = policy or AdaptPolicy()
        self.interval_s = interval_s
        self.clock = clock
        self.probe: LinkProbe = probe or self._probe_with_workers
        self._state = start(profile)
        self._hold = Hold()
        self._plans: dict[int, Stages] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="adapt", daemon=True)
        self.decisions = 0
        self.switches = 0
        self.probes = 0
        self.records: list[dict[str, Any]] = []
        """Recorded decisions (every switch, every new kind of "why not", and periodically)."""
        self.last: Decision | None = None
        self._recorded: tuple[str, float] | None = None

    # --- observations (run threads) --------------------------------------------------------

    @property
    def state(self) -> AdaptState:
        with self._lock:
            return self._state

    def observe(self, event: LiveEvent) -> None:
        """Fold one live event into the state (quick: the run waits for it)."""
        for seen in self._observations(event):
            with self._lock:
                self._state = observe(self._state, seen, self.profile, self.policy.window_s)

    def _observations(self, event: LiveEvent) -> list[Observation]:
        if isinstance(event, StatusSeen):
            r = event.reading
            if r is None:
                return []
            return [
                SensorsSeen(event.t, event.device, r.temperature_c, r.throttled, r.memory_percent)
            ]
        if not isinstance(event, ResultSeen):
            return []
        out: list[Observation] = [ResultArrived(event.t, event.images)]
        for hop in event.records:
            plan = self._plan_of(hop.epoch)
            if not 0 <= hop.stage < len(plan) or plan[hop.stage][0] != hop.device:
                continue
            _, a, b = plan[hop.stage]
            after = plan[hop.stage + 1][0] if hop.stage + 1 < len(plan) else COORDINATOR
            out.append(
                StageSeen(
                    t=hop.end,
                    device=hop.device,
                    epoch=hop.epoch,
                    start=a,
                    end=b,
                    batch_size=hop.batch_size,
                    compute_ms=hop.compute_ms,
                    transfer_ms=hop.transfer_ms,
                    bytes_out=hop.bytes_out,
                    next_device=after,
                )
            )
        return out

    def _plan_of(self, epoch: int) -> Stages:
        with self._lock:
            plan = self._plans.get(epoch)
        if plan is None:
            stages = self.c.installed_epochs().get(epoch, ())
            plan = as_plan(stages)
            if plan:
                with self._lock:
                    self._plans[epoch] = plan
        return plan

    # --- decisions (controller thread) -----------------------------------------------------

    def tick(self) -> Decision:
        """One decision against the coordinator's current plan; switches if it says so."""
        now = self.clock()
        _, plan = self.c.current()
        current = as_plan(plan)
        d = decide(
            self.state, self.profile, current, self.request, self.policy, now, self._hold,
            self.c.usable_devices(),
        )  # fmt: skip
        self.decisions += 1
        if d.switch and d.best is not None and self._probe_unseen_links(d.best, current, now):
            # The new plan sends over links no result has timed lately: decide again with
            # their probed speed (a link that degraded while unused is not walked into).
            d = decide(
                self.state, self.profile, current, self.request, self.policy, now, self._hold,
                self.c.usable_devices(),
            )  # fmt: skip
        if d.switch and self._stop.is_set():
            d = dataclasses.replace(d, switch=False, reason="the run is over")
        installed: float | None = None
        if d.switch and d.best is not None:
            try:
                epoch = self.c.switch_plan(list(d.best), reason=f"adaptive: {d.reason}")
            except EdgesplitError as exc:
                log.warning("adaptive switch failed: %s", exc)
                d = dataclasses.replace(d, switch=False, reason=f"switch failed: {exc}")
            else:
                installed = self.clock()
                self.switches += 1
                log.info("adaptive switch to epoch %d: %s", epoch, d.reason)
        self._hold = d.hold
        self.last = d
        self._record(d, now, installed)
        return d

    def _probe_unseen_links(self, best: Stages, current: Stages, now: float) -> bool:
        """Time a transfer over every device-to-device hop of ``best`` that the current plan
        does not use and no observation timed in the last ``LINK_FRESH_S``; True if any was."""
        used = {frozenset((x[0], y[0])) for x, y in itertools.pairwise(current)}
        probed = False
        for (a, _, end), (b, _, _) in itertools.pairwise(best):
            known = self.state.link(a, b)
            fresh = (
                known is not None and known.last_t is not None and now - known.last_t < LINK_FRESH_S
            )
            if frozenset((a, b)) in used or fresh:
                continue
            low, high = PROBE_BYTES
            size = min(max(self.profile.units[end - 1].out_bytes, low), high)
            try:
                ms = self.probe(a, b, size)
            except Exception as exc:  # a failed probe only leaves the link as profiled
                log.warning("adaptive: probing the link %s-%s failed: %s", a, b, exc)
                continue
            seen = LinkProbed(self.clock(), a, b, size, ms)
            with self._lock:
                self._state = observe(self._state, seen, self.profile, self.policy.window_s)
            self.probes += 1
            probed = True
        return probed

    def _probe_with_workers(self, a: str, b: str, nbytes: int) -> float:
        """Milliseconds for worker ``a`` to send ``nbytes`` to worker ``b`` (a ProbeLink call:
        the emulated shaping in force on ``a`` applies, then a real transfer)."""
        from edgesplit.runtime.proto import edgesplit_pb2 as pb

        spec = self.c.cluster
        link = spec.sender_link(a, b)
        request = pb.ProbeLinkRequest(
            address=spec.device(b).address,
            token=spec.token_for(b),
            sizes=[nbytes],
            repeats=1,
            latency_ms=link.latency_ms,
        )
        if link.bandwidth_mbps is not None:
            request.bandwidth_mbps = link.bandwidth_mbps
        reply = self.c.stub(a).ProbeLink(request, timeout=PROBE_TIMEOUT_S)
        return float(reply.median_ms[0])

    def _record(self, d: Decision, now: float, installed: float | None = None) -> None:
        """Keep ``d`` (a switch always, with ``installed``: when its epoch was in force)."""
        kind = _kind(d)
        if self._recorded is not None:
            last_kind, last_t = self._recorded
            if not d.switch and kind == last_kind and now - last_t < RECORD_EVERY_S:
                return
        self._recorded = (kind, now)
        entry = d.to_dict()
        if installed is not None:
            entry["installed_t"] = installed
        self.records.append(entry)

    def replan(self, usable: list[str]) -> list[Stage]:
        """The runner's hook when the usable devices change: the best plan on them under the
        live view (what the controller would pick), without waiting for the hold time."""
        if not usable:
            return []
        problem, _ = live_problem(self.state, self.profile, self.policy)
        chosen = planner.choose_plan(
            problem,
            self.request.objective,
            devices=usable,
            max_latency_ms=self.request.max_latency_ms,
            min_throughput_ips=self.request.min_throughput_ips,
        )
        return list(chosen.assignment())

    def line(self) -> str | None:
        """The last decision for the live display."""
        d = self.last
        if d is None:
            return None
        return f"adaptive: {'switched, ' if d.switch else ''}{d.reason}"

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # the run must go on without adaptation rather than die
                log.exception("adaptive controller tick failed")

    def start(self) -> Controller:
        with self._lock:
            self._hold = dataclasses.replace(self._hold, started=self.clock())
        self._thread.start()
        return self

    def halt(self) -> None:
        """No switch from now on (the run's last result is in); returns at once."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    # --- the record ------------------------------------------------------------------------

    def _until(self, until: float | None) -> list[dict[str, Any]]:
        """The records up to ``until``; a switch counts from when its epoch was installed (one
        decided before the run's last result but installed after it is not in the run's
        record, so neither in its summary nor in ``plans.jsonl``)."""
        return [r for r in self.records if until is None or r.get("installed_t", r["t"]) <= until]

    def summary(self, until: float | None = None) -> dict[str, Any]:
        """summary.json's ``adaptive`` entry; ``until``: the run's end (a switch the controller
        made between the last result and its stop changed no image and is not in the run's
        record, so it is not counted)."""
        switches = self.switches
        if until is not None:
            switches = sum(1 for r in self._until(until) if r["switch"])
        return {
            "decisions": self.decisions,
            "switches": switches,
            "link_probes": self.probes,
            "policy": dataclasses.asdict(self.policy),
            "speed_factors": {k: round(v, 3) for k, v in self.state.speed_factors().items()},
            "last": self.last.reason if self.last else None,
        }

    def write_plans(self, folder: Path, started: float, until: float | None = None) -> Path:
        """``plans.jsonl``: the recorded decisions (up to ``until``), ``time_s`` since
        ``started``."""
        path = Path(folder) / PLANS_FILE
        with open(path, "w") as f:
            for record in self._until(until):
                entry = {"time_s": round(record["t"] - started, 3), **record}
                del entry["t"]
                if "installed_t" in entry:
                    entry["installed_s"] = round(entry.pop("installed_t") - started, 3)
                f.write(json.dumps(entry) + "\n")
        return path
