"""Emulated hosts (issue #24): each emulated device in its own network namespace, with its own
address on a bridge, and every link's bandwidth shaped by the kernel.

Layout of one cluster (``TAG`` is ``es<pid>x<k>``, unique per cluster of a process)::

    root namespace: bridge TAGbr, 10.231.N.1/24 (the coordinator's address)
       │ TAGh1 ─ veth ─ TAGn1  namespace TAG-pi1  10.231.N.11/24  worker on :50051
       │ TAGh2 ─ veth ─ TAGn2  namespace TAG-pi2  10.231.N.12/24  worker on :50051
       ...

Bandwidth is shaped per link and per direction with HTB (this kernel has no netem, so latency
stays in our send path: :meth:`edgesplit.config.ClusterSpec.sender_link`):

* device → device and device → coordinator: on the device's end of its veth (``TAGnI``), one
  class per destination address;
* coordinator → device: on the bridge's end of the device's veth (``TAGhI``), one class for
  traffic from the coordinator's address (traffic between devices passes unclassified).

A rate is the link's rate on the wire, as on Ethernet: TCP moves about 95 % of it as payload.

Nothing outlives the cluster: :meth:`HostNetwork.close` deletes the veths (and with them their
qdiscs), the bridge and the namespaces. A reaper process (``sh``, in its own session) waits for
the end of a pipe only this process holds, so a SIGKILLed run is cleaned up too; and every
start sweeps what a dead process left (:func:`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import itertools
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from edgesplit.config import LinkSpec, PairLink
from edgesplit.errors import ConfigError, WorkerError
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.timeouts import TIMEOUTS

log = logging.getLogger(__name__)

SUBNET_PREFIX = "10.231"
"""Clusters get ``10.231.N.0/24`` with the first N no address of this host is in."""
WORKER_PORT = 50051
"""Every emulated host's worker listens here, as on a Pi (see SETUP "Ports and firewall")."""
RESULT_PORT = 50052
"""The coordinator's result service on the bridge address of a namespaced cluster."""
MAX_DEVICES = 64
LOCK_FILE = Path("/run/lock/edgesplit-hosts.lock")
IP_TIMEOUT_S = TIMEOUTS.ip_command_s
UNSHAPED = "100gbit"
"""The rate of a class whose link has no bandwidth (every pair has a class, so a fault
injection changes a rate and never has to add a class and a filter in the middle of a run)."""
BURST_S = 0.002
MIN_BURST_BYTES = 16_000
QUANTUM_BYTES = 60_000
"""Above 200000 HTB warns; it only matters when classes share a parent's spare rate."""
_TAG = re.compile(r"^es(\d+)x(\d+)")
_counter = itertools.count()


