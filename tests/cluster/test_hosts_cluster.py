"""Emulated hosts for real (issue #24): namespaces, veths, a bridge and kernel-shaped links,
real workers over gRPC between distinct addresses. Needs root and iproute2 (CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgesplit.app.job import run_job
from edgesplit.cluster.emulate import EmulatedCluster, uniform_devices
from edgesplit.cluster.emulate_hosts import leftovers, run_ip, unavailable_reason
from edgesplit.cluster.faults import Injector, parse_injection
from edgesplit.config import LinkSpec, load_cluster
from edgesplit.runconfig import RunConfig

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=f"namespaced hosts: {REASON}"),
]
START_TIMEOUT_S = 120.0


def ours(pid: int) -> list[str]:
    """Namespaces and links of the clusters process ``pid`` built."""
    return [item for item in leftovers() if item.split(" ", 1)[1].startswith(f"es{pid}x")]


def wait_until_clean(pid: int, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := ours(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def class_rates(netns: str | None, dev: str) -> dict[str, str]:
    """``classid -> rate`` of the HTB classes on ``dev``."""
    cmd = ["tc", *(["-n", netns] if netns else []), "class", "show", "dev", dev]
    rates = {}
    for line in run_ip(cmd).stdout.splitlines():
        words = line.split()
        if "rate" in words:
            rates[words[2]] = words[words.index("rate") + 1]
    return rates


def test_run_from_another_shell_then_sigkill_leaves_nothing(tmp_path: Path) -> None:
    """``emulate --hosts`` writes real addresses; ``run --cluster`` in another process works
    against it; a SIGKILLed emulator leaves no namespace, veth, bridge or qdisc."""
    out = tmp_path / "cluster.yaml"
    emulate = subprocess.Popen(
        [sys.executable, "-m", "edgesplit", "emulate", "-n", "2", "--hosts",
         "--bandwidth-mbps", "200", "--out", str(out), "--folder", str(tmp_path / "c")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not out.exists():
            if emulate.poll() is not None or time.monotonic() > deadline:
                emulate.kill()
                pytest.fail(f"emulate --hosts did not start: {emulate.communicate()[1][-2000:]!r}")
            time.sleep(0.1)
        spec = load_cluster(out)
        hosts = [d.address.rsplit(":", 1) for d in spec.devices]
        assert [port for _, port in hosts] == ["50051", "50051"]
        assert len({host for host, _ in hosts}) == 2 and spec.coordinator_host.startswith("10.")
        assert spec.result_port == 50052 and spec.bandwidth_shaping == "network"
        assert len([i for i in ours(emulate.pid) if i.startswith("netns")]) == 2
        done = subprocess.run(
            [sys.executable, "-m", "edgesplit", "run", "--cluster", str(out), "--limit", "256",
             "--partition", "equal", "--json", "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "EDGESPLIT_CACHE_DIR": str(tmp_path / "cache")},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert summary["images"] == 256 and summary["accuracy"] > 0.8
    finally:
        os.kill(emulate.pid, signal.SIGKILL)
        emulate.wait(30)
    # The reaper tears the network down once the emulator is gone.
    assert wait_until_clean(emulate.pid) == []


def test_link_change_kill_and_pause_on_namespaced_hosts() -> None:
    with EmulatedCluster.start(
        uniform_devices(3), LinkSpec(bandwidth_mbps=100), hosts=True
    ) as cluster:
        assert cluster.network is not None
        layout = cluster.network.layout
        injector = Injector(cluster, [])
        link = parse_injection("link:pi1-pi2:bandwidth=50mbps,latency=3ms@0s+1s")
        event = injector.fire(link)
        assert "error" not in event, event
        # pi1 -> pi2 on pi1's veth and pi2 -> pi1 on pi2's; pi1 -> pi3 unchanged.
        assert class_rates(layout.netns("pi1"), layout.device_veth("pi1"))["1:12"] == "50Mbit"
        assert class_rates(layout.netns("pi2"), layout.device_veth("pi2"))["1:11"] == "50Mbit"
        assert class_rates(layout.netns("pi1"), layout.device_veth("pi1"))["1:13"] == "100Mbit"
        assert "error" not in injector.fire(link, ending=True)
        assert class_rates(layout.netns("pi1"), layout.device_veth("pi1"))["1:12"] == "100Mbit"
        pause = parse_injection("pi2:pause@0s+1s")
        assert "error" not in injector.fire(pause)
        assert _wait_state(cluster.pid("pi2"), lambda state: state == "T")
        assert "error" not in injector.fire(pause, ending=True)
        assert _wait_state(cluster.pid("pi2"), lambda state: state != "T")
        assert "error" not in injector.fire(parse_injection("pi3:kill@0s"))
        assert cluster.poll()["pi3"] is not None
    assert ours(os.getpid()) == []


def _wait_state(pid: int, ok: Callable[[str], bool], timeout_s: float = 10.0) -> bool:
    """Whether the process state (R, S, T...) satisfies ``ok`` within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if ok(state) or time.monotonic() > deadline:
            return ok(state)
        time.sleep(0.02)


