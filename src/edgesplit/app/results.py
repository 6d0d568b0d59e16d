"""A run's results as data: :class:`RunResult`, the typed ``summary.json`` of a run folder with
its tables as pandas DataFrames and its figures as matplotlib figures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgesplit.errors import ConfigError
from edgesplit.metrics import runsummary
from edgesplit.metrics.runsummary import RunSummary

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


class RunResult(RunSummary):
    """One run, read from its run folder: the typed ``summary.json`` (a :class:`RunSummary`:
    every key of the file is an attribute, typed; docs/summary.schema.json is its schema), the
    folder's tables as pandas DataFrames (:attr:`devices`, :attr:`requests`, :attr:`samples`,
    :attr:`predictions`) and its figures (:attr:`plot`). :meth:`save` copies the folder;
    :meth:`load` reads one. The per-device rows of the summary itself are
    :attr:`~RunSummary.device_rows` (``devices`` is the DataFrame of ``devices.csv``).

    Example::

        >>> result = edgesplit.run(model="mobilenet_v2", cluster=cluster, limit=256)
        >>> result.throughput_ips, result.partition, result.latency_ms.p50
        (61.2, '0-11,11-22,22-', 30.5)
        >>> result.devices[["name", "throughput_ips", "compute_ms_per_batch"]]
        >>> result.save("runs/baseline")
    """

    folder: Path = Field(exclude=True)
    """The run folder the tables and figures are read from (not part of ``summary.json``)."""

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> RunResult:
        """Read the run folder ``folder`` (written by :func:`edgesplit.run` or ``edgesplit
        run``, by this version or an older one); a missing or malformed ``summary.json`` is an
        :class:`~edgesplit.EdgesplitError`.

        Example::

            >>> result = edgesplit.RunResult.load("runs/baseline")
        """
        path = Path(folder)
        return cls.from_summary(path, runsummary.read(path))

    @classmethod
    def from_summary(cls, folder: Path, summary: RunSummary) -> RunResult:
        """The result of the run in ``folder`` whose ``summary.json`` holds ``summary``.

        Example::

            >>> summary = edgesplit.RunResult.load("runs/a").summary
            >>> edgesplit.RunResult.from_summary(Path("runs/a"), summary)
        """
        return cls.model_validate({**dict(summary), "folder": Path(folder)})

    @property
    def summary(self) -> RunSummary:
        """The run's summary alone (what ``summary.json`` holds, without the folder).

        Example::

            >>> result.summary.to_json() == (result.folder / "summary.json").read_text()
            True
        """
        return RunSummary.model_validate({k: v for k, v in dict(self).items() if k != "folder"})

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
            "latency_p50_ms": self.latency_ms.p50,
            "latency_p95_ms": self.latency_ms.p95,
            "accuracy": self.accuracy,
            "energy_j_per_image": self.energy_j_per_image,
            "predicted_throughput_ips": (
                self.predicted.throughput_ips if self.predicted is not None else None
            ),
            "wall_s": self.wall_s,
            "folder": str(self.folder),
        }