@dataclass(frozen=True)
class HostLayout:
    """Names and addresses of one namespaced cluster (pure data: nothing is created here)."""

    tag: str
    subnet: int
    """N of 10.231.N.0/24."""
    devices: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _TAG.fullmatch(self.tag):
            raise ConfigError(f"host tag must look like es<pid>x<k>, got {self.tag!r}")
        if not 1 <= self.subnet <= 254:
            raise ConfigError(f"subnet must be in 1..254, got {self.subnet}")
        if not 1 <= len(self.devices) <= MAX_DEVICES:
            raise ConfigError(f"expected 1..{MAX_DEVICES} devices, got {len(self.devices)}")
        if len(self.bridge) > 15 or len(self.host_veth(self.devices[-1])) > 15:
            raise ConfigError(f"host tag {self.tag!r} makes interface names over 15 characters")

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def coordinator_ip(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def index(self, device: str) -> int:
        if device not in self.devices:
            raise ConfigError(f"no emulated host {device!r}; hosts: {', '.join(self.devices)}")
        return self.devices.index(device) + 1

    def netns(self, device: str) -> str:
        self.index(device)
        return f"{self.tag}-{device}"

    def host_veth(self, device: str) -> str:
        """The bridge's end of the device's veth (root namespace)."""
        return f"{self.tag}h{self.index(device)}"

    def device_veth(self, device: str) -> str:
        """The device's end of its veth (inside its namespace)."""
        return f"{self.tag}n{self.index(device)}"

    def ip(self, endpoint: str) -> str:
        """The address of a device, or of the coordinator (the bridge)."""
        if endpoint == COORDINATOR:
            return self.coordinator_ip
        return f"{SUBNET_PREFIX}.{self.subnet}.{10 + self.index(endpoint)}"

    def classid(self, destination: str) -> str:
        """The HTB class of traffic towards ``destination`` (1:2 is the coordinator)."""
        return "1:2" if destination == COORDINATOR else f"1:{10 + self.index(destination)}"


def link_between(default_link: LinkSpec, links: Sequence[PairLink], a: str, b: str) -> LinkSpec:
    for link in links:
        if set(link.between) == {a, b}:
            return link
    return default_link


def rate_args(bandwidth_mbps: float | None) -> list[str]:
    """HTB ``rate``/``burst`` arguments for a link (a burst of 2 ms at the rate)."""
    if bandwidth_mbps is None:
        return ["rate", UNSHAPED, "burst", "1mb", "cburst", "1mb", "quantum", str(QUANTUM_BYTES)]
    burst = max(round(bandwidth_mbps * 1e6 / 8 * BURST_S), MIN_BURST_BYTES)
    return [
        "rate", f"{bandwidth_mbps * 1000:.0f}kbit",
        "burst", str(burst), "cburst", str(burst),
        "quantum", str(QUANTUM_BYTES),
    ]  # fmt: skip


def _tc(netns: str | None, *args: str) -> list[str]:
    return ["tc", *(["-n", netns] if netns else []), *args]


def _filter(netns: str | None, dev: str, match: str, address: str, classid: str) -> list[str]:
    """Send IPv4 packets whose ``match`` (src or dst) address is ``address`` to ``classid``."""
    return _tc(netns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio",
               "1", "u32", "match", "ip", match, f"{address}/32", "flowid", classid)  # fmt: skip


def class_command(
    layout: HostLayout, source: str, destination: str, bandwidth_mbps: float | None, verb: str
) -> list[str]:
    """The ``tc class add|change`` that shapes ``source`` → ``destination``."""
    if source == COORDINATOR:
        dev, netns, classid = layout.host_veth(destination), None, "1:2"
    else:
        dev, netns = layout.device_veth(source), layout.netns(source)
        classid = layout.classid(destination)
    return _tc(netns, "class", verb, "dev", dev, "parent", "1:", "classid", classid,
               "htb", *rate_args(bandwidth_mbps))  # fmt: skip


def setup_commands(
    layout: HostLayout, default_link: LinkSpec, links: Sequence[PairLink] = ()
) -> list[list[str]]:
    """Every ``ip``/``tc`` command that builds the cluster's network, in order."""
    prefix = f"/{24}"
    cmds = [
        ["ip", "link", "add", layout.bridge, "type", "bridge"],
        ["ip", "addr", "add", layout.coordinator_ip + prefix, "dev", layout.bridge],
        ["ip", "link", "set", layout.bridge, "up"],
    ]
    for name in layout.devices:
        ns, host, dev = layout.netns(name), layout.host_veth(name), layout.device_veth(name)
        cmds += [
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", host, "type", "veth", "peer", "name", dev, "netns", ns],
            ["ip", "link", "set", host, "master", layout.bridge, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "addr", "add", layout.ip(name) + prefix, "dev", dev],
            ["ip", "-n", ns, "link", "set", dev, "up"],
        ]
    for name in layout.devices:
        ns, host, dev = layout.netns(name), layout.host_veth(name), layout.device_veth(name)
        # Out of the device: one class per destination, chosen by destination address.
        cmds.append(_tc(ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb"))
        for other in (*[d for d in layout.devices if d != name], COORDINATOR):
            link = link_between(default_link, links, name, other)
            cmds.append(class_command(layout, name, other, link.bandwidth_mbps, "add"))
            cmds.append(_filter(ns, dev, "dst", layout.ip(other), layout.classid(other)))
        # Into the device from the coordinator; traffic from other devices passes unclassified.
        link = link_between(default_link, links, COORDINATOR, name)
        cmds.append(_tc(None, "qdisc", "add", "dev", host, "root", "handle", "1:", "htb"))
        cmds.append(class_command(layout, COORDINATOR, name, link.bandwidth_mbps, "add"))
        cmds.append(_filter(None, host, "src", layout.coordinator_ip, "1:2"))
    return cmds


def teardown_commands(layout: HostLayout) -> list[list[str]]:
    """Deleting a veth's end deletes the pair and both qdiscs, whatever runs in the namespace."""
    cmds = [["ip", "link", "del", layout.host_veth(name)] for name in layout.devices]
    cmds.append(["ip", "link", "del", layout.bridge])
    cmds += [["ip", "netns", "del", layout.netns(name)] for name in layout.devices]
    return cmds


# --- what this host can do -------------------------------------------------------------------


def unavailable_reason(euid: int | None = None, path: str | None = None) -> str | None:
    """Why namespaced hosts cannot be built here (as user ``euid``, finding programs on
    ``path``; default: ours), or None when they can."""
    if euid is None:
        euid = os.geteuid() if hasattr(os, "geteuid") else -1
    if euid != 0:
        return "emulated hosts need root (network namespaces, veth pairs and tc qdiscs)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool, path=path) is None]
    if missing:
        return f"emulated hosts need {' and '.join(missing)} (iproute2); not found on PATH"
    if path is None:
        return namespace_probe()
    return None


@functools.cache
def namespace_probe() -> str | None:
    """Why this machine refuses a network namespace or a veth pair even to root (a container
    without CAP_SYS_ADMIN / CAP_NET_ADMIN, a kernel without veth), or None when both can be
    made. Tried once per process; what it makes is deleted at once."""
    tag = f"es{os.getpid()}x0"
    steps = [
        (["ip", "netns", "add", f"{tag}probe"], ["ip", "netns", "del", f"{tag}probe"]),
        (
            ["ip", "link", "add", f"{tag}pa", "type", "veth", "peer", "name", f"{tag}pb"],
            ["ip", "link", "del", f"{tag}pa"],
        ),
    ]
    for make, undo in steps:
        try:
            done = subprocess.run(
                make, capture_output=True, text=True, timeout=TIMEOUTS.host_check_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(make[:3])}` failed here: {exc}"
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
            return f"this machine refuses `{' '.join(make[:3])}` even to root: {first[:200]}"
        subprocess.run(undo, capture_output=True, timeout=TIMEOUTS.host_check_s, check=False)
    return None


def check_available(option: str = "--hosts") -> None:
    """ConfigError, naming ``option``, when namespaced hosts cannot be built here."""
    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(f"{option}: {reason}; without {option} the cluster runs on loopback")


# --- running the commands -----------------------------------------------------------------


def run_ip(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ``ip``/``tc``/``nft`` command; a failure is a WorkerError with its stderr."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkerError(f"{shlex.join(cmd)} failed: {exc}") from None
    if check and done.returncode != 0:
        raise WorkerError(
            f"{shlex.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done


def _owner_alive(name: str) -> bool:
    match = _TAG.match(name)
    return match is None or psutil.pid_exists(int(match.group(1)))


def leftovers() -> list[str]:
    """Namespaces and links of emulated hosts that exist now (``netns X`` / ``link X``)."""
    found = [f"netns {n}" for n in _netns_names() if _TAG.match(n)]
    found += [f"link {n}" for n in _link_names() if _TAG.match(n)]
    return found


def _netns_names() -> list[str]:
    if shutil.which("ip") is None:
        return []
    out = run_ip(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    if shutil.which("ip") is None:
        return []
    out = run_ip(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def stale() -> list[str]:
    """Leftovers whose creating process is gone."""
    return [item for item in leftovers() if not _owner_alive(item.split(" ", 1)[1])]


def sweep_stale() -> list[str]:
    """Delete the namespaces and links that dead processes left (e.g. SIGKILLed with their
    reaper); returns what was deleted."""
    removed = []
    for item in stale():
        kind, name = item.split(" ", 1)
        cmd = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
        if run_ip(cmd, check=False).returncode == 0:
            removed.append(item)
    if removed:
        log.info("removed stale emulated hosts: %s", ", ".join(removed))
    return removed


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One cluster chooses its subnet and builds it at a time on this host."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_subnet() -> int:
    """The first N with no address of this host in 10.231.N.0/24."""
    out = run_ip(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used = set()
    for token in out.split():
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_interface(token).network
            for n in range(1, 255):
                if net.overlaps(ipaddress.ip_network(f"{SUBNET_PREFIX}.{n}.0/24")):
                    used.add(n)
    for n in range(1, 255):
        if n not in used:
            return n
    raise WorkerError(f"no free {SUBNET_PREFIX}.N.0/24 subnet left for emulated hosts")


@dataclass
class HostNetwork:
    """A built namespaced network. Build with :meth:`create`; :meth:`close` removes it."""

    layout: HostLayout
    default_link: LinkSpec
    links: tuple[PairLink, ...]
    _reaper: subprocess.Popen[bytes] | None = None
    _reaper_pipe: int | None = None
    _closed: bool = False

    @classmethod
    def create(
        cls,
        devices: Sequence[str],
        default_link: LinkSpec | None = None,
        links: Sequence[PairLink] = (),
    ) -> HostNetwork:
        """Build the namespaces, veths, bridge and qdiscs for ``devices``; WorkerError (after
        removing what was built) when a command fails."""
        check_available()
        sweep_stale()
        tag = f"es{os.getpid()}x{next(_counter) % 100}"
        with _lock():
            layout = HostLayout(tag, free_subnet(), tuple(devices))
            network = cls(layout, default_link or LinkSpec(), tuple(links))
            network._start_reaper()
            try:
                for cmd in setup_commands(layout, network.default_link, network.links):
                    run_ip(cmd)
            except BaseException:
                network.close()
                raise
        log.info(
            "emulated hosts %s on %s.%d.0/24 (bridge %s)",
            ", ".join(devices), SUBNET_PREFIX, layout.subnet, layout.bridge,
        )  # fmt: skip
        return network

    def _start_reaper(self) -> None:
        """A shell that tears the network down once the pipe's write end (ours alone: it is
        not inherited by what we start) closes, i.e. when this process dies, even by SIGKILL."""
        script = "cat >/dev/null; " + "; ".join(
            shlex.join(cmd) + " 2>/dev/null" for cmd in teardown_commands(self.layout)
        )
        read_end, write_end = os.pipe()
        try:
            self._reaper = subprocess.Popen(
                ["sh", "-c", script],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to the run's process group spares it
            )
        except OSError as exc:
            os.close(write_end)
            raise WorkerError(f"cannot start the emulated hosts' cleanup process: {exc}") from None
        finally:
            os.close(read_end)
        self._reaper_pipe = write_end

    def netns_path(self, device: str) -> Path:
        return Path("/run/netns") / self.layout.netns(device)

    def address(self, device: str) -> str:
        return self.layout.ip(device)

    @property
    def coordinator_host(self) -> str:
        return self.layout.coordinator_ip

    def set_bandwidth(self, a: str, b: str, bandwidth_mbps: float | None) -> None:
        """Change the kernel's rate of the link between ``a`` and ``b``, both directions
        (``None``: back to the cluster's own link)."""
        for source, destination in ((a, b), (b, a)):
            rate = bandwidth_mbps
            if rate is None:
                rate = link_between(self.default_link, self.links, a, b).bandwidth_mbps
            run_ip(class_command(self.layout, source, destination, rate, "change"))

    def close(self) -> None:
        """Remove the namespaces, veths (with their qdiscs) and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for cmd in teardown_commands(self.layout):
            run_ip(cmd, check=False)
        if self._reaper is not None:
            # Our teardown is done; the reaper must not run it later over a reused tag.
            self._reaper.kill()
            self._reaper.wait()
        if self._reaper_pipe is not None:
            os.close(self._reaper_pipe)
            self._reaper_pipe = None
