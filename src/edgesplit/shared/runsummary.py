"""The run summary as a type: :class:`RunSummary` is what a run's ``summary.json`` holds.

``edgesplit run`` builds one (:func:`edgesplit.metrics.summary.summarise`, a pure function of
the run's record and configuration) and writes it with :func:`write`; every reader (report,
compare, the Python API's :class:`~edgesplit.RunResult`, the Prometheus exporter) loads it with
:func:`read` and reads attributes, never string keys. Its JSON Schema is committed as
``docs/summary.schema.json`` (:func:`json_schema`; a test keeps the two equal).

Versions. A summary written by an older edgesplit loads: every key that was added after the
first ``summary.json`` has a default, the value a run without that feature writes today (no
injections, no adaptive controller, fp32, ...). Keys this version does not know (a summary
from a newer edgesplit) are ignored on load. The schema describes what this version writes:
every key present, no other key.

No torch and no numpy here: a report opens a run folder on a laptop in a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgesplit.errors import ConfigError

FILE = "summary.json"
HEADLINE = ("folder", "model", "dataset", "partition", "batch_size", "images", "completed_images",
            "throughput_ips", "latency_ms", "accuracy")  # fmt: skip
"""What ``repr`` shows of a summary."""


class _Frozen(BaseModel):
    """Frozen; unknown keys are ignored on load (a newer version's summary still opens), and the
    schema, which describes what this version writes, has every key and no other."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,
        use_attribute_docstrings=True,
        json_schema_extra={"additionalProperties": False},
    )


class LatencyMs(_Frozen):
    """End-to-end latency per micro-batch (upload start to result arrival), ms; None when no
    micro-batch completed. Percentiles are nearest-rank."""

    p50: float | None = None
    p95: float | None = None
    mean: float | None = None


class PlanStage(_Frozen):
    """One stage of the plan the run started with; ``units`` is the half-open range
    ``[start, end)``."""

    device: str
    units: tuple[int, int]
    first_layer: str
    last_layer: str
    params: int


class RunPlan(_Frozen):
    """The plan installed before the first image (later ones are in ``plan_changes``)."""

    epoch: int
    stages: list[PlanStage]


class FinalStage(_Frozen):
    """One stage of the plan the run ended with: ``units`` half-open, ``layers`` the graph
    nodes it runs."""

    device: str
    units: tuple[int, int]
    layers: int


class FinalPlan(_Frozen):
    """The plan the run ended with, when a loss or an adaptive switch changed it (the table
    and ``devices.csv`` show this one)."""

    epoch: int
    stages: list[FinalStage]


class DeviceRow(_Frozen):
    """One row of the per-device table (``devices.csv``; the definitions are in
    :mod:`edgesplit.metrics.summary`). A sensor the device lacks is None."""

    name: str
    stage: int
    units: tuple[int, int]
    """Half-open unit range ``[start, end)`` of the device's stage."""
    layers: str
    params: int
    images: int
    throughput_ips: float
    capacity_ips: float | None = None
    compute_ms_per_batch: float | None = None
    compute_ms_per_image: float | None = None
    queue_ms: float | None = None
    net_latency_ms: float | None = None
    bytes_sent: int = 0
    cpu_percent: float | None = None
    system_cpu_percent: float | None = None
    cpu_freq_mhz: float | None = None
    memory_percent: float | None = None
    rss_mb: float | None = None
    temperature_c: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as ``devices.csv`` and ``summary.json`` write it (``units`` a list)."""
        return self.model_dump(mode="json")


class DeviceEnergy(_Frozen):
    """One device's joules over the run: measured where it has a meter (``source`` names it),
    else the power model's (``source`` is ``model``)."""

    source: str
    utilisation: float
    power_w: float
    energy_j: float
    energy_j_per_image: float
    model_power_w: float
    model_energy_j: float
    readings: int


