"""Fit a metered device's power model while ``edgesplit profile`` times it (issue #22).

The device idles for :data:`IDLE_S` first, so the readings span idle and busy; its samples of
the whole window then go to :func:`edgesplit.plan.energy.fit_power`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgesplit.plan.energy import MODEL, PowerFit, fit_power, fit_readings
from edgesplit.runtime import samples as sample_codec

if TYPE_CHECKING:
    from edgesplit.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)

IDLE_S = 1.5
"""Idle time before the timings: several sampler intervals of readings at low utilisation."""
RECENT_S = 2.0


@dataclass(frozen=True)
class Window:
    """A metered device's calibration window, from ``since`` on the device's clock."""

    name: str
    since: float
    source: str


def open_window(coordinator: Coordinator, name: str) -> Window | None:
    """If the device reports a meter: wait :data:`IDLE_S` while it idles and return the window;
    else None (nothing to fit, no wait)."""
    offset_s = coordinator.clock_offsets_ms.get(name, 0.0) / 1000.0
    reply, _, _ = coordinator.probe(name, since_t=time.time() + offset_s - RECENT_S)
    sources = [s.power_source for s in reply.samples if s.HasField("power_w")]
    if not sources:
        return None
    time.sleep(IDLE_S)
    return Window(name, reply.clock, sources[-1])


def close_window(coordinator: Coordinator, window: Window, cpus: float | None) -> PowerFit | str:
    """The fit over the window's samples (or why there is none)."""
    reply, _, _ = coordinator.probe(window.name, since_t=window.since)
    samples = [sample_codec.to_dict(s) for s in reply.samples]
    source, points = fit_readings(samples, cpus)
    return fit_power(points, source if source != MODEL else window.source)
