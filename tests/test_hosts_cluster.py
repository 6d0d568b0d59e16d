"""Emulated hosts for real (issue #24): namespaces, veths, a bridge and kernel-shaped links,
real workers over gRPC between distinct addresses. Needs root and iproute2 (CI runs as root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgesplit.config import LinkSpec, load_cluster
from edgesplit.emulate import EmulatedCluster, uniform_devices
from edgesplit.emulate_hosts import leftovers, run_ip, unavailable_reason
from edgesplit.faults import Injector, parse_injection

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
