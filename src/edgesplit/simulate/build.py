"""From a profile (and a synthetic cluster's description) to what :func:`simulate` takes: the
problem, the spec, the plan and the plan after a loss."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from edgesplit.config import LinkSpec, PairLink
from edgesplit.errors import ConfigError, PartitionError, PlanError
from edgesplit.plan.planner import Plan, Problem, choose_plan, evaluate
from edgesplit.plan.profile import Profile, to_problem
from edgesplit.shared.plan import Stages, parse_plan
from edgesplit.simulate.kinds import Kinds, kinds_of, plan_by_kinds
from edgesplit.simulate.spec import EXACT_MAX_DEVICES, Replan, SimSpec, spread_of
from edgesplit.simulate.synthetic import synthetic_profile


@dataclass(frozen=True)
class SimCluster:
    profile: Profile
    """The cluster's profile (a synthetic cluster's: copies of the profiled devices)."""
    kinds: Kinds
    spec: SimSpec

    @property
    def problem(self) -> Problem:
        return self.spec.problem


def cluster_from(
    profile: Profile,
    devices: Sequence[tuple[int, str]] | None = None,
    default_link: LinkSpec | None = None,
    links: Sequence[PairLink] = (),
    precision: str = "fp32",
    prepare_ms: float | None = None,
    spread: float | None = None,
    shared_medium: bool = False,
) -> SimCluster:
    """The profile's own cluster, or with ``devices`` ((count, kind) of the profile's device
    names) a synthetic one. ``spread``: one relative spread for every device (None: from the
    profile, see :func:`~edgesplit.simulate.spec.spread_of`)."""
    kinds: Kinds | None = None
    if devices:
        profile, kinds = synthetic_profile(profile, devices, default_link, links)
    else:
        if default_link is not None or links:
            profile = dataclasses.replace(
                profile,
                default_bandwidth_mbps=(default_link or LinkSpec()).bandwidth_mbps,
                default_latency_ms=(default_link or LinkSpec()).latency_ms,
            )
            if links:
                raise ConfigError(
                    "per-kind links need a synthetic cluster (--devices); the profile's own "
                    "links are measured"
                )
    if prepare_ms is not None:
        profile = dataclasses.replace(profile, prepare_ms=prepare_ms)
    profile = one_host_hop(profile)
    problem = to_problem(profile, precision=precision)
    if kinds is None:
        kinds = kinds_of(problem)
    sigma = spread_of(profile) if spread is None else {d.name: spread for d in profile.devices}
    spec = SimSpec(problem, sigma, shared_medium, profile)
    return SimCluster(profile, kinds, spec)


def one_host_hop(profile: Profile) -> Profile:
    """On one shared host (an emulated cluster), every device's hand-off CPU per MB is the
    median of what the devices measured: they are the same CPU, and one timing of a few
    hand-offs is noisy (one profile of 1, 0.5 and 0.25 CPU devices on 2 cores measured 1.66,
    3.11 and 3.15 ms/MB; the first worker then used 66.7 ms of CPU per micro-batch in the
    run, 55.4 with its own 1.66 and 63.2 with the median)."""
    if profile.host_cpus is None or len(profile.devices) < 2:
        return profile
    hop = statistics.median(d.hop_cpu_ms_per_mb for d in profile.devices)
    devices = tuple(dataclasses.replace(d, hop_cpu_ms_per_mb=hop) for d in profile.devices)
    return dataclasses.replace(profile, devices=devices)


def plan_for(
    cluster: SimCluster,
    objective: str = "throughput",
    devices: Sequence[str] | None = None,
) -> Plan:
    """The planner's plan on ``devices`` (default: all): the exact planner on small clusters,
    the planner over kinds on large ones (throughput only)."""
    problem = cluster.problem
    names = list(devices) if devices is not None else list(problem.device_names)
    if len(names) <= EXACT_MAX_DEVICES:
        return choose_plan(problem, objective, devices=names)
    if objective != "throughput":
        raise PlanError(
            f"objective {objective!r} needs the exact planner, which takes at most "
            f"{EXACT_MAX_DEVICES} devices; this cluster has {len(names)} (throughput works "
            "on any size)"
        )
    sub = problem.restrict(names)
    return plan_by_kinds(sub, cluster.kinds.restrict(names))


def fixed_stages(cluster: SimCluster, partition: str) -> Stages:
    """A partition string on the cluster's first devices, in order (``0-10,10-``), or a plan's
    text naming each stage's device (``pi2:0-10,pi1:10-``)."""
    try:
        stages = parse_plan(partition, cluster.problem.num_units, cluster.problem.device_names)
    except PartitionError as exc:
        raise ConfigError(str(exc)) from None
    evaluate(cluster.problem, stages, check_memory=False)
    return stages


def replanner(cluster: SimCluster, initial: Stages, objective: str = "throughput") -> Replan:
    """The plan when the usable devices change (as the run's): the initial plan while all its
    devices are usable, else the planner's on the usable ones."""

    def replan(usable: Sequence[str]) -> Stages:
        if all(d in usable for d, _, _ in initial):
            return initial
        return plan_for(cluster, objective, list(usable)).assignment()

    return replan
