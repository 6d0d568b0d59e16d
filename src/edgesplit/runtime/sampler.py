"""Device sampler: CPU, frequency, memory, temperature, throttling, network and power, at ~5 Hz.

Each sensor is read by a small function that takes the sysfs root, so tests point it at a fake
tree. A sensor that this device does not have reads as ``None`` (absent), never as 0: a 0 °C or
"not throttled" that was never measured would look like a fact in the run record.

CPU percentages are computed from ``cpu_times`` deltas between our own samples (see
:func:`cpu_percent_between`) rather than ``psutil.cpu_percent(None)``, whose "since last call"
state is global to the process and would be shared with any other caller.

Power comes from the device's meter (:mod:`edgesplit.runtime.power`), read with the rest of the
sample; without one ``power_w`` is absent and ``power_source`` says ``model``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from edgesplit.errors import ConfigError
from edgesplit.runtime import power

log = logging.getLogger(__name__)

SYS_ROOT = Path("/sys")
"""The real sysfs root; only there do we also ask psutil (which reads the real /sys itself)."""

THROTTLED_PATH = "devices/platform/soc/soc:firmware/get_throttled"
"""Raspberry Pi firmware throttled bitmask, relative to the sysfs root (hex, no ``0x``)."""

VCGENCMD_MIN_INTERVAL_S = 5.0
"""vcgencmd forks a process; without the sysfs file we ask it at most this often."""

PREFERRED_PSUTIL_SENSORS = ("cpu_thermal", "coretemp", "k10temp", "zenpower", "soc_thermal")
PREFERRED_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal")
MB = 1024 * 1024


@dataclass(frozen=True)
class DeviceSample:
    """One reading of a device. ``None`` means the device has no such sensor.

    ``cpu_percent`` is system-wide (100 = all cores busy); ``process_cpu_percent`` is the sampled
    process (100 = one core busy). Network counters are system totals since boot.
    """

    t: float
    cpu_percent: float
    process_cpu_percent: float
    cpu_freq_mhz: float | None
    memory_percent: float
    rss_mb: float
    temperature_c: float | None
    throttled: int | None
    net_bytes_sent: int | None
    net_bytes_recv: int | None
    power_w: float | None = None
    """Measured watts; None without a meter (or when the meter failed this time)."""
    power_source: str | None = None
    """Where ``power_w`` came from: ``hwmon:<chip>``, ``pmic``, ``command`` or ``model``."""

    def to_dict(self) -> dict[str, float | int | str | None]:
        """All fields by name; absent sensors are ``None`` (JSON ``null``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceSample:
        """Inverse of :meth:`to_dict`; a missing optional field is ``None``, unknown keys fail."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"DeviceSample: unknown fields {unknown}; expected {sorted(names)}")
        required = ("t", "cpu_percent", "process_cpu_percent", "memory_percent", "rss_mb")
        missing = [n for n in required if data.get(n) is None]
        if missing:
            raise ConfigError(f"DeviceSample: missing required fields {missing}")
        kwargs: dict[str, Any] = {n: data.get(n) for n in names}
        return cls(**kwargs)


# --- sensors: small functions of a root path --------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_thermal_zone_c(sys_root: Path = SYS_ROOT) -> float | None:
    """CPU temperature from ``class/thermal/thermal_zone*/temp`` (millidegrees C).

    Prefers a zone whose ``type`` names the CPU (a Pi's zone 0 is ``cpu-thermal``), else the
    lowest-numbered readable zone.
    """
    zones = sorted(
        (sys_root / "class" / "thermal").glob("thermal_zone*"),
        key=lambda p: int(re.sub(r"\D", "", p.name) or 0),
    )
    readings: list[tuple[str, float]] = []
    for zone in zones:
        raw = _read_text(zone / "temp")
        if raw is None:
            continue
        try:
            millideg = int(raw)
        except ValueError:
            continue
        readings.append((_read_text(zone / "type") or "", millideg / 1000.0))
    for kind, value in readings:
        if kind in PREFERRED_ZONE_TYPES:
            return value
    return readings[0][1] if readings else None


def read_psutil_temperature_c() -> float | None:
    """CPU temperature from psutil's hwmon reading (hottest entry of the CPU sensor)."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except (OSError, RuntimeError):
        return None
    if not sensors:
        return None
    key = next((k for k in PREFERRED_PSUTIL_SENSORS if k in sensors), next(iter(sensors)))
    values = [e.current for e in sensors[key] if e.current is not None]
    return max(values) if values else None


def read_temperature_c(sys_root: Path = SYS_ROOT) -> float | None:
    """psutil on the real sysfs (it knows hwmon), then thermal zones under ``sys_root``."""
    if sys_root == SYS_ROOT:
        value = read_psutil_temperature_c()
        if value is not None:
            return value
    return read_thermal_zone_c(sys_root)


def read_cpu_freq_mhz(sys_root: Path = SYS_ROOT) -> float | None:
    """Current frequency of cpu0 from cpufreq (kHz), else psutil's on the real sysfs."""
    raw = _read_text(sys_root / "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if raw is not None and raw.isdigit():
        return int(raw) / 1000.0
    if sys_root != SYS_ROOT:
        return None
    try:
        freq = psutil.cpu_freq()
    except (OSError, RuntimeError, NotImplementedError):
        return None
    # Some VMs report 0 MHz when they do not know; 0 is not a frequency.
    return float(freq.current) if freq is not None and freq.current > 0 else None


def parse_throttled(text: str) -> int | None:
    """The bitmask from ``50005``/``0x50005`` (sysfs) or ``throttled=0x50005`` (vcgencmd)."""
    value = text.strip().rpartition("=")[2].strip()
    try:
        return int(value, 16)
    except ValueError:
        return None


def read_throttled_sysfs(sys_root: Path = SYS_ROOT) -> int | None:
    """The Pi firmware's throttled bitmask from sysfs, or ``None`` off a Pi."""
    raw = _read_text(sys_root / THROTTLED_PATH)
    return parse_throttled(raw) if raw is not None else None


class ThrottleReader:
    """Reads the throttled bitmask from sysfs; falls back to ``vcgencmd`` at most every 5 s.

    The source is chosen once: sysfs file if present, else ``vcgencmd`` if on PATH (only
    consulted for the real sysfs root), else none (always ``None``).
    """

    def __init__(self, sys_root: Path = SYS_ROOT, vcgencmd: str | None = None) -> None:
        self._sys_root = sys_root
        self._use_sysfs = (sys_root / THROTTLED_PATH).exists()
        if vcgencmd is None and sys_root == SYS_ROOT and not self._use_sysfs:
            vcgencmd = shutil.which("vcgencmd")
        self._vcgencmd = None if self._use_sysfs else vcgencmd
        self._cached: int | None = None
        self._next_call = 0.0

    @property
    def source(self) -> str:
        return "sysfs" if self._use_sysfs else "vcgencmd" if self._vcgencmd else "none"

    def read(self) -> int | None:
        if self._use_sysfs:
            return read_throttled_sysfs(self._sys_root)
        if self._vcgencmd is None:
            return None
        now = time.monotonic()
        if now >= self._next_call:
            self._next_call = now + VCGENCMD_MIN_INTERVAL_S
            self._cached = self._call_vcgencmd(self._vcgencmd)
        return self._cached

    @staticmethod
    def _call_vcgencmd(exe: str) -> int | None:
        try:
            out = subprocess.run(
                [exe, "get_throttled"], capture_output=True, text=True, timeout=2.0, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("vcgencmd get_throttled failed: %s", exc)
            return None
        return parse_throttled(out)


# --- pure reductions --------------------------------------------------------------------------


def cpu_percent_between(before: Any, after: Any) -> float:
    """System CPU busy % between two ``psutil.cpu_times()`` readings (100 = all cores busy)."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0)
    )
    if total <= 0:
        return 0.0
    return min(max(100.0 * (total - idle) / total, 0.0), 100.0)


def process_percent_between(cpu_s_before: float, cpu_s_after: float, wall_s: float) -> float:
    """Process CPU % over ``wall_s`` seconds (100 = one core busy)."""
    if wall_s <= 0:
        return 0.0
    return max(100.0 * (cpu_s_after - cpu_s_before) / wall_s, 0.0)


# --- the sampling thread ----------------------------------------------------------------------


class DeviceSampler:
    """Samples this device and one process every ``interval_s`` on a daemon thread.

    ``latest()`` is the newest sample; ``drain()`` returns the samples since the previous drain.
    The buffer keeps at most ``max_samples`` (oldest dropped first, counted in ``dropped``), so
    a run that never drains does not grow without bound.
    """

    def __init__(
        self,
        interval_s: float = 0.2,
        process: psutil.Process | None = None,
        *,
        sys_root: Path = SYS_ROOT,
        max_samples: int = 3000,
        power_source: power.PowerSource | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ConfigError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._process = process if process is not None else psutil.Process()
        self._sys_root = sys_root
        self._throttle = ThrottleReader(sys_root)
        self._power = power_source
        self.power_source = power.source_name(power_source)
        self._buffer: collections.deque[DeviceSample] = collections.deque(maxlen=max_samples)
        self._latest: DeviceSample | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self._prev_sys = psutil.cpu_times()
        self._prev_proc = self._process_cpu_s()
        self._prev_wall = time.monotonic()

    def _process_cpu_s(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> DeviceSample:
        """Take one sample now; CPU percentages cover the time since the previous sample."""
        power_w = self._power.read_w() if self._power is not None else None
        now_sys, now_proc, now_wall = psutil.cpu_times(), self._process_cpu_s(), time.monotonic()
        net = psutil.net_io_counters()
        sample = DeviceSample(
            t=time.time(),
            cpu_percent=cpu_percent_between(self._prev_sys, now_sys),
            process_cpu_percent=process_percent_between(
                self._prev_proc, now_proc, now_wall - self._prev_wall
            ),
            cpu_freq_mhz=read_cpu_freq_mhz(self._sys_root),
            memory_percent=float(psutil.virtual_memory().percent),
            rss_mb=self._process.memory_info().rss / MB,
            temperature_c=read_temperature_c(self._sys_root),
            throttled=self._throttle.read(),
            net_bytes_sent=net.bytes_sent if net is not None else None,
            net_bytes_recv=net.bytes_recv if net is not None else None,
            power_w=power_w,
            power_source=self.power_source,
        )
        self._prev_sys, self._prev_proc, self._prev_wall = now_sys, now_proc, now_wall
        with self._lock:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(sample)
            self._latest = sample
        return sample

    def latest(self) -> DeviceSample | None:
        with self._lock:
            return self._latest

    def drain(self) -> list[DeviceSample]:
        with self._lock:
            out = list(self._buffer)
            self._buffer.clear()
        return out

    def start(self) -> DeviceSampler:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="device-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> DeviceSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        # Fixed-rate schedule: a slow sample shortens the next wait instead of drifting.
        next_at = time.monotonic() + self.interval_s
        while not self._stop.wait(max(next_at - time.monotonic(), 0.0)):
            next_at = max(next_at + self.interval_s, time.monotonic())
            try:
                self.sample()
            except psutil.NoSuchProcess:
                log.warning("sampled process %d is gone; sampler stops", self._process.pid)
                return
            except (OSError, psutil.Error) as exc:
                log.warning("device sample failed: %s", exc)
