"""Emulated hosts, the pure parts (issue #24): names, addresses and the ``ip``/``tc`` commands
a namespaced cluster is built from; the cluster file's result port and bandwidth shaping; and
``--hosts`` refused with a clear message where it cannot work. No root needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit.app.job import emulation_mode
from edgesplit.cluster.emulate_hosts import (
    HostLayout,
    class_command,
    rate_args,
    setup_commands,
    teardown_commands,
    unavailable_reason,
)
from edgesplit.config import ClusterSpec, LinkSpec, PairLink, parse_cluster
from edgesplit.errors import ConfigError
from edgesplit.shared.names import COORDINATOR

DEVICES = ("pi1", "pi2", "pi3")


def layout(devices: tuple[str, ...] = DEVICES) -> HostLayout:
    return HostLayout("es4194304x99", 7, devices)


def test_names_fit_the_kernel_limit_for_the_largest_pid_and_cluster() -> None:
    big = layout(tuple(f"pi{i}" for i in range(1, 65)))
    names = [big.bridge] + [big.host_veth(d) for d in big.devices]
    names += [big.device_veth(d) for d in big.devices]
    assert max(len(n) for n in names) <= 15
    assert len(set(names)) == len(names)
    addresses = [big.ip(d) for d in big.devices] + [big.coordinator_ip]
    assert len(set(addresses)) == 65
    assert big.coordinator_ip == "10.231.7.1" and big.ip("pi1") == "10.231.7.11"


def test_layout_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="es<pid>x<k>"):
        HostLayout("edgesplit", 7, DEVICES)
    with pytest.raises(ConfigError, match=r"1\.\.254"):
        HostLayout("es1x0", 255, DEVICES)
    with pytest.raises(ConfigError, match="no emulated host 'pi9'"):
        layout().netns("pi9")


def test_every_direction_of_every_link_gets_its_own_rate() -> None:
    links = [
        PairLink(between=("pi1", "pi2"), bandwidth_mbps=50),
        PairLink(between=(COORDINATOR, "pi3"), bandwidth_mbps=20),
    ]
    cmds = [" ".join(c) for c in setup_commands(layout(), LinkSpec(bandwidth_mbps=100), links)]
    # pi1 -> pi2 on pi1's veth, pi2 -> pi1 on pi2's: both at the pair's 50 Mbit/s.
    assert any(
        c.startswith("tc -n es4194304x99-pi1 class add dev es4194304x99n1")
        and "classid 1:12 htb rate 50000kbit" in c
        for c in cmds
    )
    assert any("-pi2 class add dev es4194304x99n2" in c and "1:11 htb rate 50000kbit" in c
               for c in cmds)  # fmt: skip
    # pi3 -> coordinator on pi3's veth, coordinator -> pi3 on the bridge's end of pi3's veth.
    assert any("-pi3 class add" in c and "classid 1:2 htb rate 20000kbit" in c for c in cmds)
    assert "tc class add dev es4194304x99h3 parent 1: classid 1:2 htb rate 20000kbit" in " | ".join(
        cmds
    )
    assert any(c.endswith("match ip src 10.231.7.1/32 flowid 1:2") and "h3" in c for c in cmds)
    # Every other pair at the default: 3 devices x 3 destinations + 3 uploads = 12 classes.
    classes = [c for c in cmds if " class add " in c]
    assert len(classes) == 12
    assert sum("rate 50000kbit" in c for c in classes) == 2
    assert sum("rate 20000kbit" in c for c in classes) == 2
    assert sum("rate 100000kbit" in c for c in classes) == 8
    # Each filter names the destination's address.
    assert any("match ip dst 10.231.7.13/32 flowid 1:13" in c for c in cmds)


def test_a_link_without_bandwidth_still_gets_a_class_that_a_fault_can_change() -> None:
    cmds = setup_commands(layout(("pi1", "pi2")), LinkSpec(bandwidth_mbps=None))
    classes = [c for c in cmds if c[:1] == ["tc"] and "class" in c]
    assert classes and all("100gbit" in c for c in classes)
    change = class_command(layout(("pi1", "pi2")), "pi2", "pi1", 50.0, "change")
    assert change[:6] == ["tc", "-n", "es4194304x99-pi2", "class", "change", "dev"]
    assert "50000kbit" in change


def test_burst_is_two_milliseconds_at_the_rate_with_a_floor() -> None:
    assert rate_args(940.0)[:4] == ["rate", "940000kbit", "burst", "235000"]
    assert rate_args(10.0)[3] == "16000"


def test_teardown_deletes_veths_before_the_bridge_and_namespaces() -> None:
    cmds = teardown_commands(layout())
    assert cmds[0] == ["ip", "link", "del", "es4194304x99h1"]
    assert ["ip", "link", "del", "es4194304x99br"] in cmds
    assert cmds[-1] == ["ip", "netns", "del", "es4194304x99-pi3"]


def spec(**extra: object) -> ClusterSpec:
    return parse_cluster(
        {
            "devices": [{"name": "pi1", "address": "10.0.0.11:50051"}],
            "default_link": {"bandwidth_mbps": 100, "latency_ms": 0.5},
            **extra,
        }
    )


def test_sender_link_leaves_bandwidth_to_the_network_but_keeps_latency() -> None:
    assert spec().sender_link(COORDINATOR, "pi1").bandwidth_mbps == 100
    shaped = spec(bandwidth_shaping="network").sender_link(COORDINATOR, "pi1")
    assert shaped.bandwidth_mbps is None and shaped.latency_ms == 0.5
    # The planner still sees the link's bandwidth.
    assert spec(bandwidth_shaping="network").link("pi1", COORDINATOR).bandwidth_mbps == 100


def test_result_port_is_checked_and_defaults_to_a_free_port() -> None:
    assert spec().result_port is None
    assert spec(result_port=50052).result_port == 50052
    with pytest.raises(ConfigError, match="result_port"):
        spec(result_port=70000)
    with pytest.raises(ConfigError, match="bandwidth_shaping"):
        spec(bandwidth_shaping="kernel")


def test_a_taken_result_port_names_the_fields_to_change() -> None:
    import socket

    from edgesplit.runtime.coordinator import bind_result_port
    from edgesplit.runtime.transport import make_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = make_server([], ["t"])
        try:
            cluster = spec(coordinator_host="127.0.0.1", result_port=port)
            with pytest.raises(ConfigError, match="coordinator_host and result_port"):
                bind_result_port(server, cluster)
            free = bind_result_port(server, spec(coordinator_host="127.0.0.1"))
            assert free != port and free > 0
        finally:
            server.stop(0)


def test_loopback_mode_is_always_there_and_says_so() -> None:
    hosts, note = emulation_mode("loopback")
    assert not hosts and "loopback" in note
    with pytest.raises(ConfigError, match="auto, hosts or loopback"):
        emulation_mode("bridge")


def test_hosts_need_root_and_iproute2(tmp_path: Path) -> None:
    assert "need root" in (unavailable_reason(euid=1000) or "")
    assert "need ip and tc (iproute2)" in (unavailable_reason(euid=0, path=str(tmp_path)) or "")


@pytest.mark.parametrize(
    "args",
    [
        ["emulate", "-n", "1", "--hosts", "--folder", "c"],
        ["run", "--network", "hosts", "--limit", "8", "--out", "c"],
    ],
)
def test_hosts_without_ip_fails_with_a_clear_message(tmp_path: Path, args: list[str]) -> None:
    """``emulate --hosts`` and ``run --network hosts`` where ``ip`` cannot be found (as root;
    else for want of root): one line, before anything starts."""
    done = subprocess.run(
        [sys.executable, "-m", "edgesplit", *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PATH": str(tmp_path), "EDGESPLIT_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    option = "--hosts" if args[0] == "emulate" else "--network hosts"
    assert f"{option}: emulated hosts need" in last, done.stderr
    assert f"without {option} the cluster runs on loopback" in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "c").exists()  # refused before anything started


def test_setup_shows_the_shipped_firewall_rules() -> None:
    """docs/SETUP.md "Ports and firewall" prints deploy/nftables/*.nft as they are (minus the
    comment header), so the rules the firewall test loads are the documented ones."""
    root = Path(__file__).resolve().parents[2]
    setup = (root / "docs" / "SETUP.md").read_text()
    for name in ("edgesplit-worker.nft", "edgesplit-coordinator.nft"):
        text = (root / "deploy" / "nftables" / name).read_text()
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
        assert f"```\n{body}\n```" in setup, name


def test_a_machine_that_refuses_namespaces_even_to_root_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a container without CAP_SYS_ADMIN root cannot make a namespace: `run`'s auto mode
    must fall back to loopback, so the probe has to say why instead of passing."""
    from edgesplit.cluster.emulate_hosts import namespace_probe

    fake = tmp_path / "ip"
    refusal = "mount --make-shared /run/netns failed: Operation not permitted"
    fake.write_text(f"#!/bin/sh\necho '{refusal}' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = namespace_probe.__wrapped__()
    assert reason is not None and "Operation not permitted" in reason and "ip netns add" in reason
