"""A discrete-event simulation of a plan on a cluster described by profiles (issue #23): pure,
seeded, no processes, no sockets. See :mod:`.engine` for what it models."""

from edgesplit.simulate.build import SimCluster, cluster_from, fixed_stages, plan_for, replanner
from edgesplit.simulate.engine import simulate
from edgesplit.simulate.kinds import Kinds, kinds_of, plan_by_kinds
from edgesplit.simulate.result import DeviceStats, Loss, PlanChange, SimResult
from edgesplit.simulate.spec import SimConfig, SimSpec, Stages

__all__ = [
    "DeviceStats",
    "Kinds",
    "Loss",
    "PlanChange",
    "SimCluster",
    "SimConfig",
    "SimResult",
    "SimSpec",
    "Stages",
    "cluster_from",
    "fixed_stages",
    "kinds_of",
    "plan_by_kinds",
    "plan_for",
    "replanner",
    "simulate",
]