class EnergySummary(_Frozen):
    """The ``energy`` entry: ``energy_j`` is measured where a device has a meter and modelled
    elsewhere; ``model_energy_j`` is the power model's figure for all; ``window_t`` the interval
    integrated over (Unix seconds, coordinator clock)."""

    window_t: tuple[float, float]
    energy_j: float
    energy_j_per_image: float
    model_energy_j: float
    model_energy_j_per_image: float
    metered: list[str]
    devices: dict[str, DeviceEnergy]


class PredictedStage(_Frozen):
    """The planner's cost of one stage (ms per micro-batch)."""

    device: str
    units: tuple[int, int]
    engine: str | None = None
    precision: str = "fp32"
    compute_ms: float
    latency_ms: float
    transfer_ms: float
    memory_bytes: int
    energy_mj: float


class Predicted(_Frozen):
    """The ``predicted`` entry of a planned (``auto``) run: the plan's prediction, per-stage
    costs, and the objective and precision it was planned for."""

    objective: str
    precision: str = "fp32"
    throughput_ips: float
    latency_ms: float
    bottleneck_ms: float
    upload_ms: float = 0.0
    prepare_ms: float = 0.0
    host_ms: float = 0.0
    contended_ms: float = 0.0
    coordinator_ms: float = 0.0
    """The coordinator's CPU per micro-batch besides its preparation (measured by the pilot)."""
    window_ms: float = 0.0
    """The unloaded latency over the window: a floor under the period."""
    background_cpus: float = 0.0
    """Cores of the shared host busy with other work during the pilot."""
    energy_j_per_image: float
    stages: list[PredictedStage]
    notes: list[str] = Field(default_factory=list)


class CpuUse(_Frozen):
    """CPU time of every process of the run (:mod:`edgesplit.metrics.cpu`): the coordinator's
    measured around the run, each worker's integrated from its samples over the wall time."""

    coordinator_s: float
    devices_s: dict[str, float]
    images: int
    """Images this run computed (the per-image figures divide by it)."""
    cpu_ms_per_image: float
    """All processes' CPU ms per image."""
    reference_ms_per_image: float | None = None
    """CPU ms per image of one process running the whole model on the same engine and
    precision; None without a profile."""
    reference: str | None = None
    """Where the reference comes from (the profile's whole-model timing on a device)."""
    cpu_tax: float | None = None
    """``cpu_ms_per_image / reference_ms_per_image``."""


class Versus(_Frozen):
    """One predicted figure against the run's measurement; ``error`` is
    ``(measured - predicted) / predicted`` (None when either is unknown)."""

    predicted: float
    measured: float | None = None
    error: float | None = None
    how: str = ""
    """How the run measured it."""


class VersusPlan(_Frozen):
    """The run against its plan's prediction, for every objective (``objective`` is the one
    planned for, the one printed first)."""

    objective: str
    throughput_ips: Versus
    latency_ms: Versus
    """Unloaded latency: one micro-batch in flight (see ``how``)."""
    energy_j_per_image: Versus


class Failure(_Frozen):
    """A device lost during the run; ``time_s`` since the run started. ``recovery_s``: from the
    loss to the first result under a plan installed after it (None when none came)."""

    time_s: float
    device: str
    reason: str
    replayed: int = 0
    recovery_s: float | None = None
    recovery_epoch: int | None = None


class ChangedStage(_Frozen):
    device: str
    units: tuple[int, int]


class PlanChange(_Frozen):
    """A plan epoch installed during the run, ``time_s`` since the run started."""

    time_s: float
    epoch: int
    reason: str
    stages: list[ChangedStage]


class Injection(_Frozen):
    """An injected fault (``edgesplit run --inject``), ``time_s`` since the run started;
    ``error`` when doing it failed."""

    time_s: float
    event: str = "inject"
    spec: str
    action: str
    devices: list[str]
    error: str | None = None


class NotFired(_Frozen):
    """An injection the run ended before: due ``at_s`` seconds after the start."""

    spec: str
    action: str
    at_s: float


class Adaptive(_Frozen):
    """What the adaptive controller (``--adaptive``) did: decisions taken, plan switches, link
    probes, its policy, each device's last speed factor and its last decision's reason."""

    decisions: int
    switches: int
    link_probes: int = 0
    policy: dict[str, Any]
    speed_factors: dict[str, float]
    last: str | None = None


