"""edgesplit: layer-wise pipelined DNN inference across small edge devices.

The public API (docs/API.md lists exactly what is public; everything else may change)::

    import edgesplit

    with edgesplit.EmulatedCluster(cpus=[1, 0.5, 0.25]) as cluster:
        prof = edgesplit.profile(cluster, "mobilenet_v2")
        plan = edgesplit.plan(prof, objective="throughput")
        result = edgesplit.run(model="mobilenet_v2", cluster=cluster, partition=plan, limit=256)
    result.devices          # pandas DataFrame
    result.plot.timeline()  # matplotlib Figure

Names are imported on first use, so ``import edgesplit`` stays light (a worker needs none of
them).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from edgesplit._version import __version__
from edgesplit.errors import EdgesplitError

if TYPE_CHECKING:
    from edgesplit._api import plan, profile, run, serve, simulate, split, sweep
    from edgesplit._data import Plan, Profile, Simulation, Split
    from edgesplit._results import RunPlots, RunResult
    from edgesplit.cluster.handle import Cluster, EmulatedCluster
    from edgesplit.shared.runsummary import RunSummary

__all__ = [
    "Cluster",
    "EdgesplitError",
    "EmulatedCluster",
    "Plan",
    "Profile",
    "RunPlots",
    "RunResult",
    "RunSummary",
    "Simulation",
    "Split",
    "__version__",
    "plan",
    "profile",
    "run",
    "serve",
    "simulate",
    "split",
    "sweep",
]

_LAZY = {
    "Cluster": "edgesplit.cluster.handle",
    "EmulatedCluster": "edgesplit.cluster.handle",
    "Plan": "edgesplit._data",
    "Profile": "edgesplit._data",
    "Simulation": "edgesplit._data",
    "Split": "edgesplit._data",
    "RunPlots": "edgesplit._results",
    "RunResult": "edgesplit._results",
    "RunSummary": "edgesplit.shared.runsummary",
    "plan": "edgesplit._api",
    "profile": "edgesplit._api",
    "run": "edgesplit._api",
    "serve": "edgesplit._api",
    "simulate": "edgesplit._api",
    "split": "edgesplit._api",
    "sweep": "edgesplit._api",
}


def __getattr__(name: str) -> Any:
    """The public names, imported when first used (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgesplit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Keeps ``edgesplit.simulate`` (and ``edgesplit.serve``) the public function: importing
    the internal package would otherwise set the attribute to that module (code imports from
    the package by its full name, which goes through ``sys.modules``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
