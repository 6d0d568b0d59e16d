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

from edgesplit.errors import EdgesplitError

if TYPE_CHECKING:
    from edgesplit._cluster import Cluster, EmulatedCluster
    from edgesplit._data import Plan, Profile, Simulation, Split
    from edgesplit.app.api import plan, profile, run, serve, simulate, split, sweep
    from edgesplit.app.results import RunPlots, RunResult
    from edgesplit.metrics.runsummary import RunSummary

__version__ = "0.1.0"
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
    "Cluster": "edgesplit._cluster",
    "EmulatedCluster": "edgesplit._cluster",
    "Plan": "edgesplit._data",
    "Profile": "edgesplit._data",
    "Simulation": "edgesplit._data",
    "Split": "edgesplit._data",
    "RunPlots": "edgesplit.app.results",
    "RunResult": "edgesplit.app.results",
    "RunSummary": "edgesplit.metrics.runsummary",
    "plan": "edgesplit.app.api",
    "profile": "edgesplit.app.api",
    "run": "edgesplit.app.api",
    "serve": "edgesplit.app.api",
    "simulate": "edgesplit.app.api",
    "split": "edgesplit.app.api",
    "sweep": "edgesplit.app.api",
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
