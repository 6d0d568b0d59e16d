"""Device sampler: sensor readers on fake sysfs trees, pure reductions, a real sampling run."""

from __future__ import annotations

import itertools
import json
import time
from collections import namedtuple
from pathlib import Path

import pytest

from edgesplit.errors import ConfigError
from edgesplit.runtime.sampler import (
    THROTTLED_PATH,
    DeviceSample,
    DeviceSampler,
    ThrottleReader,
    cpu_percent_between,
    parse_throttled,
    process_percent_between,
    read_cpu_freq_mhz,
    read_temperature_c,
    read_thermal_zone_c,
    read_throttled_sysfs,
)


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_pi(root: Path, *, temp: bool = True, throttled: bool = True) -> Path:
    """A sysfs tree like a Raspberry Pi 4B's, optionally without temperature or throttling."""
    write(root, "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1500000\n")
    if temp:
        write(root, "class/thermal/thermal_zone0/type", "cpu-thermal\n")
        write(root, "class/thermal/thermal_zone0/temp", "48312\n")
    if throttled:
        write(root, THROTTLED_PATH, "50005\n")
    return root


def test_thermal_zone_prefers_cpu_zone(tmp_path: Path) -> None:
    write(tmp_path, "class/thermal/thermal_zone0/type", "acpitz\n")
    write(tmp_path, "class/thermal/thermal_zone0/temp", "27800\n")
    write(tmp_path, "class/thermal/thermal_zone10/type", "x86_pkg_temp\n")
    write(tmp_path, "class/thermal/thermal_zone10/temp", "61000\n")
    write(tmp_path, "class/thermal/thermal_zone2/temp", "garbage\n")
    assert read_thermal_zone_c(tmp_path) == pytest.approx(61.0)


def test_thermal_zone_falls_back_to_lowest_readable_zone(tmp_path: Path) -> None:
    write(tmp_path, "class/thermal/thermal_zone3/temp", "40000\n")
    write(tmp_path, "class/thermal/thermal_zone1/temp", "35500\n")
    assert read_thermal_zone_c(tmp_path) == pytest.approx(35.5)


def test_sensors_present_on_fake_pi(tmp_path: Path) -> None:
    root = fake_pi(tmp_path)
    assert read_temperature_c(root) == pytest.approx(48.312)
    assert read_throttled_sysfs(root) == 0x50005
    assert read_cpu_freq_mhz(root) == pytest.approx(1500.0)
    assert ThrottleReader(root).source == "sysfs"


def test_absent_sensors_are_none_not_zero(tmp_path: Path) -> None:
    root = fake_pi(tmp_path, temp=False, throttled=False)
    assert read_temperature_c(root) is None
    assert read_throttled_sysfs(root) is None
    reader = ThrottleReader(root)
    assert reader.source == "none"
    assert reader.read() is None
    assert read_cpu_freq_mhz(tmp_path / "empty") is None


def test_throttle_reader_rate_limits_vcgencmd(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    exe = tmp_path / "vcgencmd"
    exe.write_text(f'#!/bin/sh\necho x >> "{counter}"\necho throttled=0x80008\n')
    exe.chmod(0o755)
    reader = ThrottleReader(tmp_path, vcgencmd=str(exe))
    assert reader.source == "vcgencmd"
    assert [reader.read() for _ in range(5)] == [0x80008] * 5
    assert counter.read_text().count("x") == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [("0\n", 0), ("50005", 0x50005), ("0x50005", 0x50005), ("throttled=0x80008\n", 0x80008)],
)
def test_parse_throttled(text: str, value: int) -> None:
    assert parse_throttled(text) == value


def test_parse_throttled_rejects_garbage() -> None:
    assert parse_throttled("not a number") is None


Times = namedtuple("Times", "user nice system idle iowait")


def test_cpu_percent_between() -> None:
    before = Times(10.0, 0.0, 5.0, 80.0, 5.0)
    after = Times(13.0, 0.0, 6.0, 83.0, 6.0)  # 4 busy of 8 total
    assert cpu_percent_between(before, after) == pytest.approx(50.0)
    assert cpu_percent_between(after, after) == 0.0


def test_process_percent_between() -> None:
    assert process_percent_between(1.0, 2.5, 1.0) == pytest.approx(150.0)
    assert process_percent_between(1.0, 2.0, 0.0) == 0.0


def test_sample_round_trips_through_json() -> None:
    sample = DeviceSample(
        t=1.5,
        cpu_percent=12.0,
        process_cpu_percent=99.0,
        cpu_freq_mhz=None,
        memory_percent=40.0,
        rss_mb=80.5,
        temperature_c=None,
        throttled=0x50000,
        net_bytes_sent=10,
        net_bytes_recv=20,
    )
    data = json.loads(json.dumps(sample.to_dict()))
    assert data["temperature_c"] is None
    assert DeviceSample.from_dict(data) == sample


def test_from_dict_names_unknown_and_missing_fields() -> None:
    with pytest.raises(ConfigError, match="unknown fields \\['cpu'\\]"):
        DeviceSample.from_dict({"cpu": 1})
    with pytest.raises(ConfigError, match="missing required fields"):
        DeviceSample.from_dict({"t": 1.0})


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_sampler_thread_on_fake_pi(tmp_path: Path) -> None:
    root = fake_pi(tmp_path)
    with DeviceSampler(interval_s=0.05, sys_root=root) as sampler:
        _spin(0.4)
        time.sleep(0.1)
    samples = sampler.drain()
    assert 4 <= len(samples) <= 12
    assert sampler.drain() == []
    assert all(a.t < b.t for a, b in itertools.pairwise(samples))
    last = sampler.latest()
    assert last is not None and last == samples[-1]
    assert last.temperature_c == pytest.approx(48.312)
    assert last.throttled == 0x50005
    assert last.cpu_freq_mhz == pytest.approx(1500.0)
    # The spin kept this process busy: a good share of one core while it ran.
    assert max(s.process_cpu_percent for s in samples) > 30.0
    assert all(0.0 <= s.cpu_percent <= 100.0 for s in samples)
    assert last.rss_mb > 1.0
    assert 0.0 < last.memory_percent < 100.0


def test_sampler_real_host_buffer_is_bounded() -> None:
    sampler = DeviceSampler(interval_s=0.01, max_samples=3)
    for _ in range(5):
        sampler.sample()
    assert len(sampler.drain()) == 3
    assert sampler.dropped == 2
    with pytest.raises(ConfigError, match="interval_s"):
        DeviceSampler(interval_s=0)
