"""The adaptive policy (issue #6 item 3): a pure function from the live state to a decision.

:func:`decide` plans on the *live problem* (the profile with every device's unit times
multiplied by its speed factor and slow links replaced by their estimates; for the new plan
the highest speed factor of each device over the last ``CAUTION_S``), evaluates the current
plan on the live problem, and switches only when

- the predicted gain ``objective(current) / objective(best) - 1`` is at least
  ``policy.threshold`` (default 15 %) times the backoff, and has been so without a break for
  ``policy.hold_s`` (default 3 s): a short spike never switches. For throughput the current
  plan counts at least what it measured over the last ``MEASURE_S`` (a switch must beat the
  plan it leaves as measured under it, issue #20), and once the current plan has run
  ``policy.min_interval_s`` and been found as good as any, its measured throughput must have
  fallen by the threshold below what it measured then (its *reference*), unless the gain is
  ``UNMISTAKABLE`` times the threshold: a switch answers a change under the current plan, not
  the noise of the speed factors on a busy host;
- at least ``policy.min_interval_s`` (default 10 s) have passed since the last switch: two
  plans that each look better under the other's measurements cannot flap faster than that;
  after two switches within ``STREAK_S`` the interval quadruples with each further one;
- every device of the current plan has been observed ``policy.min_observations`` times
  (a fresh plan is not judged on its warm-up);
- a switch back to the plan the last switch left (a *reversal*) holds
  ``REVERSAL_FACTOR`` times longer, and after it the minimum interval doubles: two plans that
  each look better under the other's measurements cannot flap (issue #20; the speed factors'
  slow evidence, :mod:`edgesplit.adapt.state`, removes the usual cause).

A switch is judged by its measured effect once the minimum interval has passed: if the
measured throughput neither rose by half the predicted gain (at least half the threshold) nor
fell by the threshold, the backoff doubles (up to 8x: the minimum interval and the threshold)
until a switch delivers; a switch that made things worse is corrected at the base interval.
Predictions are per-device; when the devices share a host (or a network) the gain of moving
work between them can be an illusion, and the best of many noisy predictions is optimistic.

Every call returns a :class:`Decision` with its inputs, the predicted gain, the best plan and,
when it does not switch, why not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgesplit.adapt.state import DEFAULT_WINDOW_S, AdaptState, profiled_link
from edgesplit.errors import PlanError
from edgesplit.plan import planner
from edgesplit.plan.autoplan import PlanRequest
from edgesplit.plan.profile import Profile, to_problem
from edgesplit.shared.plan import Stage, Stages, as_plan


@dataclass(frozen=True)
class AdaptPolicy:
    threshold: float = 0.15
    """Least predicted gain (relative to the current plan's objective) worth a switch."""
    hold_s: float = 3.0
    """How long the gain must hold without a break."""
    min_interval_s: float = 10.0
    """Least time between two switches."""
    window_s: float = DEFAULT_WINDOW_S
    """Speed factors and link estimates are medians over this many seconds of observations."""
    min_observations: int = 3
    """Observations of each device in the current plan before it is judged."""
    link_slack: float = 3.0
    """A link's estimate replaces the profile only when it predicts a transfer this many times
    slower than the profile (and at least ``link_slack_ms`` more): RPC overhead and jitter stay
    out of the plan."""
    link_slack_ms: float = 5.0
    max_memory_percent: float = 95.0
    """Devices using more memory than this are not offered to the planner."""

    def __post_init__(self) -> None:
        for name in ("threshold", "hold_s", "min_interval_s", "link_slack_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise PlanError(f"adapt policy {name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise PlanError(f"adapt policy window_s must be a number > 0, got {self.window_s!r}")
        if self.link_slack < 1:
            raise PlanError(f"adapt policy link_slack must be >= 1, got {self.link_slack!r}")


@dataclass(frozen=True)
class Hold:
    """The policy's memory between calls: since when the gain has held, and the last switch."""

    since: float | None = None
    last_switch: float | None = None
    stages: Stages = ()
    """The current plan the hold is about; another plan resets it."""
    before_ips: float | None = None
    """Measured throughput while the gain that made the last switch held."""
    judged: bool = True
    """Whether the last switch has been judged by its measured effect."""
    backoff: float = 1.0
    """Multiplies the minimum interval and the threshold: doubled (up to ``MAX_BACKOFF``)
    after each switch that did not deliver and after each reversal, back to 1 after one that
    delivered."""
    left: Stages = ()
    """The plan the last switch left: going back to it is a reversal."""
    started: float | None = None
    """When the run's first plan started: it runs ``min_interval_s`` before it is judged, as
    a plan switched to does (a run's first seconds are its noisiest; issue #20)."""
    switches: tuple[float, ...] = ()
    """When the switches of the last ``STREAK_S`` were made."""
    promised: float = 0.0
    """The predicted gain of the last switch: it delivered if it measured half of that (of at
    most +100 %)."""
    current_since: float | None = None
    """Since when ``stages`` is the current plan (its measured throughput counts once it has
    run ``MEASURE_S``)."""
    reference_ips: float | None = None
    """What the current plan measured over ``MEASURE_S`` at the first decision, once it had run
    ``min_interval_s``, that found no plan better by the threshold: the next switch answers a
    drop below it (see :func:`_gate`). A plan that was bad from its start (a device slowed
    before it had run the minimum interval) has none until then."""


@dataclass(frozen=True)
class Decision:
    t: float
    switch: bool
    reason: str
    """Why it switches, or why not."""
    current: Stages
    best: Stages | None
    current_ips: float | None
    """Predicted throughput of the current plan on the live problem."""
    best_ips: float | None
    gain: float | None
    """objective(current) / objective(best) - 1 on the live problem."""
    speed_factors: dict[str, float]
    links: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Links whose live estimate differs from the profile: ``"a-b"`` -> bandwidth, latency."""
    hold: Hold = Hold()
    verdict: str | None = None
    """The measured effect of the last switch, when it was judged in this call."""
    measured_ips: float | None = None
    """Throughput measured over the last ``MEASURE_S`` under the current plan (None: it has
    not run that long, or no result arrived)."""

    def to_dict(self) -> dict[str, Any]:
        def stages(s: Stages | None) -> list[dict[str, Any]] | None:
            return None if s is None else [{"device": d, "units": [a, b]} for d, a, b in s]

        return {
            "t": self.t,
            "switch": self.switch,
            "reason": self.reason,
            "gain": self.gain,
            "current_ips": self.current_ips,
            "best_ips": self.best_ips,
            "current": stages(self.current),
            "best": stages(self.best),
            "speed_factors": {k: round(v, 3) for k, v in self.speed_factors.items()},
            "links": self.links,
            "verdict": self.verdict,
            "backoff": self.hold.backoff,
            "measured_ips": self.measured_ips,
        }


MEASURE_S = 5.0
"""Measured throughput before a switch, and when it is judged, is over this many seconds."""
MAX_BACKOFF = 8.0
STREAK_S = 60.0
STREAK_FACTOR = 4.0
"""After ``k`` switches in the last ``STREAK_S``, the next waits ``STREAK_FACTOR ** (k - 1)``
minimum intervals (10, 40, 160 s by default): an answer to a change and one correction come
at the base interval, a third switch within a minute is what flapping looks like."""
UNMISTAKABLE = 4.0
"""A predicted gain of this many times the threshold switches without a measured drop below
the reference (a plan slowed before its reference was taken, while its gain did not show
yet, would otherwise never be left; noise is far smaller once the new plan is planned on the
devices' highest speed factors)."""
REVERSAL_FACTOR = 3.0
"""A switch back to the plan just left must hold this many times ``hold_s``."""


def _judge(
    state: AdaptState, hold: Hold, policy: AdaptPolicy, now: float
) -> tuple[Hold, str | None]:
    """Once the (base) minimum interval after a switch has passed, compare the throughput
    measured over the last ``MEASURE_S`` with the one before the switch. A switch that neither
    gained half of what it promised (at least half the threshold) nor lost the threshold
    doubles the backoff (the minimum interval and the threshold): on a host where the devices
    share CPU, moving work between them gains less than predicted, and the best of many noisy
    predictions is optimistic, so the controller must not keep chasing it (issue #20: on a
    loaded host it switched 7 times in 110 s, each promising +18 to +147 %). A switch that
    made things worse (e.g. onto a link that degraded unseen) is corrected at the base
    interval."""
    if hold.judged or hold.last_switch is None:
        return hold, None
    if now - hold.last_switch < policy.min_interval_s:
        return hold, None
    after = state.measured_ips(now - MEASURE_S, now)
    before = hold.before_ips
    if after is None or before is None:
        return dataclasses.replace(hold, judged=True), None
    delivered = after >= before * (1.0 + max(policy.threshold, min(hold.promised, 1.0)) / 2)
    regressed = after < before * (1.0 - policy.threshold)
    backoff = 1.0 if delivered or regressed else min(hold.backoff * 2, MAX_BACKOFF)
    outcome = "delivered" if delivered else "made it worse" if regressed else "did not deliver"
    verdict = f"the last switch {outcome}: {before:.1f} -> {after:.1f} img/s measured"
    return dataclasses.replace(hold, judged=True, backoff=backoff), verdict


def _slowed(d: planner.DeviceCost, factor: float) -> planner.DeviceCost:
    """``d`` with every compute time multiplied by ``factor``."""
    return dataclasses.replace(
        d,
        unit_ms=tuple(ms * factor for ms in d.unit_ms),
        boundary_ms=tuple(ms * factor for ms in d.boundary_ms),
        burst_unit_ms=tuple(ms * factor for ms in d.burst_unit_ms),
        burst_boundary_ms=tuple(ms * factor for ms in d.burst_boundary_ms),
        measured_stages=tuple((s, e, a * factor, b * factor) for s, e, a, b in d.measured_stages),
    )


def live_problem(
    state: AdaptState,
    profile: Profile,
    policy: AdaptPolicy = AdaptPolicy(),
    cautious: bool = False,
) -> tuple[planner.Problem, dict[str, dict[str, float | None]]]:
    """The profile's problem with the live speed factors (``cautious``: the highest of the
    last ``CAUTION_S``, see :attr:`~edgesplit.adapt.state.DeviceEstimate.cautious_factor`) and
    the links that got slower; also the replaced links as ``"a-b" -> {bandwidth_mbps,
    latency_ms}``."""
    problem = to_problem(profile)

    def factor(name: str) -> float:
        d = state.device(name)
        return d.cautious_factor if cautious else d.speed_factor

    devices = tuple(_slowed(d, factor(d.name)) for d in problem.devices)
    links = {(a, b): lk for a, b, lk in problem.links}
    changed: dict[str, dict[str, float | None]] = {}
    for k in state.links:
        latency, bandwidth = profiled_link(profile, k.a, k.b)
        profiled = planner.LinkCost(bandwidth, latency).transfer_ms(k.last_bytes)
        observed = k.transfer_ms(k.last_bytes)
        if observed >= profiled * policy.link_slack and observed >= profiled + policy.link_slack_ms:
            links.pop((k.b, k.a), None)
            links[(k.a, k.b)] = planner.LinkCost(k.bandwidth_mbps, k.latency_ms)
            changed[f"{k.a}-{k.b}"] = {"bandwidth_mbps": k.bandwidth_mbps, "latency_ms": latency}
    problem = dataclasses.replace(
        problem, devices=devices, links=tuple((a, b, lk) for (a, b), lk in links.items())
    )
    return problem, changed


def _best(
    problem: planner.Problem, request: PlanRequest, candidates: Sequence[str]
) -> planner.Plan:
    return planner.choose_plan(
        problem,
        request.objective,
        devices=list(candidates),
        max_latency_ms=request.max_latency_ms,
        min_throughput_ips=request.min_throughput_ips,
    )


def decide(
    state: AdaptState,
    profile: Profile,
    current: Sequence[Stage],
    request: PlanRequest,
    policy: AdaptPolicy,
    now: float,
    hold: Hold = Hold(),
    usable: Sequence[str] | None = None,
) -> Decision:
    """Whether to switch from ``current`` now (pure; see the module docstring).

    ``usable``: devices a plan may use (default: every device of the profile). ``hold`` is the
    previous decision's :attr:`Decision.hold`; a different ``current`` than the hold's resets the
    gain timer (the plan changed under us, e.g. a re-plan after a device loss)."""
    current = as_plan(current)
    if hold.stages != current:
        hold = dataclasses.replace(
            hold, since=None, stages=current, current_since=now, reference_ips=None
        )
    problem, links = live_problem(state, profile, policy)
    hold, verdict = _judge(state, hold, policy, now)
    factors = state.speed_factors()
    base = Decision(now, False, "", current, None, None, None, None, factors, links, hold, verdict)
    names = [d.name for d in profile.devices] if usable is None else list(usable)
    waiting = _waiting(state, current, names, policy, hold, now)
    if waiting is not None:
        return dataclasses.replace(base, reason=waiting)
    candidates = [
        n
        for n in names
        if (state.device(n).memory_percent or 0.0) < policy.max_memory_percent
        or any(d == n for d, _, _ in current)
    ]
    try:
        now_plan = planner.evaluate(problem, current, request.objective, check_memory=False)
        # The new plan is planned on every device at its slowest of the last CAUTION_S: it
        # must beat the current plan even if its devices are as slow as they just were.
        best = _best(live_problem(state, profile, policy, cautious=True)[0], request, candidates)
    except PlanError as exc:
        return dataclasses.replace(base, reason=f"no plan: {exc}")
    base = _predicted(base, state, now_plan, best, problem.batch_size)
    return _gate(base, state, policy, request.objective)


def _waiting(
    state: AdaptState,
    current: Stages,
    names: Sequence[str],
    policy: AdaptPolicy,
    hold: Hold,
    now: float,
) -> str | None:
    """Why the current plan cannot be judged yet (None: it can)."""
    lost = sorted({d for d, _, _ in current} - set(names))
    if lost:
        return f"waiting: the current plan uses {', '.join(lost)}, which is not usable"
    if hold.last_switch is None and hold.started is not None:
        ran = now - hold.started
        if ran < policy.min_interval_s:
            return f"settling: the first plan ran {ran:.1f} s of {policy.min_interval_s:g} s"
    young = [d for d, _, _ in current if state.device(d).observations < policy.min_observations]
    if young:
        return f"observing: too few results yet from {', '.join(young)}"
    return None


def _predicted(
    base: Decision, state: AdaptState, now_plan: planner.Plan, best: planner.Plan, batch: int
) -> Decision:
    """``base`` with the predictions and the gain. For throughput, the current plan counts at
    least what it measured over the last ``MEASURE_S`` (once it has run that long): a switch
    must beat the plan it leaves as measured under that plan, not only as predicted (issue
    #20; on a busy host the prediction of the current plan, made from noisy speed factors,
    can be far below what the plan delivers)."""
    now, hold = base.t, base.hold
    measured = None
    if hold.current_since is not None and now - hold.current_since >= MEASURE_S:
        measured = state.measured_ips(now - MEASURE_S, now)
    now_value, best_value = planner.objective_value(now_plan), planner.objective_value(best)
    if measured is not None and now_plan.objective == "throughput":
        now_value = min(now_value, batch * 1000.0 / measured)
    gain = now_value / best_value - 1.0 if best_value > 0 else 0.0
    best_stages = best.assignment()
    return dataclasses.replace(
        base,
        best=best_stages,
        current_ips=now_plan.prediction.throughput_ips,
        best_ips=best.prediction.throughput_ips,
        gain=0.0 if best_stages == base.current else gain,
        measured_ips=measured,
    )


def _gate(base: Decision, state: AdaptState, policy: AdaptPolicy, objective: str) -> Decision:
    """The hysteresis on a predicted gain: threshold (raised by the backoff), hold time (longer
    for a reversal) and minimum interval (stretched by the backoff)."""
    now, hold, gain, best = base.t, base.hold, base.gain or 0.0, base.best or ()
    threshold = policy.threshold * hold.backoff
    if gain < threshold:
        raised = " (raised after switches that did not deliver)" if hold.backoff > 1 else ""
        ran = now - hold.current_since if hold.current_since is not None else 0.0
        reference = hold.reference_ips
        if reference is None and ran >= policy.min_interval_s:
            reference = base.measured_ips
        return dataclasses.replace(
            base,
            reason=f"gain {gain:.0%} below the threshold {threshold:.0%}{raised}",
            hold=dataclasses.replace(hold, since=None, reference_ips=reference),
        )
    measured, reference = base.measured_ips, hold.reference_ips
    if (
        objective == "throughput"
        and measured is not None
        and reference is not None
        and measured >= reference * (1.0 - policy.threshold)
        and gain < policy.threshold * UNMISTAKABLE
    ):
        # Issue #20: a loaded host moves every device's speed factor by 1.5-3x within
        # seconds, and the best of many plans planned on them always looks better; the
        # measured throughput of the plan shows whether anything changed under it.
        return dataclasses.replace(
            base,
            reason=f"gain {gain:.0%}, but the current plan still measures {measured:.1f} of its "
            f"{reference:.1f} img/s (a switch answers a drop of {policy.threshold:.0%})",
            hold=dataclasses.replace(hold, since=None),
        )
    hold = dataclasses.replace(hold, since=hold.since if hold.since is not None else now)
    since = hold.since if hold.since is not None else now
    reversal = bool(hold.left) and best == hold.left
    hold_s = policy.hold_s * (REVERSAL_FACTOR if reversal else 1.0)
    back = " (back to the plan left last)" if reversal else ""
    if now - since < hold_s:
        return dataclasses.replace(
            base,
            reason=f"gain {gain:.0%} held {now - since:.1f} s of {hold_s:g} s{back}",
            hold=hold,
        )
    recent = [t for t in hold.switches if t > now - STREAK_S]
    streak = STREAK_FACTOR ** max(len(recent) - 1, 0)
    interval = policy.min_interval_s * max(hold.backoff, streak)
    if hold.last_switch is not None and now - hold.last_switch < interval:
        backed = " after switches that did not deliver" if hold.backoff > 1 else ""
        if streak > hold.backoff:
            backed = f" after {len(recent)} switches in {STREAK_S:g} s"
        ago = now - hold.last_switch
        return dataclasses.replace(
            base,
            reason=f"gain {gain:.0%}, but the last switch was {ago:.1f} s ago "
            f"(minimum {interval:g} s{backed})",
            hold=hold,
        )
    return _switch(base, state, since, reversal, objective)


def _switch(
    base: Decision, state: AdaptState, since: float, reversal: bool, objective: str
) -> Decision:
    """``base`` turned into a switch to its best plan (the gain held since ``since``)."""
    now, hold, gain, measured = base.t, base.hold, base.gain or 0.0, base.measured_ips
    slow = [f"{d} x{f:.1f}" for d, f in base.speed_factors.items() if abs(f - 1.0) >= 0.2]
    links = list(base.links)
    why = "; ".join(
        [f"speed {', '.join(slow)}"] * bool(slow) + [f"link {', '.join(links)}"] * bool(links)
    )
    seen = f", {measured:.1f} measured" if measured is not None else ""
    back = " (back to the plan left last)" if reversal else ""
    return dataclasses.replace(
        base,
        switch=True,
        reason=f"predicted +{gain:.0%} {objective} ({base.current_ips or 0:.1f}{seen} -> "
        f"{base.best_ips or 0:.1f} img/s)" + (f": {why}" if why else "") + back,
        hold=Hold(
            last_switch=now,
            stages=base.best or (),
            # While the gain held: the state the switch answers (a window reaching back
            # before the change would credit the old plan with the old conditions).
            before_ips=state.measured_ips(since if since < now else now - MEASURE_S, now),
            judged=False,
            backoff=min(hold.backoff * 2, MAX_BACKOFF) if reversal else hold.backoff,
            switches=(*(t for t in hold.switches if t > now - STREAK_S), now),
            left=base.current,
            started=hold.started,
            promised=gain,
            current_since=now,
        ),
    )
