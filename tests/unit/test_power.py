"""Power sources on fake sysfs trees and a fake ``vcgencmd`` (issue #22)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from edgesplit.errors import ConfigError
from edgesplit.runtime import power
from edgesplit.runtime import samples as sample_codec
from edgesplit.runtime.sampler import DeviceSample, DeviceSampler

PI5_PMIC = """\
   3V7_WL_SW_A current(0)=0.10000000A
   3V3_SYS_A current(1)=0.05000000A
   1V8_SYS_A current(2)=0.20000000A
   VDD_CORE_A current(7)=2.00000000A
   3V7_WL_SW_V volt(8)=3.70000000V
   3V3_SYS_V volt(9)=3.30000000V
   1V8_SYS_V volt(10)=1.80000000V
   VDD_CORE_V volt(15)=0.90000000V
   EXT5V_V volt(24)=5.10000000V
"""
PI5_WATTS = 0.1 * 3.7 + 0.05 * 3.3 + 0.2 * 1.8 + 2.0 * 0.9  # EXT5V has no current: not a rail


def chip(root: Path, index: int, name: str, files: dict[str, str]) -> Path:
    folder = root / "class" / "hwmon" / f"hwmon{index}"
    folder.mkdir(parents=True)
    (folder / "name").write_text(name + "\n")
    for file, text in files.items():
        (folder / file).write_text(text + "\n")
    return folder


def ina219(root: Path, index: int = 1, microwatts: int = 4_250_000) -> Path:
    files = {"in0_input": "12", "in1_input": "5080", "curr1_input": "836"}
    return chip(root, index, "ina219", {**files, "power1_input": str(microwatts)})


def ina3221(root: Path, index: int = 2) -> Path:
    folder = chip(
        root,
        index,
        "ina3221",
        {
            "in1_input": "5000", "curr1_input": "800", "in1_label": "VDD_5V",
            "in2_input": "3300", "curr2_input": "100", "in2_label": "VDD_3V3",
            # shunt µV of channels 1-3, their sum, and the sum of the currents: not channels
            "in4_input": "40000", "in5_input": "5000", "in6_input": "0",
            "in7_input": "45000", "curr4_input": "900",
        },
    )  # fmt: skip
    # A disabled channel: the driver answers reads with an error (here: not a file).
    (folder / "in3_input").write_text("0\n")
    (folder / "curr3_input").mkdir()
    return folder


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# --- hwmon ------------------------------------------------------------------------------------


def test_ina2xx_power_input_is_microwatts(tmp_path: Path) -> None:
    ina219(tmp_path)
    source = power.find_hwmon(tmp_path)
    assert source is not None
    assert source.name == "hwmon:ina219"
    assert source.read_w() == pytest.approx(4.25)


def test_ina3221_is_volts_times_amps_per_channel(tmp_path: Path) -> None:
    ina3221(tmp_path)
    source = power.find_hwmon(tmp_path)
    assert source is not None and source.name == "hwmon:ina3221"
    # channel 1: 5.0 V x 0.8 A, channel 2: 3.3 V x 0.1 A; channel 3 is unreadable and left out
    assert [c.index for c in source.channels] == [1, 2]
    assert source.read_w() == pytest.approx(4.0 + 0.33)


def test_configured_channels_by_number_and_by_label(tmp_path: Path) -> None:
    ina3221(tmp_path)
    one = power.find_hwmon(tmp_path, ["ina3221:1"])
    by_label = power.find_hwmon(tmp_path, ["ina3221:VDD_3V3"])
    assert one is not None and one.read_w() == pytest.approx(4.0)
    assert by_label is not None and by_label.read_w() == pytest.approx(0.33)


def test_a_channel_that_matches_nothing_names_what_exists(tmp_path: Path) -> None:
    ina3221(tmp_path)
    with pytest.raises(ConfigError, match=r"'ina219:1' matches no hwmon channel.*ina3221:1"):
        power.find_hwmon(tmp_path, ["ina219:1"])
    with pytest.raises(ConfigError, match="CHIP or CHIP:CHANNEL"):
        power.find_hwmon(tmp_path, ["ina3221:"])


def test_no_power_monitor_is_no_source(tmp_path: Path) -> None:
    assert power.find_hwmon(tmp_path) is None  # no hwmon folder at all
    chip(tmp_path, 0, "cpu_thermal", {"temp1_input": "48000"})
    # A GPU's power is not the device's supply: only known monitors count unless named.
    chip(tmp_path, 1, "amdgpu", {"power1_input": "15000000"})
    assert power.find_hwmon(tmp_path) is None
    named = power.find_hwmon(tmp_path, ["amdgpu"])
    assert named is not None and named.read_w() == pytest.approx(15.0)


def test_a_failed_channel_read_is_no_reading_not_zero(tmp_path: Path) -> None:
    folder = ina219(tmp_path)
    source = power.find_hwmon(tmp_path)
    assert source is not None
    (folder / "power1_input").write_text("garbage\n")
    assert source.read_w() is None


# --- Pi 5 PMIC --------------------------------------------------------------------------------


def test_pmic_output_sums_the_rails() -> None:
    rails = power.parse_pmic_adc(PI5_PMIC)
    assert set(rails) == {"3V7_WL_SW", "3V3_SYS", "1V8_SYS", "VDD_CORE"}
    assert sum(rails.values()) == pytest.approx(PI5_WATTS)


def test_fake_vcgencmd_gives_the_pmic_source(tmp_path: Path) -> None:
    vcgencmd = script(
        tmp_path,
        "vcgencmd",
        f"import sys\nassert sys.argv[1:] == ['pmic_read_adc'], sys.argv\nprint({PI5_PMIC!r})",
    )
    source = power.choose_source(power.PowerSettings(), 0.2, tmp_path, vcgencmd)
    assert source is not None and source.name == "pmic"
    assert source.read_w() == pytest.approx(PI5_WATTS)


def test_a_pi4_vcgencmd_has_no_pmic(tmp_path: Path) -> None:
    vcgencmd = script(
        tmp_path,
        "vcgencmd",
        "import sys\nprint('error=2 error_msg=\"Command not registered\"')\nsys.exit(255)",
    )
    assert power.find_pmic(vcgencmd) is None


# --- power_command ----------------------------------------------------------------------------


def test_command_prints_watts(tmp_path: Path) -> None:
    meter = script(tmp_path, "meter", "print('power: 4.5 W')")
    source = power.choose_source(power.PowerSettings(command=meter), 0.0, tmp_path)
    assert source is not None and source.name == "command"
    assert source.read_w() == pytest.approx(4.5)


@pytest.mark.parametrize(
    "body", ["import sys; sys.exit(3)", "print('no number here')", "import time; time.sleep(30)"]
)
def test_a_failing_command_gives_no_reading(tmp_path: Path, body: str) -> None:
    source = power.CommandSource(script(tmp_path, "meter", body), timeout_s=0.5)
    assert source.read_w() is None


def test_command_runs_at_most_once_per_interval(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    meter = script(tmp_path, "meter", f"open({str(calls)!r}, 'a').write('x')\nprint(2.0)")
    source = power.CommandSource(meter, min_interval_s=3600.0)
    assert [source.read_w(), source.read_w()] == [2.0, 2.0]
    assert calls.read_text() == "x"


def test_malformed_command_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="malformed"):
        power.CommandSource("meter 'unclosed")


# --- the order --------------------------------------------------------------------------------


def test_hwmon_wins_over_pmic_and_command(tmp_path: Path) -> None:
    ina219(tmp_path)
    vcgencmd = script(tmp_path, "vcgencmd", f"print({PI5_PMIC!r})")
    settings = power.PowerSettings(command="echo 9")
    source = power.choose_source(settings, 0.2, tmp_path, vcgencmd)
    assert source is not None and source.name == "hwmon:ina219"


def test_without_sensors_only_the_command_counts(tmp_path: Path) -> None:
    ina219(tmp_path)
    settings = power.PowerSettings(command="echo 9", sensors=False)
    source = power.choose_source(settings, 0.2, tmp_path)
    assert source is not None and source.name == "command"
    assert power.choose_source(power.PowerSettings(sensors=False), 0.2, tmp_path) is None


def test_nothing_found_is_the_model(tmp_path: Path) -> None:
    source = power.choose_source(power.PowerSettings(), 0.2, tmp_path, vcgencmd=None)
    assert source is None
    assert power.source_name(source) == "model"


# --- the sampler and the wire -----------------------------------------------------------------


def test_sampler_reads_the_meter_with_the_other_metrics(tmp_path: Path) -> None:
    ina219(tmp_path, microwatts=3_100_000)
    sampler = DeviceSampler(sys_root=tmp_path, power_source=power.find_hwmon(tmp_path))
    sample = sampler.sample()
    assert sample.power_w == pytest.approx(3.1)
    assert sample.power_source == "hwmon:ina219"
    unmetered = DeviceSampler(sys_root=tmp_path).sample()
    assert (unmetered.power_w, unmetered.power_source) == (None, "model")


def test_power_fields_cross_the_wire_and_stay_absent_when_absent(tmp_path: Path) -> None:
    ina219(tmp_path)
    metered = DeviceSampler(sys_root=tmp_path, power_source=power.find_hwmon(tmp_path)).sample()
    decoded = sample_codec.to_dict(sample_codec.to_proto(metered))
    assert decoded == metered.to_dict()
    assert DeviceSample.from_dict(decoded) == metered
    bare = DeviceSample.from_dict({**metered.to_dict(), "power_w": None, "power_source": None})
    msg = sample_codec.to_proto(bare)
    assert not msg.HasField("power_w") and not msg.HasField("power_source")
    assert sample_codec.to_dict(msg)["power_w"] is None


def test_worker_metrics_export_measured_power_only_when_measured() -> None:
    from edgesplit.metrics.worker_prometheus import WorkerMetrics
    from tests.unit.test_live import FakeWorker, scrape

    base = {
        "t": 1.0, "cpu_percent": 30.0, "process_cpu_percent": 95.0, "cpu_freq_mhz": None,
        "memory_percent": 25.0, "rss_mb": 100.0, "temperature_c": None, "throttled": None,
        "net_bytes_sent": None, "net_bytes_recv": None,
    }  # fmt: skip
    worker = FakeWorker(DeviceSample(**base, power_w=4.75, power_source="hwmon:ina219"))
    metrics = WorkerMetrics("pi1", worker)
    pi1 = (("device", "pi1"),)
    assert scrape(metrics.registry)[("edgesplit_device_power_watts", pi1)] == 4.75
    worker.sample = DeviceSample(**base, power_source="model")
    assert ("edgesplit_device_power_watts", pi1) not in scrape(metrics.registry)
