"""Where a device's power reading comes from, chosen once per worker (issue #22).

In order of preference:

1. ``hwmon:<chip>``: a power monitor under ``/sys/class/hwmon`` (an INA219/INA226 on the
   ``ina2xx`` driver exposes ``power*_input`` in microwatts; an INA3221 on the ``ina3221`` driver
   exposes bus volts ``in<k>_input`` in mV and ``curr<k>_input`` in mA per channel, and the power
   of a channel is their product). Without ``channels`` the known power-monitor chips count, with
   every channel summed; ``channels`` names which count (see :func:`parse_channel`).
2. ``pmic``: a Raspberry Pi 5's PMIC, read with ``vcgencmd pmic_read_adc``; the power is the sum of
   volts x amps over the rails that report both. That is the board's rails after the PMIC's own
   regulators: it misses conversion losses and whatever USB devices draw from the 5 V input, so it
   reads below a meter in the supply line.
3. ``command``: ``power_command`` from the cluster file, any program that prints watts (the first
   number of its output), run at most once per sampler interval and killed after a timeout.
4. ``model``: no reading; the coordinator uses the device's linear power model.

Every reader takes its sysfs root and its ``vcgencmd`` as arguments, so tests point it at fakes.
A reading that fails is ``None`` (absent), never 0.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgesplit.errors import ConfigError

log = logging.getLogger(__name__)

SYS_ROOT = Path("/sys")
HWMON = Path("class/hwmon")
POWER_METER_CHIPS = frozenset(
    {
        "ina209", "ina219", "ina220", "ina226", "ina230", "ina231", "ina233", "ina234",
        "ina237", "ina238", "ina260", "ina3221",
    }
)  # fmt: skip
"""hwmon chip names that are power monitors; other chips count only when ``channels`` names
them (a GPU or battery driver's ``power1_input`` is not this device's supply)."""
BUS_CHANNELS = {"ina3221": 3}
"""Chips whose ``in<k>_input`` is a bus voltage only up to this ``k``: the INA3221's ``in4..6``
are shunt voltages (µV) and ``curr4_input`` the sum of the three currents."""
COMMAND_TIMEOUT_S = 2.0
VCGENCMD_TIMEOUT_S = 2.0
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PMIC_LINE = re.compile(
    r"^\s*(?P<rail>\S+)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+)[AV]\s*$"
)


class PowerSource(Protocol):
    """A device's power meter: ``name`` goes into the run record, ``read_w`` is the power now."""

    @property
    def name(self) -> str: ...

    def read_w(self) -> float | None: ...


# --- hwmon ------------------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def parse_channel(text: str) -> tuple[str, str | None]:
    """``CHIP`` (every channel of that chip) or ``CHIP:CHANNEL``, where CHANNEL is the channel's
    number (``ina3221:2``) or its label from ``in<k>_label`` (``ina3221:VDD_5V``)."""
    chip, sep, channel = text.strip().partition(":")
    if not chip or (sep and not channel):
        raise ConfigError(f"power channel must be CHIP or CHIP:CHANNEL, got {text!r}")
    return chip, channel if sep else None


@dataclass(frozen=True)
class HwmonChannel:
    """One measured rail of one hwmon chip. ``power_file`` (µW) or ``volts_file`` (mV) times
    ``amps_file`` (mA)."""

    chip: str
    index: int
    label: str
    power_file: Path | None = None
    volts_file: Path | None = None
    amps_file: Path | None = None

    def read_w(self) -> float | None:
        if self.power_file is not None:
            microwatts = _read_int(self.power_file)
            return None if microwatts is None else microwatts / 1e6
        assert self.volts_file is not None and self.amps_file is not None
        millivolts, milliamps = _read_int(self.volts_file), _read_int(self.amps_file)
        if millivolts is None or milliamps is None:
            return None
        return millivolts * milliamps / 1e6

    def matches(self, channel: str | None) -> bool:
        return channel is None or channel in (str(self.index), self.label)


def _index(path: Path, prefix: str) -> int | None:
    digits = path.name[len(prefix) :].partition("_")[0]
    return int(digits) if digits.isdigit() else None


