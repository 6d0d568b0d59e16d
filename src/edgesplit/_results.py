"""A run's results as data: :class:`RunResult`, the typed ``summary.json`` of a run folder with
its tables as pandas DataFrames and its figures as matplotlib figures."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesplit.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from edgesplit.metrics.report import RunData


def _pandas() -> Any:
    """pandas, or a clear error naming the extra that installs it (workers do not need it)."""
    try:
        import pandas
    except ImportError:
        raise ConfigError(
            "DataFrames need pandas: pip install 'edgesplit[api]' (or pandas itself)"
        ) from None
    return pandas


def frame(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    """``rows`` as a DataFrame (``columns``: the columns of an empty one)."""
    pandas = _pandas()
    if not rows and columns is not None:
        return pandas.DataFrame(columns=columns)
    return pandas.DataFrame(rows)


def read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist (expected a run folder from edgesplit run)")
    return _pandas().read_csv(path)


class RunPlots:
    """The figures of a run, drawn from its folder (:mod:`edgesplit.metrics.plots`). Each
    method returns a new matplotlib Figure (Agg backend; in Jupyter use ``%matplotlib inline``
    so a returned figure shows).

    Example::

        >>> fig = result.plot.timeline()
        >>> fig.savefig("timeline.png")
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._data: RunData | None = None

    def _run(self) -> RunData:
        from edgesplit.metrics import report

        if self._data is None:
            self._data = report.load_run(self._folder)
        return self._data

    def timeline(self, micro_batches: int = 20) -> Figure:
        """Gantt chart of ``micro_batches`` micro-batches in steady state: queue, compute,
        send and transfer on each device.

        Example::

            >>> result.plot.timeline()
        """
        from edgesplit.metrics import plots

        return plots.timeline(self._run(), micro_batches)

    def devices(self) -> Figure:
        """Per-device CPU, frequency, memory, temperature, power and throughput over time.

        Example::

            >>> result.plot.devices()
        """
        from edgesplit.metrics import plots

        return plots.device_series(self._run())

    def latency(self) -> Figure:
        """Empirical CDF of the end-to-end latency per micro-batch.

        Example::

            >>> result.plot.latency()
        """
        from edgesplit.metrics import plots

        return plots.latency_cdf(self._run())

    def stages(self) -> Figure:
        """Where a micro-batch's time goes at each stage (stacked mean ms).

        Example::

            >>> result.plot.stages()
        """
        from edgesplit.metrics import plots

        return plots.stage_bars(self._run())


_REQUIRED = ("model", "dataset", "images", "batch_size", "partition", "throughput_ips")