class PrecisionChoice(_Frozen):
    """What ``--precision auto`` chose and the numbers it chose on (objective values: lower is
    better; accuracies on held-out training images; the drop in points)."""

    precision: str
    reason: str
    objective: str
    fp32_value: float
    int8_value: float | None = None
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    drop_points: float | None = None
    max_drop_points: float


class Int8Gate(_Frozen):
    """The int8 accuracy drop measured on the plan's devices (``kinds``: each stage's CPU kind);
    ``cached`` when an earlier run measured the same stages."""

    fp32_accuracy: float
    int8_accuracy: float
    images: int
    kinds: list[str]
    cached: bool = False
    drop_points: float


class RunSummary(_Frozen):
    """A run's ``summary.json``. ``images`` were asked for, ``completed_images`` have a result
    (``complete`` when all did); ``throughput_ips`` is the images this run computed over its
    wall time (first upload to last result); ``accuracy`` is over the completed images (None
    without labels); ``partition`` the unit ranges per stage (``0-11,11-22,22-``).

    The list of device rows is ``device_rows`` in Python and ``devices`` in the JSON (so that
    :class:`~edgesplit.RunResult`, a RunSummary, can have ``devices`` as a DataFrame).

    Example::

        >>> text = Path("runs/a/summary.json").read_text()
        >>> summary = edgesplit.RunSummary.model_validate_json(text)
        >>> summary.throughput_ips, summary.latency_ms.p50, summary.plan.stages[0].device
        (61.2, 30.5, 'pi1')
        >>> edgesplit.RunSummary.model_json_schema()  # docs/summary.schema.json
    """

    model: str
    """A zoo model's name, or the model file as given (``net.onnx``, ``net.py:Net``)."""
    dataset: str
    weights: str
    """A checkpoint path, or ``random``."""
    checkpoint_accuracy: float | None
    """The checkpoint's own test accuracy (None for random weights or an ONNX file)."""
    input_size: int
    """Input images are ``input_size`` x ``input_size`` pixels."""
    batch_size: int
    """Images per micro-batch."""
    window: int
    """Micro-batches in flight at most."""
    engine: str | None = "torch"
    """The stages' engine (None: each worker's default; ``torch`` before engines were recorded)."""
    precision: str = "fp32"
    """``fp32`` or ``int8``: the precision the stages ran at."""
    wire: str = "fp32"
    """Activation format between stages."""
    images: int
    """Images the run was asked for."""
    completed_images: int
    """Images with a result (this run's and a resumed run's)."""
    complete: bool
    """Every image has a result."""
    resumed_images: int = 0
    """Images whose results came from the interrupted run this one resumed."""
    wall_s: float
    """First upload to last result, seconds."""
    throughput_ips: float | None
    """Images this run computed over ``wall_s`` (None for no wall time)."""
    latency_ms: LatencyMs
    accuracy: float | None
    """Correct over completed images; None without labels."""
    params_total: int
    partition: str
    """Unit ranges per stage, like ``0-11,11-22,22-`` (half-open; a missing end is the last)."""
    partition_method: str | None = None
    """``auto``, ``balanced``, ``equal`` or the ranges as given (None: not recorded)."""
    predicted: Predicted | None = None
    """The planner's prediction: the plan it chose, or a given partition evaluated with the same
    cost model (None when no profile was taken)."""
    energy: EnergySummary | None = None
    energy_j_per_image: float | None = None
    """``energy.energy_j_per_image``: all devices, the whole run."""
    cpu: CpuUse | None = None
    """CPU time of every process of the run (None when it was not measured: a run shorter
    than the workers' sample interval, 0.2 s, has no worker sample inside it)."""
    cpu_tax: float | None = None
    """``cpu.cpu_tax``: the run's CPU per image over one process running the whole model."""
    versus_plan: VersusPlan | None = None
    """The run against its plan's prediction (None without a prediction)."""
    plan: RunPlan
    final_plan: FinalPlan | None = None
    """The plan at the end when it differs from ``plan`` (None: the run kept its first plan)."""
    device_rows: list[DeviceRow] = Field(alias="devices")
    """The per-device table, one row per stage (``devices`` in the JSON)."""
    clock_offsets_ms: dict[str, float]
    """Worker clock minus coordinator clock."""
    rtt_ms: dict[str, float]
    """Coordinator-to-worker round trip per device."""
    failures: list[Failure]
    """Devices lost during the run."""
    replayed: int
    """Micro-batches sent again after a device loss."""
    duplicates: int
    """Results for a micro-batch that already had one (a replay's second copy), dropped."""
    plan_changes: list[PlanChange] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    """Failure reports and unanswered status calls (the first 100)."""
    injected: list[Injection] = Field(default_factory=list)
    not_fired: list[NotFired] = Field(default_factory=list)
    """Injections (or their ends) that were still to come when the run ended."""
    adaptive: Adaptive | None = None
    """None without ``--adaptive``."""
    precision_choice: PrecisionChoice | None = None
    """None unless ``--precision auto``."""
    int8_gate: Int8Gate | None = None
    """None when no int8 drop was measured."""
    cpu_kinds: dict[str, str] = Field(default_factory=dict)
    """Each device's CPU kind (``x86-vnni``, ``x86-avx2``, ``arm64-neon``, ...)."""
    notes: list[str]
    """What the run wants a reader to know (random weights, the planner's notes, ...)."""
    error: str | None = None
    """Why the run stopped early (None for a run that finished)."""

    @model_validator(mode="before")
    @classmethod
    def _complete_by_default(cls, data: Any) -> Any:
        """Summaries from before ``complete`` existed: complete when every image has a result."""
        if isinstance(data, dict) and "complete" not in data:
            done, asked = data.get("completed_images"), data.get("images")
            return {**data, "complete": done is None or asked is None or done == asked}
        return data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The headline numbers only (a notebook shows the rest as tables)."""
        for name, value in super().__repr_args__():
            if name in HEADLINE:
                yield name, value

    @property
    def stage_devices(self) -> tuple[str, ...]:
        """The device of each stage of the first plan, in order."""
        return tuple(s.device for s in self.plan.stages)

    def to_json(self) -> str:
        """The text of ``summary.json`` (two-space indent, keys in the documented order)."""
        return self.model_dump_json(indent=2, by_alias=True) + "\n"


def write(folder: Path, summary: RunSummary) -> Path:
    """Write ``summary`` as ``folder/summary.json``; returns the path."""
    path = Path(folder) / FILE
    path.write_text(summary.to_json(), encoding="utf-8")
    return path


def parse(text: str, where: str = FILE) -> RunSummary:
    """The summary in ``text``; a :class:`ConfigError` naming ``where`` and the first keys that
    are missing or of the wrong type otherwise."""
    try:
        return RunSummary.model_validate_json(text)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ConfigError(f"{where} is unreadable or truncated: not JSON") from None
        raise ConfigError(f"{where}: expected a run summary, {_problems(exc)}") from None


def read(folder: Path) -> RunSummary:
    """The summary of the run folder ``folder``; a missing, truncated or malformed
    ``summary.json`` is a :class:`ConfigError` that names it."""
    path = Path(folder) / FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{folder} has no {FILE} (expected a run folder from edgesplit run)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None
    return parse(text, str(path))


def _problems(exc: ValidationError, shown: int = 3) -> str:
    """``lacks model; batch_size: expected an integer`` for the first ``shown`` errors."""
    parts = []
    for error in exc.errors()[:shown]:
        where = ".".join(str(p) for p in error["loc"]) or "the top level"
        if error["type"] == "missing":
            parts.append(f"lacks {where}")
        else:
            parts.append(f"{where}: {error['msg'].lower()}, got {error['input']!r:.60}")
    more = len(exc.errors()) - shown
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``summary.json`` as this version writes it (``docs/summary.schema.json``
    holds it; ``python -m edgesplit.shared.runsummary`` prints it)."""
    schema = RunSummary.model_json_schema(mode="serialization", by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