def chip_channels(chip_dir: Path) -> list[HwmonChannel]:
    """The power channels of one hwmon chip: ``power<k>_input``, else every ``k`` with both
    ``in<k>_input`` and ``curr<k>_input`` (the INA3221's layout: bus volts and current; see
    :data:`BUS_CHANNELS`)."""
    chip = _read_text(chip_dir / "name")
    power = sorted(
        (i, p) for p in chip_dir.glob("power*_input") if (i := _index(p, "power")) is not None
    )
    if power:
        return [
            HwmonChannel(chip, i, _read_text(chip_dir / f"power{i}_label"), power_file=p)
            for i, p in power
        ]
    out = []
    for amps in sorted(chip_dir.glob("curr*_input")):
        i = _index(amps, "curr")
        volts = chip_dir / f"in{i}_input"
        if i is not None and volts.exists() and i <= BUS_CHANNELS.get(chip, i):
            label = _read_text(chip_dir / f"in{i}_label")
            out.append(HwmonChannel(chip, i, label, volts_file=volts, amps_file=amps))
    return sorted(out, key=lambda c: c.index)


@dataclass(frozen=True)
class HwmonSource:
    """The sum of the chosen hwmon channels (all of one chip's, or the configured ones)."""

    channels: tuple[HwmonChannel, ...]

    @property
    def name(self) -> str:
        chips = dict.fromkeys(c.chip for c in self.channels)
        return "hwmon:" + "+".join(chips)

    def read_w(self) -> float | None:
        """The sum over the channels; ``None`` if any channel cannot be read (a partial sum would
        look like a drop in power)."""
        total = 0.0
        for channel in self.channels:
            value = channel.read_w()
            if value is None:
                return None
            total += value
        return total


