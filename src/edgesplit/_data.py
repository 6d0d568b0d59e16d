"""What the public functions return besides a run: a model's :class:`Split`, a cluster's
:class:`Profile`, a :class:`Plan` and a :class:`Simulation`. Each wraps the internal object
(kept private, so the internals can change under a stable surface)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesplit._results import frame
from edgesplit.shared.plan import Stages

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from edgesplit.model.graph import UnitGraph
    from edgesplit.plan import planner
    from edgesplit.plan import profile as profiler
    from edgesplit.simulate import SimResult


@dataclass(frozen=True)
class Split:
    """A model cut into units: the places it can be split between devices (a unit ends where
    exactly one tensor is live). :attr:`units` is the unit table; with a partition,
    :meth:`stages` gives the stage modules, which chained equal the model bit for bit.

    Example::

        >>> s = edgesplit.split("mobilenet_v2", input_size=32, partition="0-9,9-")
        >>> s.num_units
        33
        >>> s.units[["unit", "params", "macs", "out_bytes"]]
        >>> s.max_abs_diff
        0.0
    """

    model: str
    input_size: int
    num_units: int
    partition: str | None
    """The partition asked for, as normalised unit ranges (``0-9,9-33``), or None."""
    max_abs_diff: float | None
    """With ``check=True``: the largest difference between the model and the chained stages
    on a random batch (0.0: bit for bit)."""
    _graph: UnitGraph = field(repr=False, compare=False)
    _ranges: tuple[tuple[int, int], ...] | None = field(repr=False, compare=False)

    @property
    def units(self) -> pd.DataFrame:
        """One row per unit: index, first and last node, params, MACs, output shape and
        bytes.

        Example::

            >>> s.units.head()
        """
        rows = [
            {
                "unit": u.index,
                "first": u.first,
                "last": u.last,
                "params": u.params,
                "macs": u.macs,
                "out_shape": "x".join(map(str, u.out_shape)),
                "out_bytes": u.out_bytes,
            }
            for u in self._graph.units
        ]
        return frame(rows)

    def stages(self) -> list[torch.nn.Module]:
        """The partition's stage modules, in order (raises without a partition).

        Example::

            >>> x = torch.randn(2, 3, 32, 32)
            >>> for stage in s.stages():
            ...     x = stage(x)
        """
        from edgesplit.errors import ConfigError

        if self._ranges is None:
            raise ConfigError("stages() needs a partition: edgesplit.split(model, partition=...)")
        return [self._graph.stage(a, b) for a, b in self._ranges]


@dataclass(frozen=True)
class Profile:
    """Every unit of a model timed on every device of a cluster, and its links probed: what
    :func:`edgesplit.plan` and :func:`edgesplit.simulate` work from. :meth:`save` writes the
    JSON that ``edgesplit plan --profile`` reads; :meth:`load` reads one.

    Example::

        >>> prof = edgesplit.profile(cluster, "mobilenet_v2", batch_size=16)
        >>> prof.devices[["name", "model_ms", "cpus"]]
        >>> prof.save("profile.json")
    """

    _profile: profiler.Profile = field(repr=False)

    @property
    def model(self) -> str:
        """The profiled model's name.

        Example::

            >>> prof.model
            'mobilenet_v2'
        """
        return self._profile.model

    @property
    def input_size(self) -> int:
        """Input height and width in pixels."""
        return self._profile.input_size

    @property
    def batch_size(self) -> int:
        """Images per micro-batch the units were timed at."""
        return self._profile.batch_size

    @property
    def devices(self) -> pd.DataFrame:
        """One row per device: ``model_ms`` (the whole model as one stage, sustained, as the
        planner sees it), ``spread_ms``, ``threads``, ``cpus`` (share, emulated only),
        ``memory_mb``, ``engine`` and whether it came from the cache.

        Example::

            >>> prof.devices.set_index("name")["model_ms"]
        """
        from edgesplit.plan.profile import boundary_bytes

        p = self._profile
        cuts = boundary_bytes(p)
        n = len(p.units)
        rows = [
            {
                "name": d.name,
                "model_ms": d.stage_ms(0, n, cuts),
                "spread_ms": sum(d.unit_spread_ms),
                "threads": d.threads,
                "cpus": d.cpus,
                "memory_mb": d.memory_budget_bytes / 2**20 if d.memory_budget_bytes else None,
                "engine": d.engine,
                "cached": d.cached,
            }
            for d in p.devices
        ]
        return frame(rows)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON to ``path`` and return the path.

        Example::

            >>> prof.save("profile.json")
        """
        return self._profile.save(Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Read a profile written by :meth:`save` or ``edgesplit profile``.

        Example::

            >>> prof = edgesplit.Profile.load("profile.json")
        """
        from edgesplit.plan.profile import load_profile

        return cls(load_profile(Path(path)))


@dataclass(frozen=True)
class Plan:
    """The planner's choice: contiguous unit ranges on devices, with the predicted throughput,
    latency and energy. ``str(plan)`` is the planner's table; pass a plan to
    :func:`edgesplit.run` as its ``partition``.

    Example::

        >>> p = edgesplit.plan(prof, objective="throughput")
        >>> p.partition, p.devices
        ('0-11,11-22,22-33', ('pi1', 'pi2', 'pi3'))
        >>> p.throughput_ips
        58.1
    """

    _plan: planner.Plan = field(repr=False)

    @property
    def objective(self) -> str:
        """``throughput``, ``latency`` or ``energy``."""
        return self._plan.objective

    @property
    def partition(self) -> str:
        """The unit ranges per stage, like ``0-11,11-22,22-33``.

        Example::

            >>> p.partition
            '0-11,11-22,22-33'
        """
        return self._plan.partition()

    @property
    def devices(self) -> tuple[str, ...]:
        """The device of each stage, in order.

        Example::

            >>> p.devices
            ('pi1', 'pi2', 'pi3')
        """
        return tuple(s.device for s in self._plan.stages)

    @property
    def throughput_ips(self) -> float:
        """Predicted images per second."""
        return self._plan.prediction.throughput_ips

    @property
    def latency_ms(self) -> float:
        """Predicted end-to-end latency of one micro-batch."""
        return self._plan.prediction.latency_ms

    @property
    def energy_j_per_image(self) -> float:
        """Predicted joules per image over the whole cluster."""
        return self._plan.prediction.energy_j_per_image

    @property
    def stages(self) -> pd.DataFrame:
        """One row per stage: device, units ``[start, end)``, predicted compute and transfer
        ms per micro-batch, memory bytes.

        Example::

            >>> p.stages[["device", "start", "end", "compute_ms"]]
        """
        rows: list[dict[str, Any]] = [
            {
                "device": s.device,
                "start": s.start,
                "end": s.end,
                "compute_ms": s.compute_ms,
                "transfer_ms": s.transfer_ms,
                "memory_bytes": s.memory_bytes,
            }
            for s in self._plan.stages
        ]
        return frame(rows)

    def __str__(self) -> str:
        return self._plan.table()


@dataclass(frozen=True)
class Simulation:
    """A simulated run (:func:`edgesplit.simulate`): no processes, seeded, in milliseconds of
    wall time for thousands of images.

    Example::

        >>> sim = edgesplit.simulate(prof, partition="auto", images=2000)
        >>> sim.throughput_ips, sim.latency_ms["p95"]
        >>> print(sim)
    """

    stages: Stages
    """``(device, start, end)`` per stage of the initial plan, units half-open."""
    images: int
    batch_size: int
    wall_s: float
    throughput_ips: float
    steady_ips: float | None
    """Throughput without the pipeline's fill."""
    latency_ms: dict[str, float]
    energy_j_per_image: float
    _result: SimResult = field(repr=False, compare=False)

    @property
    def devices(self) -> pd.DataFrame:
        """One row per device: utilisation, busy seconds, watts and joules.

        Example::

            >>> sim.devices.set_index("name")["utilisation"]
        """
        from dataclasses import asdict

        return frame([asdict(d) for d in self._result.devices])

    def to_dict(self) -> dict[str, Any]:
        """Everything the simulation reports, as JSON-ready data (``edgesplit simulate
        --json``).

        Example::

            >>> sim.to_dict()["throughput_ips"]
        """
        return self._result.to_dict()

    def __str__(self) -> str:
        return self._result.table()
