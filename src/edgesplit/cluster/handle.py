"""The public cluster handles: :class:`Cluster` (devices from a cluster file) and
:class:`EmulatedCluster` (local workers under CPU shares). Both are context managers, so a
notebook runs many experiments on one set of running workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgesplit.errors import ConfigError

if TYPE_CHECKING:
    from edgesplit.cluster import emulate
    from edgesplit.config import ClusterSpec


class Cluster:
    """Devices that run stages, as described by a cluster file (see docs/USAGE.md).

    Build one with :meth:`Cluster.from_file`, or start local workers with
    :class:`EmulatedCluster`. Pass it to :func:`edgesplit.profile`, :func:`edgesplit.run` and
    :func:`edgesplit.sweep`; every call connects to the same running workers.

    Example::

        >>> import edgesplit
        >>> with edgesplit.Cluster.from_file("cluster.yaml") as cluster:
        ...     result = edgesplit.run(model="mobilenet_v2", cluster=cluster, limit=256)
    """

    def __init__(self, spec: ClusterSpec | None = None) -> None:
        self._cluster_spec = spec

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Cluster:
        """The cluster described by the YAML cluster file at ``path``.

        Raises :class:`~edgesplit.EdgesplitError` for a missing or malformed file.

        Example::

            >>> cluster = edgesplit.Cluster.from_file("cluster.yaml")
            >>> cluster.devices
            ('pi1', 'pi2', 'pi3')
        """
        from edgesplit.config import load_cluster

        return cls(load_cluster(Path(path)))

    @property
    def spec(self) -> ClusterSpec:
        """The cluster as the internals take it (addresses, token, links); not part of the
        stable API."""
        if self._cluster_spec is None:
            raise ConfigError(
                "the cluster is not running: use it as `with edgesplit.EmulatedCluster(...) "
                "as cluster:` or call cluster.start() first"
            )
        return self._cluster_spec

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices' names, in cluster order (a fixed partition's stages go to them in
        this order).

        Example::

            >>> edgesplit.EmulatedCluster(cpus=[1, 0.5]).start().devices
            ('pi1', 'pi2')
        """
        return tuple(d.name for d in self.spec.devices)

    def close(self) -> None:
        """Release the cluster (a cluster file's devices keep running: nothing to do)."""

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(self.devices) if self._cluster_spec is not None else "not running"
        return f"{type(self).__name__}({names})"


class EmulatedCluster(Cluster):
    """Local workers, one per entry of ``cpus`` (its CPU share: 0.5 is half a core), named
    ``pi1`` .. ``piN``, behind links of ``bandwidth_mbps`` and ``latency_ms`` (None: unshaped).

    The workers start when the ``with`` block (or :meth:`start`) begins and stop when it ends;
    every run inside it reuses them. :attr:`worker_starts` counts the worker processes started.

    Example::

        >>> import edgesplit
        >>> with edgesplit.EmulatedCluster(cpus=[1, 0.5, 0.25]) as cluster:
        ...     a = edgesplit.run(model="mobilenet_v2", cluster=cluster, partition="0-11,11-22,22-",
        ...                       limit=256)
        ...     b = edgesplit.run(model="mobilenet_v2", cluster=cluster, limit=256)
    """

    def __init__(
        self,
        cpus: Sequence[float] = (0.5, 0.5, 0.5),
        *,
        bandwidth_mbps: float | None = 940.0,
        latency_ms: float = 0.2,
    ) -> None:
        super().__init__(None)
        if not cpus:
            raise ConfigError("an emulated cluster needs at least one device; got cpus=[]")
        for share in cpus:
            if not (isinstance(share, (int, float)) and share > 0):
                raise ConfigError(f"every CPU share must be a number > 0, got cpus={list(cpus)}")
        self.cpus = tuple(float(c) for c in cpus)
        self.bandwidth_mbps = bandwidth_mbps
        self.latency_ms = latency_ms
        self.worker_starts = 0
        """Worker processes started by this object so far (one per device per start)."""
        self._running: emulate.EmulatedCluster | None = None

    def start(self) -> EmulatedCluster:
        """Start the workers and wait until each is ready (a no-op when they run already).

        Example::

            >>> cluster = edgesplit.EmulatedCluster(cpus=[1, 1]).start()
            >>> cluster.close()
        """
        if self._running is not None:
            return self
        from edgesplit.cluster.emulate import EmulatedCluster as Running
        from edgesplit.cluster.emulate import EmulatedDevice, WorkerLaunch, default_worker_cmd
        from edgesplit.config import LinkSpec

        def counted(launch: WorkerLaunch) -> list[str]:
            self.worker_starts += 1
            return default_worker_cmd(launch)

        devices = [EmulatedDevice(f"pi{i}", c) for i, c in enumerate(self.cpus, start=1)]
        link = LinkSpec(bandwidth_mbps=self.bandwidth_mbps, latency_ms=self.latency_ms)
        self._running = Running.start(devices, default_link=link, worker_cmd=counted)
        self._cluster_spec = self._running.spec
        return self

    @property
    def pids(self) -> dict[str, int]:
        """Each running worker's process id, by device name.

        Example::

            >>> cluster.pids
            {'pi1': 4711, 'pi2': 4712}
        """
        running = self._require()
        return {name: running.pid(name) for name in running.names}

    def _require(self) -> emulate.EmulatedCluster:
        if self._running is None:
            raise ConfigError(
                "the emulated cluster is not running: use `with edgesplit.EmulatedCluster(...) "
                "as cluster:` or call cluster.start() first"
            )
        return self._running

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._running is not None:
            self._running.close()
            self._running = None
            self._cluster_spec = None

    def __enter__(self) -> EmulatedCluster:
        return self.start()
