"""Measured energy on a real emulated cluster (issue #22): each worker runs its device's
``power_command`` with its samples, and the run integrates what they printed.

pi1's meter prints a ramp in time, pi3's a constant; pi2 has none (the model). The plan leaves
pi3 idle, so an idle device's joules are measured too. The trapezoid rule is exact for a ramp,
so the expected joules are closed-form integrals over the run's window; what remains is the
time between the meter's reading and the sample's timestamp (milliseconds, at 0.1 W/s)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgesplit.cli import main
from edgesplit.cluster.emulate import EmulatedCluster, EmulatedDevice

RAMP_W, RAMP_W_PER_S = 3.0, 0.1
CONSTANT_W = 2.5
T0 = time.time()


def ramp_command() -> str:
    code = f"import time; print({RAMP_W} + {RAMP_W_PER_S} * (time.time() - {T0!r}))"
    return f'{sys.executable} -S -c "{code}"'


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatedCluster, Path]]:
    folder = tmp_path_factory.mktemp("metered")
    devices = [
        EmulatedDevice("pi1", 0.5, power_command=ramp_command()),
        EmulatedDevice("pi2", 0.5),
        EmulatedDevice("pi3", 0.5, power_command=f"echo {CONSTANT_W}"),
    ]
    with EmulatedCluster.start(devices, folder=folder / "cluster", ready_timeout_s=90) as running:
        yield running, running.write_spec(folder / "cluster.yaml")


@pytest.mark.slow
def test_doctor_names_each_devices_power_source(metered: tuple[EmulatedCluster, Path]) -> None:
    _, cluster_file = metered
    result = CliRunner().invoke(main, ["doctor", "--cluster", str(cluster_file), "--json"])
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["pi1 power"]["detail"].startswith("measured: command, ")
    assert checks["pi2 power"]["detail"].startswith("model (2.7 W idle, 6.4 W busy)")
    assert checks["pi3 power"]["detail"] == f"measured: command, {CONSTANT_W:.2f} W now"
    assert checks["power"]["status"] in ("OK", "WARN")  # this host's own source


@pytest.mark.slow
def test_run_integrates_the_meters_readings(
    metered: tuple[EmulatedCluster, Path], tmp_path: Path
) -> None:
    _, cluster_file = metered
    out = tmp_path / "run"
    args = [
        "run", "--cluster", str(cluster_file), "--model", "mobilenet_v2", "--input-size", "32",
        "--limit", "960", "--partition", "0-9,9-", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [s["device"] for s in summary["plan"]["stages"]] == ["pi1", "pi2"]
    started, finished = summary["energy"]["window_t"]
    wall = finished - started
    devices = summary["energy"]["devices"]
    assert {n: d["source"] for n, d in devices.items()} == {
        "pi1": "command", "pi2": "model", "pi3": "command"
    }  # fmt: skip
    ramp_j = RAMP_W * wall + RAMP_W_PER_S * ((finished - T0) ** 2 - (started - T0) ** 2) / 2
    assert devices["pi1"]["energy_j"] == pytest.approx(ramp_j, rel=0.02)
    assert devices["pi1"]["readings"] >= 2
    assert devices["pi3"]["energy_j"] == pytest.approx(CONSTANT_W * wall, rel=0.02)
    assert devices["pi2"]["energy_j"] == pytest.approx(devices["pi2"]["model_energy_j"])
    total = sum(d["energy_j"] for d in devices.values())
    assert summary["energy"]["energy_j_per_image"] == pytest.approx(total / 960)
    assert summary["energy"]["metered"] == ["pi1", "pi3"]
    # The footer puts the measurement next to the model's prediction.
    assert "energy measured" in result.output
    assert "(pi1 command, pi3 command; pi2 modelled)" in result.output
    assert "power model at the measured CPU use" in result.output