@dataclass(frozen=True)
class RunResult:
    """One run, read from its run folder: the typed ``summary.json`` (the keys are documented
    in docs/USAGE.md; every key is also in :attr:`summary`), the folder's tables as pandas
    DataFrames (:attr:`devices`, :attr:`requests`, :attr:`samples`, :attr:`predictions`) and
    its figures (:attr:`plot`). :meth:`save` copies the folder; :meth:`load` reads one.

    Example::

        >>> result = edgesplit.run(model="mobilenet_v2", cluster=cluster, limit=256)
        >>> result.throughput_ips, result.partition
        (61.2, '0-11,11-22,22-')
        >>> result.devices[["name", "throughput_ips", "compute_ms_per_batch"]]
        >>> result.save("runs/baseline")
    """

    folder: Path
    """The run folder the tables and figures are read from."""
    model: str
    dataset: str
    images: int
    """Images asked for (``completed_images`` finished)."""
    completed_images: int
    complete: bool
    batch_size: int
    input_size: int
    window: int
    engine: str
    precision: str
    partition: str
    """Unit ranges per stage, like ``0-11,11-22,22-``."""
    partition_method: str
    """``auto``, ``balanced``, ``equal`` or the ranges as given."""
    stage_devices: tuple[str, ...]
    """The device of each stage, in order."""
    wall_s: float
    throughput_ips: float | None
    latency_ms: Mapping[str, float | None]
    """Per micro-batch: ``p50``, ``p95``, ``mean``."""
    accuracy: float | None
    """Over the completed images; None without labels."""
    energy_j_per_image: float | None
    weights: str
    """A checkpoint path, or ``random``."""
    predicted: Mapping[str, Any] | None
    """The planner's prediction for ``auto`` partitions (None for fixed ones)."""
    notes: tuple[str, ...]
    summary: Mapping[str, Any] = field(repr=False)
    """Every key of ``summary.json`` as written."""

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> RunResult:
        """Read the run folder ``folder`` (written by :func:`edgesplit.run` or ``edgesplit
        run``); a missing or malformed ``summary.json`` is an :class:`~edgesplit.EdgesplitError`.

        Example::

            >>> result = edgesplit.RunResult.load("runs/baseline")
        """
        path = Path(folder)
        try:
            summary = json.loads((path / "summary.json").read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{path} has no summary.json (expected a run folder from edgesplit run)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path / 'summary.json'} is unreadable: {exc}") from None
        if not isinstance(summary, dict):
            raise ConfigError(f"{path / 'summary.json'}: expected a JSON object")
        missing = [k for k in _REQUIRED if k not in summary]
        if missing:
            raise ConfigError(f"{path / 'summary.json'} lacks {missing}: is it a run summary?")
        return cls.from_summary(path, summary)

    @classmethod
    def from_summary(cls, folder: Path, summary: Mapping[str, Any]) -> RunResult:
        """The result of the run in ``folder`` whose ``summary.json`` holds ``summary``.

        Example::

            >>> summary = json.loads(Path("runs/a/summary.json").read_text())
            >>> edgesplit.RunResult.from_summary(Path("runs/a"), summary)
        """
        s = dict(summary)

        def optional_float(key: str) -> float | None:
            value = s.get(key)
            return None if value is None else float(value)

        stages = (s.get("plan") or {}).get("stages") or []
        return cls(
            folder=Path(folder),
            model=str(s["model"]),
            dataset=str(s["dataset"]),
            images=int(s["images"]),
            completed_images=int(s.get("completed_images", s["images"])),
            complete=bool(s.get("complete", True)),
            batch_size=int(s["batch_size"]),
            input_size=int(s.get("input_size", 0)),
            window=int(s.get("window", 0)),
            engine=str(s.get("engine", "")),
            precision=str(s.get("precision", "fp32")),
            partition=str(s["partition"]),
            partition_method=str(s.get("partition_method", "")),
            stage_devices=tuple(str(st["device"]) for st in stages),
            wall_s=float(s.get("wall_s", 0.0)),
            throughput_ips=optional_float("throughput_ips"),
            latency_ms=dict(s.get("latency_ms") or {}),
            accuracy=optional_float("accuracy"),
            energy_j_per_image=optional_float("energy_j_per_image"),
            weights=str(s.get("weights", "")),
            predicted=s.get("predicted"),
            notes=tuple(str(n) for n in s.get("notes") or ()),
            summary=s,
        )

    def save(self, folder: str | os.PathLike[str]) -> RunResult:
        """Copy the run folder to ``folder`` (refused when it already holds a run) and return
        the result read from there: ``RunResult.load(folder)`` gives it back.

        Example::

            >>> saved = result.save("runs/baseline")
            >>> edgesplit.RunResult.load("runs/baseline").summary == result.summary
            True
        """
        from edgesplit.metrics import runfolder

        target = Path(folder)
        if target.resolve() == self.folder.resolve():
            return self
        runfolder.refuse_existing(target)
        shutil.copytree(self.folder, target, dirs_exist_ok=True)
        return RunResult.load(target)

    @property
    def plot(self) -> RunPlots:
        """The run's figures: ``plot.timeline()``, ``plot.devices()``, ``plot.latency()``,
        ``plot.stages()``.

        Example::

            >>> result.plot.timeline()
        """
        return RunPlots(self.folder)

    @property
    def devices(self) -> pd.DataFrame:
        """The per-device table (``devices.csv``): one row per stage's device with its
        throughput, compute and queue times, bytes sent, CPU, memory and temperature.

        Example::

            >>> result.devices[["name", "stage", "throughput_ips"]]
        """
        return read_csv(self.folder / "devices.csv")

    @property
    def requests(self) -> pd.DataFrame:
        """One row per micro-batch per hop (``requests.csv``; the upload is stage -1), times
        in seconds on the coordinator's clock.

        Example::

            >>> result.requests.groupby("device")["compute_ms"].mean()
        """
        return read_csv(self.folder / "requests.csv")

    @property
    def samples(self) -> pd.DataFrame:
        """Each device's sampler time series (``samples.csv``).

        Example::

            >>> result.samples.pivot_table(index="t", columns="device", values="cpu_percent")
        """
        return read_csv(self.folder / "samples.csv")

    @property
    def predictions(self) -> pd.DataFrame:
        """Per image: ``index``, ``prediction`` (empty where it did not complete), ``label``.

        Example::

            >>> (result.predictions.prediction == result.predictions.label).mean()
        """
        return read_csv(self.folder / "predictions.csv")

    def row(self) -> dict[str, Any]:
        """The headline numbers as one flat dict (a sweep's row).

        Example::

            >>> result.row()["throughput_ips"]
            61.2
        """
        return {
            "model": self.model,
            "partition": self.partition,
            "partition_method": self.partition_method,
            "stage_devices": ",".join(self.stage_devices),
            "batch_size": self.batch_size,
            "images": self.completed_images,
            "throughput_ips": self.throughput_ips,
            "latency_p50_ms": self.latency_ms.get("p50"),
            "latency_p95_ms": self.latency_ms.get("p95"),
            "accuracy": self.accuracy,
            "energy_j_per_image": self.energy_j_per_image,
            "predicted_throughput_ips": (self.predicted or {}).get("throughput_ips"),
            "wall_s": self.wall_s,
            "folder": str(self.folder),
        }