def find_hwmon(sys_root: Path = SYS_ROOT, channels: Sequence[str] = ()) -> HwmonSource | None:
    """The hwmon power source under ``sys_root``, or None.

    Without ``channels``: the first known power-monitor chip (by hwmon number) with all its
    channels. With them: every channel they name, of any chip; a name that matches nothing is a
    :class:`ConfigError` (a typo must not silently fall back to the model)."""
    chips = sorted(
        (sys_root / HWMON).glob("hwmon*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)
    )
    found = [(d, chip_channels(d)) for d in chips]
    if not channels:
        for _, chip_chans in found:
            if chip_chans and chip_chans[0].chip in POWER_METER_CHIPS:
                readable = tuple(c for c in chip_chans if c.read_w() is not None)
                if readable:
                    return HwmonSource(readable)
        return None
    chosen: list[HwmonChannel] = []
    for text in channels:
        chip, channel = parse_channel(text)
        hits = [c for _, cs in found for c in cs if c.chip == chip and c.matches(channel)]
        if not hits:
            known = sorted({f"{c.chip}:{c.index}" for _, cs in found for c in cs})
            raise ConfigError(
                f"power channel {text!r} matches no hwmon channel under {sys_root / HWMON}; "
                f"found {', '.join(known) or 'none'}"
            )
        chosen.extend(c for c in hits if c not in chosen)
    return HwmonSource(tuple(chosen))


# --- Raspberry Pi 5 PMIC ----------------------------------------------------------------------


def parse_pmic_adc(text: str) -> dict[str, float]:
    """Watts per rail from ``vcgencmd pmic_read_adc`` (rails reporting both ``<RAIL>_A
    current(n)=..A`` and ``<RAIL>_V volt(n)=..V``; a voltage alone, like ``EXT5V_V``, is not a
    rail's power)."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        (amps if m["kind"] == "A" else volts)[m["rail"]] = value
    return {rail: volts[rail] * amps[rail] for rail in amps if rail in volts}


@dataclass
class PmicSource:
    """A Raspberry Pi 5's PMIC rails, summed (see the module docstring for what it misses)."""

    vcgencmd: str
    timeout_s: float = VCGENCMD_TIMEOUT_S
    name: str = "pmic"

    def rails_w(self) -> dict[str, float]:
        try:
            out = subprocess.run(
                [self.vcgencmd, "pmic_read_adc"],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("vcgencmd pmic_read_adc failed: %s", exc)
            return {}
        return parse_pmic_adc(out)

    def read_w(self) -> float | None:
        rails = self.rails_w()
        return sum(rails.values()) if rails else None


def find_pmic(vcgencmd: str | None) -> PmicSource | None:
    """The PMIC source when ``vcgencmd pmic_read_adc`` lists rails (a Pi 5), else None (a Pi 4's
    firmware does not know the command)."""
    if vcgencmd is None:
        return None
    source = PmicSource(vcgencmd)
    return source if source.rails_w() else None


# --- a command that prints watts --------------------------------------------------------------


def parse_watts(text: str) -> float | None:
    """The first number in ``text`` (``4.2``, ``4.2 W``, ``power=4.2``), or None."""
    m = _NUMBER.search(text)
    return float(m.group()) if m else None


@dataclass
class CommandSource:
    """``power_command``: run at most once per ``min_interval_s`` (a faster caller gets the last
    value), killed after ``timeout_s``. No shell: a pipeline is written ``sh -c '...'``."""

    command: str
    min_interval_s: float = 0.0
    timeout_s: float = COMMAND_TIMEOUT_S
    name: str = "command"
    _argv: list[str] = field(init=False, repr=False)
    _last: float | None = field(default=None, init=False, repr=False)
    _next_at: float = field(default=0.0, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._argv = shlex.split(self.command)
        except ValueError as exc:
            raise ConfigError(f"power_command {self.command!r} is malformed: {exc}") from None
        if not self._argv:
            raise ConfigError("power_command is empty; expected a command that prints watts")

    def read_w(self) -> float | None:
        now = time.monotonic()
        if now < self._next_at:
            return self._last
        self._next_at = now + self.min_interval_s
        self._last = self._run()
        return self._last

    def _run(self) -> float | None:
        watts, why = None, ""
        try:
            done = subprocess.run(
                self._argv, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            why = f"took longer than {self.timeout_s:g} s"
        except OSError as exc:
            why = str(exc)
        else:
            if done.returncode != 0:
                why = f"exited with {done.returncode}: {done.stderr.strip()[:200]}"
            elif (watts := parse_watts(done.stdout)) is None:
                why = f"printed {done.stdout.strip()[:80]!r}, expected watts"
        if watts is None:
            # Once at WARNING, then DEBUG: a broken meter must not flood the log at 5 Hz.
            level = logging.DEBUG if self._warned else logging.WARNING
            log.log(level, "power_command %r %s; no power reading", self.command, why)
            self._warned = True
        return watts


# --- the choice -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerSettings:
    """A worker's power configuration (from its device entry of the cluster file, or flags).

    ``sensors=False`` skips hwmon and the PMIC: an emulated device on a metered host must not
    report the host's power as its own."""

    command: str | None = None
    channels: tuple[str, ...] = ()
    timeout_s: float = COMMAND_TIMEOUT_S
    sensors: bool = True


def choose_source(
    settings: PowerSettings,
    min_interval_s: float,
    sys_root: Path = SYS_ROOT,
    vcgencmd: str | None = None,
) -> PowerSource | None:
    """hwmon, then the PMIC, then ``settings.command``; None means the power model.

    ``vcgencmd`` defaults to the one on PATH, looked up only for the real sysfs root."""
    if settings.sensors:
        hwmon = find_hwmon(sys_root, settings.channels)
        if hwmon is not None:
            return hwmon
        if vcgencmd is None and sys_root == SYS_ROOT:
            vcgencmd = shutil.which("vcgencmd")
        pmic = find_pmic(vcgencmd)
        if pmic is not None:
            return pmic
    elif settings.channels:
        raise ConfigError("power channels name hwmon sensors, which this worker may not read")
    if settings.command:
        return CommandSource(settings.command, min_interval_s, settings.timeout_s)
    return None


def source_name(source: PowerSource | None) -> str:
    """What ``summary.json`` calls it: ``hwmon:<chip>``, ``pmic``, ``command`` or ``model``."""
    return source.name if source is not None else "model"