NFT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nftables"


def nft_rules(name: str, subnet: str, table: str) -> str:
    """The shipped ruleset ``name`` for ``subnet``, its table renamed to ``table``."""
    text = (NFT_DIR / name).read_text()
    old_table = next(w for line in text.splitlines() if line.startswith("table inet ")
                     for w in line.split()[2:3])  # fmt: skip
    text = text.replace(f"table inet {old_table} ", f"table inet {table} ")
    return text.replace("define edgesplit_lan = 192.168.1.0/24", f"define edgesplit_lan = {subnet}")


def predictions(folder: Path) -> list[str]:
    lines = (folder / "predictions.csv").read_text().splitlines()
    return [line.split(",")[1] for line in lines[1:]]


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft not found: make hosts-tools")
def test_default_job_through_the_documented_firewall_matches_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules of docs/SETUP.md "Ports and firewall" (deploy/nftables) inside every host's
    namespace and, for traffic from the cluster's subnet, on the coordinator; the default job
    (10,000 Fashion-MNIST images) through them gives the loopback run's predictions."""
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path / "cache"))
    loop = run_job(RunConfig(network="loopback", out=tmp_path / "loopback"))
    assert loop.summary.images == 10_000
    with EmulatedCluster.start(uniform_devices(3), LinkSpec(bandwidth_mbps=940, latency_ms=0.2),
                               hosts=True) as cluster:  # fmt: skip
        assert cluster.network is not None
        layout = cluster.network.layout
        subnet = f"{layout.coordinator_ip.rsplit('.', 1)[0]}.0/24"
        table = f"edgesplit_{layout.tag}"
        for name in layout.devices:
            rules = tmp_path / f"{name}.nft"
            rules.write_text(nft_rules("edgesplit-worker.nft", subnet, "edgesplit_worker"))
            run_ip(["ip", "netns", "exec", layout.netns(name), "nft", "-f", str(rules)])
        rules = tmp_path / "coordinator.nft"
        rules.write_text(nft_rules("edgesplit-coordinator.nft", subnet, table))
        run_ip(["nft", "-f", str(rules)])
        try:
            # The rules are in force: a port the firewall does not open gets no answer at all.
            blocked = _connect(layout.ip("pi1"), 50053)
            assert blocked == "no answer", blocked
            assert _connect(layout.ip("pi1"), 50051) == "connected"
            hosted = run_job(RunConfig(out=tmp_path / "hosts"), cluster.spec)
        finally:
            run_ip(["nft", "delete", "table", "inet", table])
    assert hosted.summary.images == 10_000
    assert predictions(hosted.folder) == predictions(loop.folder)


def _connect(host: str, port: int) -> str:
    import socket

    try:
        with socket.create_connection((host, port), timeout=3.0):
            return "connected"
    except TimeoutError:
        return "no answer"
    except OSError as exc:
        return f"refused: {exc}"


def test_run_without_a_cluster_uses_emulated_hosts_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path / "cache"))
    outcome = run_job(
        RunConfig(limit=64, partition="equal", result_port=50099, out=tmp_path / "run")
    )
    assert any(n.startswith("emulated hosts: each device in its own network namespace")
               for n in outcome.notes), outcome.notes  # fmt: skip
    written = load_cluster(tmp_path / "run" / "cluster.yaml")
    assert written.bandwidth_shaping == "network" and written.result_port == 50099
    assert written.coordinator_host.startswith("10.231.")
    assert ours(os.getpid()) == []
