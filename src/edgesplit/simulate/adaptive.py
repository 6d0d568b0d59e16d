"""The adaptive policy of a run (:mod:`edgesplit.adapt`) fed with simulated observations: the
same pure state and decision, the simulator only says what was seen and when."""

from __future__ import annotations

from collections.abc import Sequence

from edgesplit.adapt.policy import AdaptPolicy, Decision, Hold, decide
from edgesplit.adapt.state import ResultArrived, StageSeen, observe, start
from edgesplit.plan.autoplan import PlanRequest
from edgesplit.plan.profile import Profile
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stages


class AdaptiveLoop:
    """What the run's controller keeps between ticks: the live state and the policy's hold."""

    def __init__(self, profile: Profile, policy: AdaptPolicy) -> None:
        self.profile = profile
        self.policy = policy
        self.state = start(profile)
        self.hold = Hold()

    def stage_seen(
        self, t_s: float, device: str, epoch: int, span: tuple[int, int], batch: int, ms: float
    ) -> None:
        """A stage job of ``span`` (units, half-open) took ``ms`` on ``device``. Transfers are
        not reported (the links keep their profiled estimates)."""
        start_unit, end_unit = span
        seen = StageSeen(t_s, device, epoch, start_unit, end_unit, batch, ms, -1.0, 0, COORDINATOR)
        self.state = observe(self.state, seen, self.profile)

    def result_seen(self, t_s: float, images: int) -> None:
        self.state = observe(self.state, ResultArrived(t_s, images), self.profile)

    def tick(self, t_s: float, current: Stages, usable: Sequence[str]) -> Decision:
        decision = decide(
            self.state,
            self.profile,
            current,
            PlanRequest("throughput"),
            self.policy,
            t_s,
            self.hold,
            usable,
        )
        self.hold = decision.hold
        return decision
