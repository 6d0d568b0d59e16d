"""Joules from meters and from the model, the model's fit to a meter, and where they show
(issue #22). Pure: no processes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from edgesplit.cluster import doctor
from edgesplit.config import ClusterSpec, parse_cluster
from edgesplit.errors import ConfigError
from edgesplit.plan import energy
from edgesplit.plan.profile import DeviceProfile, Profile, UnitProfile, load_profile, to_problem
from edgesplit.shared.runsummary import DeviceRow
from tests.summaries import a_summary


def sample(t: float, watts: float | None, source: str = "command", cpu: float = 0.0) -> dict:
    return {
        "t": t,
        "cpu_percent": cpu,
        "process_cpu_percent": cpu,
        "power_w": watts,
        "power_source": source if watts is not None else "model",
    }


def cluster(*devices: dict[str, Any]) -> ClusterSpec:
    return parse_cluster({"devices": list(devices)})


def row(name: str, system_cpu: float) -> DeviceRow:
    return DeviceRow(
        name=name, stage=0, units=(0, 1), layers="a .. b", params=0, images=10,
        throughput_ips=1.0, cpu_percent=system_cpu, system_cpu_percent=system_cpu,
    )  # fmt: skip


# --- the trapezoid rule -----------------------------------------------------------------------


def test_integral_of_constant_and_of_a_ramp_is_exact() -> None:
    flat = [(t / 5, 4.0) for t in range(0, 51)]
    assert energy.integrate_j(flat, 0.0, 10.0) == pytest.approx(40.0)
    ramp = [(t / 5, 2.0 + 0.5 * t / 5) for t in range(0, 51)]
    # integral of 2 + 0.5 t over [1.1, 7.3]: the edges fall between readings
    expected = 2.0 * 6.2 + 0.25 * (7.3**2 - 1.1**2)
    assert energy.integrate_j(list(reversed(ramp)), 1.1, 7.3) == pytest.approx(expected)


def test_integral_holds_the_nearest_reading_beyond_the_readings() -> None:
    points = [(1.0, 2.0), (2.0, 4.0)]
    # [0, 1]: held at 2 W; [1, 2]: trapezoid 3 W; [2, 3]: held at 4 W
    assert energy.integrate_j(points, 0.0, 3.0) == pytest.approx(2.0 + 3.0 + 4.0)
    assert energy.integrate_j([], 0.0, 3.0) is None


# --- per device -------------------------------------------------------------------------------


def test_metered_devices_integrate_and_the_others_are_modelled() -> None:
    spec = cluster(
        {"name": "pi1", "address": "h:1", "power": {"idle_w": 2.0, "busy_w": 6.0}},
        {"name": "pi2", "address": "h:2", "power": {"idle_w": 2.0, "busy_w": 6.0}},
        {"name": "pi3", "address": "h:3"},
    )
    samples = {
        "pi1": [sample(100.0 + t / 5, 5.0, "hwmon:ina219") for t in range(0, 51)],
        "pi2": [sample(100.0 + t / 5, None) for t in range(0, 51)],
        # pi3 runs no stage (no row): idle, but metered, so measured all the same
        "pi3": [sample(100.0 + t / 5, 3.0, "pmic") for t in range(0, 51)],
    }
    rows = [row("pi1", 50.0), row("pi2", 25.0)]
    got = {e.name: e for e in energy.device_energy(spec, rows, samples, 100.0, 110.0, 20)}
    assert got["pi1"].source == "hwmon:ina219"
    assert got["pi1"].energy_j == pytest.approx(50.0)
    assert got["pi1"].model_energy_j == pytest.approx((2.0 + 4.0 * 0.5) * 10)
    assert got["pi2"].source == "model" and not got["pi2"].metered
    assert got["pi2"].energy_j == pytest.approx((2.0 + 4.0 * 0.25) * 10)
    assert got["pi3"].source == "pmic" and got["pi3"].energy_j == pytest.approx(30.0)
    assert got["pi3"].energy_j_per_image == pytest.approx(1.5)

    summary = energy.energy_summary(list(got.values()), 20, 100.0, 110.0)
    assert summary["metered"] == ["pi1", "pi3"]
    assert summary["energy_j"] == pytest.approx(50.0 + 30.0 + 30.0)
    assert summary["energy_j_per_image"] == pytest.approx(110.0 / 20)
    devices = summary["devices"]
    assert isinstance(devices, dict)
    assert {n: d["source"] for n, d in devices.items()} == {
        "pi1": "hwmon:ina219", "pi2": "model", "pi3": "pmic"
    }  # fmt: skip


# --- predicted against measured ---------------------------------------------------------------


def test_comparison_only_for_metered_runs_with_the_error() -> None:
    def used(source: str, energy_j: float, power_w: float) -> dict[str, Any]:
        return {"source": source, "utilisation": 0.5, "power_w": power_w, "energy_j": energy_j,
                "energy_j_per_image": energy_j / 20, "model_power_w": 2.5,
                "model_energy_j": 5.0, "readings": 10 if source != "model" else 0}  # fmt: skip

    spent: dict[str, Any] = {
        "window_t": [100.0, 102.0], "energy_j": 11.0, "energy_j_per_image": 0.55,
        "model_energy_j": 10.0, "model_energy_j_per_image": 0.5, "metered": ["pi1"],
        "devices": {"pi1": used("command", 6.0, 3.0), "pi2": used("model", 5.0, 2.5)},
    }  # fmt: skip
    predicted = {
        "objective": "throughput", "throughput_ips": 100.0, "latency_ms": 20.0,
        "bottleneck_ms": 10.0, "energy_j_per_image": 0.44, "stages": [],
    }  # fmt: skip
    summary = a_summary(energy=spent, predicted=predicted)
    got = energy.comparison(summary)
    assert got is not None
    text = "\n".join(got.lines())
    assert "measured 0.55 J/image (pi1 command; pi2 modelled)" in text
    assert "plan's prediction: 0.44 J/image (+25.0% against it)" in text
    assert "power model at the measured CPU use: 0.5 J/image (+10.0% against it)" in text
    rows = {r["device"]: r for r in energy.device_rows(summary)}
    assert rows["pi1"]["error"] == pytest.approx(0.2)
    assert rows["pi2"]["error"] is None
    assert energy.comparison(a_summary(energy={**spent, "metered": []})) is None


# --- the fit ----------------------------------------------------------------------------------


def test_fit_recovers_idle_and_busy_watts_from_a_noisy_series() -> None:
    rng = random.Random(7)
    idle, busy = 2.9, 7.1
    points = []
    for _ in range(200):
        u = rng.choice([rng.uniform(0.0, 0.1), rng.uniform(0.6, 1.0)])
        points.append((u, idle + (busy - idle) * u + rng.gauss(0.0, 0.08)))
    fit = energy.fit_power(points, "hwmon:ina219")
    assert isinstance(fit, energy.PowerFit)
    assert fit.idle_w == pytest.approx(idle, rel=0.02)
    assert fit.busy_w == pytest.approx(busy, rel=0.02)
    assert 0.05 < fit.residual_w < 0.12
    assert fit.readings == 200 and fit.source == "hwmon:ina219"


def test_fit_refuses_what_cannot_say_both_ends() -> None:
    assert "need 5" in str(energy.fit_power([(0.0, 3.0), (1.0, 6.0)], "pmic"))
    narrow = [(0.5 + i / 100, 4.0) for i in range(10)]
    assert "spans only" in str(energy.fit_power(narrow, "pmic"))
    falling = [(0.0, 1.0), (0.0, 1.0), (1.0, -1.0), (1.0, -1.0), (0.5, 0.0)]
    assert "expected both > 0" in str(energy.fit_power(falling, "pmic"))


def test_fit_readings_pair_each_intervals_cpu_with_its_mean_power() -> None:
    samples = [
        sample(0.4, 5.0, cpu=80.0),
        sample(0.0, 3.0, cpu=10.0),
        sample(0.2, 4.0, cpu=25.0),
        sample(0.6, None, cpu=90.0),  # the meter failed: no interval ends here
        sample(0.8, 2.0, cpu=5.0),
    ]
    source, points = energy.fit_readings(samples, cpus=0.5)
    assert source == "command"
    # (0.0, 0.2]: 25 % of one core over a 0.5 core share, (3 + 4) / 2 W; (0.2, 0.4]: capped at 1
    assert points == [(0.5, 3.5), (1.0, 4.5)]
    _, real = energy.fit_readings(samples, cpus=None)
    assert real == [(0.25, 3.5), (0.8, 4.5)]  # system CPU: all the device's cores


def profile_with(idle_w: float, busy_w: float, fit: dict[str, Any]) -> Profile:
    unit = UnitProfile(0, "a", "a", 10, 100, 4096, 40, 8192)
    device = DeviceProfile(
        "pi1", unit_ms=(5.0,), unit_spread_ms=(0.0,), threads=4, cpu_count=4, cpus=None,
        memory_budget_bytes=None, idle_w=idle_w, busy_w=busy_w, power_fit=fit,
    )  # fmt: skip
    return Profile("m", 32, 1, 10, 12288, (unit,), (device,), ())


def test_the_planner_uses_the_fit_over_the_cluster_files_model(tmp_path: Path) -> None:
    spec = cluster({"name": "pi1", "address": "h:1", "power": {"idle_w": 2.7, "busy_w": 6.4}})
    fitted = profile_with(3.1, 5.2, {"idle_w": 3.1, "busy_w": 5.2, "residual_w": 0.04})
    again = load_profile(fitted.save(tmp_path / "p.json"))
    assert again.devices[0].power_fit["residual_w"] == 0.04
    device = to_problem(again, spec).devices[0]
    assert (device.idle_w, device.busy_w) == (3.1, 5.2)
    unfitted = to_problem(profile_with(3.1, 5.2, {}), spec).devices[0]
    assert (unfitted.idle_w, unfitted.busy_w) == (2.7, 6.4)


def test_the_profile_table_shows_the_fit() -> None:
    from edgesplit.cli.profile import profile_table

    fit = {"idle_w": 3.1, "busy_w": 5.2, "residual_w": 0.04, "readings": 40, "source": "pmic"}
    text = profile_table(profile_with(3.1, 5.2, fit))
    assert "power fitted to pmic: idle 3.10 W, busy 5.20 W (residual 0.040 W, 40 readings)" in text
    assert "power fitted" not in profile_table(profile_with(2.7, 6.4, {}))


# --- configuration and doctor -----------------------------------------------------------------


def test_cluster_file_power_fields_are_checked() -> None:
    spec = cluster(
        {"name": "pi1", "address": "h:1", "power_command": "read-meter --watts",
         "power_channels": ["ina3221:1", "ina219"], "power_timeout_s": 1.5},
    )  # fmt: skip
    assert spec.devices[0].power_command == "read-meter --watts"
    with pytest.raises(ConfigError, match=r"power_channels: .*CHIP or CHIP:CHANNEL"):
        cluster({"name": "pi1", "address": "h:1", "power_channels": ["ina 3221"]})
    with pytest.raises(ConfigError, match="power_timeout_s"):
        cluster({"name": "pi1", "address": "h:1", "power_timeout_s": 0})


def test_doctor_names_the_power_source() -> None:
    spec = cluster({"name": "pi1", "address": "h:1", "power_command": "meter"}).devices[0]
    measured = doctor.judge_power("pi1 power", "hwmon:ina219", 4.2, spec)
    assert (measured.status, measured.detail) == ("OK", "measured: hwmon:ina219, 4.20 W now")
    model = doctor.judge_power("power", "model", None, None)
    assert model.status == "OK" and model.detail.startswith("model")
    missing = doctor.judge_power("pi1 power", "model", None, spec)
    assert missing.status == "WARN" and "--power-command" in missing.fix
    failing = doctor.judge_power("pi1 power", "command", None, spec)
    assert failing.status == "WARN" and "no reading" in failing.detail
    assert doctor.judge_power("pi1 power", None, None, spec).status == "WARN"
    channels = cluster({"name": "pi1", "address": "h:1", "power_channels": ["ina3221:1"]})
    unread = doctor.judge_power("pi1 power", "pmic", 5.0, channels.devices[0])
    assert unread.status == "WARN" and "--power-channel" in unread.fix
    read = doctor.judge_power("pi1 power", "hwmon:ina3221", 4.0, channels.devices[0])
    assert read.status == "OK"


# --- calibration during a profile, against a fake coordinator ---------------------------------


class FakeCoordinator:
    """``probe`` and ``clock_offsets_ms``, what calibration uses of a Coordinator: a device
    whose samples follow 2 W + 4 W x utilisation."""

    def __init__(self, metered: bool) -> None:
        self.metered = metered
        self.clock_offsets_ms = {"pi1": 0.0}
        self.asked: list[float] = []

    def probe(self, name: str, since_t: float = 0.0) -> tuple[Any, float, float]:
        from edgesplit.runtime import samples as sample_codec
        from edgesplit.runtime.proto import edgesplit_pb2 as pb

        self.asked.append(since_t)
        reply = pb.StatusReply(name=name, clock=1000.0)
        for k in range(12):
            u = 0.05 if k < 6 else 0.9
            watts = 2.0 + 4.0 * u if self.metered else None
            s = sample(1000.0 + k / 5, watts, "hwmon:ina226", cpu=100.0 * u)
            full = {**s, "memory_percent": 1.0, "rss_mb": 1.0}
            reply.samples.append(sample_codec.to_proto(_Sample(full)))
        return reply, 0.0, 0.0


class _Sample:
    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)


def test_calibration_fits_a_metered_device_and_skips_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgesplit.plan import calibrate

    monkeypatch.setattr(calibrate, "IDLE_S", 0.0)
    plain = FakeCoordinator(metered=False)
    assert calibrate.open_window(plain, "pi1") is None  # type: ignore[arg-type]
    coordinator = FakeCoordinator(metered=True)
    window = calibrate.open_window(coordinator, "pi1")  # type: ignore[arg-type]
    assert window == calibrate.Window("pi1", 1000.0, "hwmon:ina226")
    fit = calibrate.close_window(coordinator, window, cpus=None)  # type: ignore[arg-type]
    assert coordinator.asked[-1] == 1000.0  # the window's samples, on the device's clock
    assert isinstance(fit, energy.PowerFit) and fit.source == "hwmon:ina226"
    # The interval where utilisation jumps pairs 0.9 with the mean of 2.2 W and 5.6 W, so the
    # line is not exact; it still lands near 2 W and 6 W.
    assert fit.idle_w == pytest.approx(2.0, abs=0.3)
    assert fit.busy_w == pytest.approx(6.0, abs=0.6)
