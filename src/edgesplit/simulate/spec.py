"""What a simulation runs on (:class:`SimSpec`) and how (:class:`SimConfig`): plain frozen data."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from edgesplit.adapt.policy import AdaptPolicy
from edgesplit.cluster.faults import Injection
from edgesplit.errors import ConfigError
from edgesplit.plan.planner import Problem
from edgesplit.plan.profile import Profile
from edgesplit.shared.plan import Stages

Replan = Callable[[Sequence[str]], Stages]
"""Given the usable devices (cluster order), the stages to run on (as the run's replan)."""

EXACT_MAX_DEVICES = 10
"""Up to this many devices plans come from the exact planner (2^D subsets); beyond, from the
planner over device kinds (:mod:`.kinds`, throughput only). The adaptive policy plans with the
exact planner, so it takes at most this many devices too."""

IQR_PER_SIGMA = 1.349
"""A normal distribution's interquartile range in standard deviations."""


@dataclass(frozen=True)
class SimSpec:
    """The cluster: the planner's :class:`Problem` (devices' stage times, quotas, power, links,
    the coordinator's preparation, a shared host), each device's relative spread of stage times
    (a standard deviation over the median, 0: none) and how links share the network.

    ``shared_medium``: every transfer (uploads, hand-offs, results) goes through one medium, one
    at a time (a hub, Wi-Fi); otherwise each sender has its own link out (full-duplex switched
    Ethernet: what a device sends to all of its next hops goes out one message at a time, as
    the runtime's sender does).

    ``profile`` is needed for the adaptive policy (:mod:`edgesplit.adapt`), which plans on it.

    ``background_threads``: on a shared host (``problem.host_cpus``), how many threads of other
    processes are runnable, on average, all along, and ``background_cores`` the cores they use
    together (None: each takes a core if it can), both as measured while a run ran (see
    :mod:`.cpu`): their number sets how the host's cores are shared, their CPU caps what each
    takes (measured on 2 cores: 3.3 of them runnable on average used 1.1 cores; a first stage
    of 1 CPU that had work nearly all along got 0.37 of a core)."""

    problem: Problem
    spread: Mapping[str, float] = field(default_factory=dict)
    shared_medium: bool = False
    profile: Profile | None = None
    background_threads: float = 0.0
    background_cores: float | None = None

    def __post_init__(self) -> None:
        names = set(self.problem.device_names)
        for name, sigma in self.spread.items():
            if name not in names:
                raise ConfigError(f"spread given for unknown device {name!r}")
            if not (math.isfinite(sigma) and sigma >= 0):
                raise ConfigError(f"spread of {name!r} must be a number >= 0, got {sigma!r}")
        if not (math.isfinite(self.background_threads) and self.background_threads >= 0):
            raise ConfigError(
                f"background_threads must be a number >= 0, got {self.background_threads!r}"
            )
        cores = self.background_cores
        if cores is not None and not (math.isfinite(cores) and cores >= 0):
            raise ConfigError(f"background_cores must be a number >= 0, got {cores!r}")
        if self.background_threads > 0 and self.problem.host_cpus is None:
            raise ConfigError(
                "background_threads needs a shared host (the problem's host_cpus); the devices "
                "of this cluster have hosts of their own"
            )


def spread_of(profile: Profile) -> dict[str, float]:
    """Each device's relative standard deviation of a stage time, from the profile's unit
    interquartile ranges (taken as normal: sigma = IQR / 1.349), relative to the unit times.

    Devices with a CPU share (emulated) get 0: their profiled spread is mostly the quota's
    stalls (a unit caught at the end of a CFS period), which the simulation produces itself."""
    out = {}
    for d in profile.devices:
        if d.cpus is not None:
            out[d.name] = 0.0
            continue
        total = math.fsum(d.unit_ms)
        iqr = math.fsum(d.unit_spread_ms)
        out[d.name] = iqr / IQR_PER_SIGMA / total if total > 0 else 0.0
    return out


@dataclass(frozen=True)
class SimConfig:
    """How to run a simulation. Times in ms of simulated time unless named ``_s``."""

    images: int = 2000
    """Images to push through (rounded up to whole micro-batches)."""
    window: int | None = None
    """Micro-batches in flight (the coordinator's backpressure); None: 2 x stages, as a run."""
    seed: int = 0
    injections: tuple[Injection, ...] = ()
    """Faults, as ``edgesplit run --inject`` specs (kill, pause, stress, link), at simulated
    seconds after the start."""
    detect_ms: float = 2000.0
    """A dead device is LOST after this long without heartbeats (the run's deadline), or
    ``confirm_ms`` after a send to it failed, whichever comes first."""
    confirm_ms: float = 50.0
    stress_factor: float = 4.0
    """A ``stress`` injection's slow-down (the emulator's hog takes 3/4 of the CPU share)."""
    adaptive: AdaptPolicy | None = None
    """Run the adaptive policy (needs a profile); None: plans change only after a loss."""
    tick_ms: float = 1000.0
    """How often the adaptive policy decides (the controller's tick)."""
    max_events: int = 50_000_000
    """A bound on the work of one simulation (a run that cannot finish is an error)."""

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ConfigError(f"images must be >= 1, got {self.images}")
        if self.window is not None and self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        for name in ("detect_ms", "confirm_ms", "tick_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        if not (math.isfinite(self.stress_factor) and self.stress_factor >= 1):
            raise ConfigError(f"stress_factor must be >= 1, got {self.stress_factor!r}")
