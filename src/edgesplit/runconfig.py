"""What ``edgesplit run`` is asked to do: :class:`RunConfig`, one typed object with named
defaults (the CLI only fills it in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgesplit import engines
from edgesplit.adapt.policy import AdaptPolicy
from edgesplit.model import models
from edgesplit.plan import precision as precision_auto

ASSUMED_BANDWIDTH_MBPS = 940.0
"""Gigabit Ethernet's TCP goodput, assumed for unshaped links when balancing stages."""

NAMED = {
    "auto": "profile the devices and links, then plan for --objective (the default)",
    "balanced": "one stage per device, balanced by unit times measured on this machine",
    "equal": "one stage per device, the same number of units each",
}
"""Partitions chosen by name instead of unit ranges."""


@dataclass(frozen=True)
class RunConfig:
    """What ``edgesplit run`` was asked to do. ``None`` means "choose for me" (see each field)."""

    model: str = models.DEFAULT_MODEL
    dataset: str = "fashion-mnist"
    checkpoint: Path | None = None
    """None: the shipped checkpoint for (model, dataset) if there is one, else random weights."""
    random_weights: bool = False
    input_size: int | None = None
    """None: the checkpoint's input size, else 224."""
    partition: str | None = None
    """Unit ranges like "0-7,7-" for the devices in cluster order, or one of :data:`NAMED`;
    None means "auto"."""
    objective: str = "throughput"
    """What ``auto`` optimises: throughput, latency or energy (:mod:`edgesplit.plan.planner`)."""
    max_latency_ms: float | None = None
    min_throughput_ips: float | None = None
    reprofile: bool = False
    """Measure the devices again even if a cached profile fits."""
    batch_size: int = 16
    limit: int | None = None
    window: int | None = None
    """Micro-batches in flight; None: twice the number of stages."""
    devices: int = 3
    """Emulated devices started for the run when no cluster is given."""
    cpus: float = 0.5
    cpus_each: tuple[float, ...] | None = None
    """CPU share of each emulated device (overrides ``devices`` and ``cpus``)."""
    bandwidth_mbps: float | None = 940.0
    """Emulated links (None = unshaped); 940 Mbit/s is Gigabit Ethernet's goodput."""
    latency_ms: float = 0.2
    network: str = "auto"
    """How an emulated cluster is networked: ``hosts`` (a network namespace per device, links
    shaped by the kernel), ``loopback`` (links shaped in the send path), or ``auto`` (hosts
    when root with iproute2, else loopback; the run's notes say which)."""
    result_port: int | None = None
    """The coordinator's result service port (overrides the cluster file's ``result_port``);
    None: the cluster's, else a free port."""
    data_dir: Path | None = None
    out: Path | None = None
    seed: int = 0
    inject: tuple[str, ...] = ()
    """Fault injection specs (:mod:`edgesplit.cluster.faults`); only with an emulated cluster."""
    heartbeat_deadline_s: float = 2.0
    """A device silent for this long is LOST (see :mod:`edgesplit.runtime.health`)."""
    probation_s: float = 3.0
    """A lost device that answers again takes work after this long without a missed beat."""
    engine: str | None = None
    """Stage executor; None: onnxruntime when installed, else torch (with a note)."""
    precision: str = "fp32"
    """fp32, int8, or auto: int8 where the planner predicts a gain and the measured accuracy
    drop stays inside ``max_accuracy_drop`` (see :mod:`edgesplit.plan.precision`; needs auto)."""
    max_accuracy_drop: float = precision_auto.DEFAULT_MAX_ACCURACY_DROP
    """Accuracy points int8 may cost under ``precision="auto"``."""
    wire: str = "fp32"
    """Activation format between stages (a link's own ``wire`` in the cluster file wins)."""
    calibration_images: int = engines.DEFAULT_CALIBRATION_IMAGES
    """Training images that calibrate int8 stages."""
    adaptive: bool = False
    """Re-plan while the run goes from observed speeds and links (needs ``auto``)."""
    adapt_policy: AdaptPolicy = field(default_factory=AdaptPolicy)

    @property
    def partition_method(self) -> str:
        """``partition`` with None spelled out: ``auto``, a name of :data:`NAMED`, or ranges."""
        return self.partition or "auto"

    @property
    def planned(self) -> bool:
        """Does the planner choose the plan (from a profile of the devices)?"""
        return self.partition_method == "auto"
