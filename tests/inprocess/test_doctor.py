"""``edgesplit doctor``: the judgements, and the command against an emulated cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgesplit.cli import main
from edgesplit.cluster import doctor
from edgesplit.cluster.emulate import EmulatedCluster, uniform_devices

PI_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd08
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


@pytest.mark.parametrize(
    ("version", "machine", "status"),
    [
        ("2.4.0", "aarch64", "WARN"),
        ("2.10.0+cpu", "aarch64", "WARN"),
        ("2.10.0", "x86_64", "OK"),
        ("2.4.1", "aarch64", "OK"),
        (None, "aarch64", "OK"),  # a worker needs no torch (issue #17)
    ],
)
def test_torch_releases_that_crash_on_a_cortex_a72(
    version: str | None, machine: str, status: str
) -> None:
    check = doctor.judge_torch(version, machine)
    assert check.status == status
    if status == "WARN":
        assert "Illegal instruction" in check.detail and "pytorch/pytorch#" in check.detail
        assert check.fix


def test_python_cpu_memory_and_sensors() -> None:
    assert doctor.judge_python((3, 9, 18)).status == "FAIL"
    assert doctor.judge_python((3, 10, 12)).status == "OK"
    cpu = doctor.judge_cpu(PI_CPUINFO, "aarch64")
    assert cpu.status == "OK" and "Raspberry Pi 4" in cpu.detail and "asimd" in cpu.detail
    assert doctor.judge_memory(300, 3800).status == "WARN"
    assert doctor.judge_memory(3000, 3800).status == "OK"
    assert doctor.judge_temperature(None).status == "WARN"
    assert doctor.judge_temperature(81.5).status == "WARN"
    assert doctor.judge_temperature(55.0).status == "OK"


def test_throttle_flags() -> None:
    assert doctor.judge_throttled(0, is_pi=True).status == "OK"
    assert doctor.judge_throttled(None, is_pi=False).status == "OK"
    assert doctor.judge_throttled(None, is_pi=True).status == "WARN"
    check = doctor.judge_throttled(0x50005, is_pi=True)
    assert check.status == "WARN"
    assert "now under-voltage, throttled" in check.detail and "since boot" in check.detail


def test_device_judgements() -> None:
    same = ("0.1.0", "2.5.1")
    rows = doctor.judge_device("pi1", "10.0.0.11:50051", False, same, same, 0.4, 0.1)
    assert [(r.name, r.status) for r in rows] == [
        ("pi1 token", "OK"),
        ("pi1 tls", "WARN"),  # plaintext across a real network
        ("pi1 versions", "OK"),
        ("pi1 clock", "OK"),
    ]
    rows = doctor.judge_device("pi1", "127.0.0.1:5", True, ("0.1.0", "2.4.0"), same, 0.4, 40.0)
    status = {r.name: r.status for r in rows}
    assert status == {"pi1 token": "OK", "pi1 tls": "OK", "pi1 versions": "WARN",
                      "pi1 clock": "WARN"}  # fmt: skip
    assert "chrony" in rows[-1].fix
    token = doctor.judge_rpc_failure("pi2", "h:1", "device pi2 at h:1 rejected our token", False)
    assert (token.name, token.status) == ("pi2 token", "FAIL")
    tls = doctor.judge_rpc_failure("pi2", "h:1", "device pi2 at h:1 is unreachable (x)", True)
    assert (tls.name, tls.status) == ("pi2 tls", "FAIL") and "certs issue" in tls.fix


def test_table_has_a_fix_per_problem() -> None:
    rows = [doctor.ok("python", "3.10.12"), doctor.Check("pi2 reachable", "FAIL", "x", "start")]
    text = doctor.table(rows)
    assert text.splitlines()[0].split() == ["STATUS", "CHECK", "DETAIL", "FIX"]
    assert text.splitlines()[-1] == "1 OK, 0 WARN, 1 FAIL"
    assert text.splitlines()[2].endswith("start")


# --- against an emulated cluster -------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedCluster]:
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path / "cache"))
    with EmulatedCluster.start(uniform_devices(2, cpus=0.5), folder=tmp_path / "c") as running:
        yield running


def run_doctor(cluster_file: Path) -> tuple[int, list[dict[str, str]]]:
    result = CliRunner().invoke(main, ["doctor", "--cluster", str(cluster_file), "--json"])
    doc = json.loads(result.output)
    assert doc["ok"] == (result.exit_code == 0)
    return result.exit_code, doc["checks"]


@pytest.mark.slow
def test_doctor_on_an_emulated_cluster(cluster: EmulatedCluster, tmp_path: Path) -> None:
    cluster_file = cluster.write_spec(tmp_path / "cluster.yaml")
    code, checks = run_doctor(cluster_file)
    devices = [c for c in checks if c["name"].startswith(("pi1 ", "pi2 "))]
    assert code == 0
    assert {c["name"] for c in devices} == {
        f"{n} {what}" for n in ("pi1", "pi2") for what in
        ("reachable", "token", "tls", "versions", "clock", "power")
    }  # fmt: skip
    assert all(c["status"] == "OK" for c in devices), devices

    cluster.stop("pi2")
    code, checks = run_doctor(cluster_file)
    assert code == 1
    pi2 = [c for c in checks if c["name"].startswith("pi2 ")]
    assert [(c["name"], c["status"]) for c in pi2] == [("pi2 reachable", "FAIL")]
    assert "start the worker" in pi2[0]["fix"]
    assert all(c["status"] == "OK" for c in checks if c["name"].startswith("pi1 "))

    text = CliRunner().invoke(main, ["doctor", "--cluster", str(cluster_file)])
    assert text.exit_code == 1
    assert any(
        line.startswith("FAIL") and "pi2 reachable" in line for line in text.output.splitlines()
    )
