"""``edgesplit doctor``: is this machine, and is this cluster, ready to run a pipeline?

Each check is a :class:`Check` (OK / WARN / FAIL, what was found, and a one-line fix). The
judgements are pure functions of what was read (``judge_*``), so they are tested without a Pi;
the readers and the cluster probe stay at the edge.

torch is *not* imported for the local checks: on a Raspberry Pi 4 (Cortex-A72, ARMv8.0, no LSE
atomics) some torch wheels die with SIGILL at ``import torch``, and doctor must still say why.
Known ones: 2.4.0 (https://github.com/pytorch/pytorch/issues/132032, fixed in 2.4.1) and 2.10.0
(https://github.com/pytorch/pytorch/issues/174344 and #176993, fixed in 2.11 by PR #174401).
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import platform
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from edgesplit._version import __version__
from edgesplit.config import ClusterSpec, DeviceSpec
from edgesplit.errors import EdgesplitError
from edgesplit.runtime import power
from edgesplit.runtime.sampler import ThrottleReader, read_temperature_c
from edgesplit.shared.timeouts import TIMEOUTS

Status = Literal["OK", "WARN", "FAIL"]

MIN_PYTHON = (3, 10)
TORCH_SIGILL_ON_ARMV8_0 = {
    "2.4.0": "pytorch/pytorch#132032",
    "2.10.0": "pytorch/pytorch#174344",
}
"""torch releases whose aarch64 wheels crash with an illegal instruction on a Cortex-A72."""
HOT_C = 80.0
"""A Pi 4's firmware starts capping the clock at 80 °C (soft limit)."""
LOW_MEMORY_MB = 500.0
CLOCK_OFFSET_WARN_MS = 10.0
RTT_WARN_MS = 5.0
"""A wired Gigabit LAN answers a Status call in about 1 ms; much more means Wi-Fi or a problem."""
CONNECT_TIMEOUT_S = TIMEOUTS.doctor_connect_s
SAMPLE_WAIT_S = 2.0
"""How long to wait for a worker's first sample (it samples at 5 Hz from its start)."""
THROTTLE_BITS = {
    0: "under-voltage",
    1: "ARM frequency capped",
    2: "throttled",
    3: "soft temperature limit",
}
"""Raspberry Pi firmware ``get_throttled`` bits now (0-3); the same bits + 16 mean 'since boot'."""


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "OK", detail)


# --- judgements (pure) -----------------------------------------------------------------------


def judge_python(version: tuple[int, ...]) -> Check:
    text = ".".join(str(v) for v in version[:3])
    if tuple(version[:2]) < MIN_PYTHON:
        return Check("python", "FAIL", text, "install Python >= 3.10 (Ubuntu 22.04 ships 3.10)")
    return ok("python", text)


def judge_torch(version: str | None, machine: str) -> Check:
    """Installed torch (read from package metadata, never imported) against known-bad wheels.
    A worker needs no torch (issue #17); only the coordinator does."""
    if version is None:
        return ok("torch", "not installed: fine for a worker; a coordinator needs it "
                  "(pip install 'edgesplit[coordinator]')")  # fmt: skip
    release = version.split("+")[0]
    issue = TORCH_SIGILL_ON_ARMV8_0.get(release)
    if issue and machine in ("aarch64", "arm64"):
        return Check(
            "torch",
            "WARN",
            f"{version}: crashes with 'Illegal instruction' on ARMv8.0 CPUs like the Pi 4's "
            f"Cortex-A72 ({issue})",
            "install another release, e.g. pip install 'torch!=2.4.0,!=2.10.0' (docs/SETUP.md)",
        )
    return ok("torch", version)


def judge_cpu(cpuinfo: str, machine: str) -> Check:
    """CPU model and the SIMD flags torch's kernels use (NEON/asimd on ARM, AVX on x86)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or machine
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    wanted = ("asimd", "atomics") if machine in ("aarch64", "arm64") else ("avx2", "avx512f")
    present = [f for f in wanted if f in flags]
    detail = f"{model} ({machine}; {', '.join(present) or 'no ' + '/'.join(wanted)})"
    if machine in ("aarch64", "arm64") and "asimd" not in flags and flags:
        return Check("cpu", "WARN", detail, "this CPU lacks NEON (asimd); torch will be very slow")
    return ok("cpu", detail)


def judge_temperature(temp_c: float | None) -> Check:
    if temp_c is None:
        return Check(
            "thermal sensor",
            "WARN",
            "none readable; the table's temperature column will say n/a",
            "normal in a VM or container; on a Pi check /sys/class/thermal/thermal_zone0/temp",
        )
    if temp_c >= HOT_C:
        return Check(
            "thermal sensor",
            "WARN",
            f"{temp_c:.1f} °C (the Pi 4 caps its clock from {HOT_C:g} °C)",
            "add a heatsink and fan; measurements taken while throttled are slower",
        )
    return ok("thermal sensor", f"{temp_c:.1f} °C")


def judge_throttled(mask: int | None, is_pi: bool) -> Check:
    if mask is None:
        if is_pi:
            return Check(
                "throttle flags",
                "WARN",
                "Raspberry Pi without readable get_throttled",
                "install the Pi firmware tools (vcgencmd) or use a kernel with the "
                "raspberrypi firmware driver",
            )
        return ok("throttle flags", "not a Raspberry Pi: none to read")
    now = [text for bit, text in THROTTLE_BITS.items() if mask & (1 << bit)]
    past = [text for bit, text in THROTTLE_BITS.items() if mask & (1 << (bit + 16))]
    if now or past:
        detail = f"0x{mask:x}: now {', '.join(now) or 'none'}; since boot {', '.join(past)}"
        return Check(
            "throttle flags",
            "WARN",
            detail,
            "use the official 5.1 V / 3 A supply and active cooling, then reboot to clear",
        )
    return ok("throttle flags", "0x0: never throttled since boot")


def judge_power(
    name: str, source: str | None, watts: float | None, device: DeviceSpec | None
) -> Check:
    """Where a device's power comes from (``name`` is "power" here, "<device> power" for a
    worker). ``source`` None: the worker sent no sample yet; ``device``: its cluster entry."""
    model = device.power if device is not None else None
    model_text = f"model ({model.idle_w:g} W idle, {model.busy_w:g} W busy)" if model else "model"
    if source is None:
        return Check(name, "WARN", "unknown: the worker sent no sample yet", "run doctor again")
    if device is not None and device.power_channels and not source.startswith("hwmon:"):
        return Check(
            name,
            "WARN",
            f"{source}: the cluster file names power_channels {device.power_channels}, the "
            "worker reads no hwmon sensor",
            f"start the worker on {device.name} with --cluster FILE or --power-channel; check "
            "the sensor with edgesplit doctor there",
        )
    if source == "model":
        if device is not None and device.power_command:
            return Check(
                name,
                "WARN",
                f"{model_text}: the cluster file gives power_command, the worker runs none",
                f"start the worker on {device.name} with --cluster FILE or --power-command "
                "(the command runs on the device, it is never sent to it)",
            )
        return ok(name, f"{model_text}; no meter (docs/SETUP.md, 'measure power')")
    reading = f"{watts:.2f} W now" if watts is not None else "no reading now"
    if watts is None:
        return Check(name, "WARN", f"{source}: {reading}", "check the meter (see the worker's log)")
    return ok(name, f"measured: {source}, {reading}")


def judge_memory(available_mb: float, total_mb: float) -> Check:
    detail = f"{available_mb:.0f} MB free of {total_mb:.0f} MB"
    if available_mb < LOW_MEMORY_MB:
        return Check("memory", "WARN", detail, "stop other programs; a worker needs ~300-500 MB")
    return ok("memory", detail)


# --- local readers ---------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def is_raspberry_pi(proc_root: Path = Path("/proc")) -> bool:
    model = _read(proc_root / "device-tree" / "model") + _read(proc_root / "cpuinfo")
    return "Raspberry Pi" in model


def judge_onnxruntime(version: str | None) -> Check:
    """Workers run their stages in ONNX Runtime: without it a worker cannot serve."""
    if version is None:
        return Check("onnxruntime", "FAIL", "not installed", "pip install onnxruntime onnx")
    return ok("onnxruntime", version)


def local_checks() -> list[Check]:
    """Checks of this machine: Python, torch, CPU, thermal sensor, throttle flags, memory."""
    machine = platform.machine()
    memory = psutil.virtual_memory()
    return [
        judge_python(tuple(sys.version_info[:3])),
        judge_torch(_package_version("torch"), machine),
        judge_onnxruntime(_package_version("onnxruntime")),
        judge_cpu(_read(Path("/proc/cpuinfo")), machine),
        judge_temperature(read_temperature_c()),
        judge_throttled(ThrottleReader().read(), is_raspberry_pi()),
        judge_memory(memory.available / 2**20, memory.total / 2**20),
        local_power(),
    ]


def local_power() -> Check:
    """This machine's power source, as a worker started here without flags would choose it."""
    try:
        source = power.choose_source(power.PowerSettings(), min_interval_s=0.0)
    except EdgesplitError as exc:
        return Check("power", "FAIL", str(exc), "fix the power channels")
    watts = source.read_w() if source is not None else None
    return judge_power("power", power.source_name(source), watts, None)


# --- cluster checks --------------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tcp_connect_ms(host: str, port: int) -> float:
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
        return (time.perf_counter() - start) * 1000


def judge_rpc_failure(name: str, address: str, message: str, tls: bool) -> Check:
    """What a failed Status round trip means once TCP got through (so the worker is up)."""
    if "rejected our token" in message:
        return Check(
            f"{name} token",
            "FAIL",
            f"{address} rejected our token",
            "give the device the cluster's token (/etc/edgesplit/token) or fix token/token_file",
        )
    if "protocol" in message:
        return Check(
            f"{name} versions",
            "FAIL",
            message.split(": ", 1)[-1],
            "install the same edgesplit on the device and here",
        )
    if "unreachable" in message:
        # TCP connected but gRPC did not: the TLS handshake (or the lack of one) failed.
        if tls:
            fix = (
                f"issue the device's certificate from this cluster's CA with its address: "
                f"edgesplit certs issue DIR {name} --host {_split_address(address)[0]}"
            )
        else:
            fix = "the worker may require mTLS: add tls: {ca, cert, key} to the cluster file"
        return Check(f"{name} tls", "FAIL", f"{address}: handshake failed ({message})", fix)
    return Check(f"{name} worker", "FAIL", message, f"see the worker's log on {name}")


def judge_device(
    name: str,
    address: str,
    tls: bool,
    versions: tuple[str, str],
    local_versions: tuple[str, str],
    rtt_ms: float,
    clock_offset_ms: float,
) -> list[Check]:
    """The checks of a device that answered: token, TLS, versions, round trip and clock."""
    host = _split_address(address)[0]
    checks = [ok(f"{name} token", "accepted")]
    if tls:
        checks.append(ok(f"{name} tls", "mutual TLS with the cluster CA"))
    elif _is_loopback(host):
        checks.append(ok(f"{name} tls", "plaintext on loopback (token only)"))
    else:
        checks.append(
            Check(
                f"{name} tls",
                "WARN",
                f"plaintext to {host}: the token and activations cross the network in clear",
                "edgesplit certs init/issue, start the worker with --tls-*, add tls: to the file",
            )
        )
    theirs = f"edgesplit {versions[0]}, torch {versions[1] or 'none (lean worker)'}"
    torch_differs = bool(versions[1]) and versions[1] != local_versions[1]
    if versions[0] != local_versions[0] or torch_differs:
        checks.append(
            Check(
                f"{name} versions",
                "WARN",
                f"{theirs}; here edgesplit {local_versions[0]}, torch {local_versions[1]}",
                version_fix(name, local_versions, torch_differs),
            )
        )
    else:
        checks.append(ok(f"{name} versions", f"{theirs} (same as here)"))
    timing = f"rtt {rtt_ms:.2f} ms, clock offset {clock_offset_ms:+.2f} ms"
    if abs(clock_offset_ms) > CLOCK_OFFSET_WARN_MS:
        checks.append(
            Check(
                f"{name} clock",
                "WARN",
                timing,
                "run chrony on every device against one time server (docs/SETUP.md)",
            )
        )
    elif rtt_ms > RTT_WARN_MS:
        fix = "use wired Gigabit Ethernet; check the switch and cables"
        checks.append(Check(f"{name} clock", "WARN", timing, fix))
    else:
        checks.append(ok(f"{name} clock", timing))
    return checks


def device_checks(cluster: ClusterSpec, device: DeviceSpec) -> list[Check]:
    """Reachability, token, TLS, versions, round trip and clock of one device."""
    import torch  # here, not at the top: the local checks must run where torch crashes

    from edgesplit.runtime.coordinator import Coordinator

    name, address = device.name, device.address
    host, port = _split_address(address)
    try:
        cluster.token_for(name)
    except EdgesplitError as exc:
        return [Check(f"{name} token", "FAIL", str(exc), "set token_file in the cluster file")]
    try:
        connect_ms = _tcp_connect_ms(host, port)
    except OSError as exc:
        return [
            Check(
                f"{name} reachable",
                "FAIL",
                f"{address}: {exc.strerror or exc}",
                f"start the worker on {host} (sudo systemctl start edgesplit-worker) or fix its "
                f"address in the cluster file; TCP port {port} must be open",
            )
        ]
    checks = [ok(f"{name} reachable", f"{address} (TCP connect {connect_ms:.1f} ms)")]
    single = cluster.model_copy(update={"devices": [device], "links": []})
    tls = cluster.tls is not None
    try:
        with Coordinator(single) as coordinator:
            info = coordinator.check()[name]
            source, watts = _worker_power(coordinator, name, info.clock_offset_ms)
    except EdgesplitError as exc:
        return [*checks, judge_rpc_failure(name, address, str(exc), tls)]
    return [
        *checks,
        *judge_device(
            name,
            address,
            tls,
            (info.edgesplit_version, info.torch_version),
            (__version__, torch.__version__),
            info.rtt_ms,
            info.clock_offset_ms,
        ),
        judge_power(f"{name} power", source, watts, device),
    ]


def _worker_power(coordinator: Any, name: str, offset_ms: float) -> tuple[str | None, float | None]:
    """The power source and watts of the worker's newest sample (None, None without one)."""
    import grpc

    deadline = time.monotonic() + SAMPLE_WAIT_S
    while True:
        since = time.time() + offset_ms / 1000.0 - SAMPLE_WAIT_S  # on the worker's clock
        try:
            reply, _, _ = coordinator.probe(name, since_t=since)
        except grpc.RpcError:
            return None, None
        if reply.samples or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not reply.samples:
        return None, None
    last = reply.samples[-1]
    return last.power_source or "model", last.power_w if last.HasField("power_w") else None


def cluster_checks(cluster: ClusterSpec) -> list[Check]:
    """The coordinator's TLS files, then every device (probed in parallel, listed in order)."""
    from edgesplit.cluster import certs

    checks = []
    if cluster.tls is not None:
        try:
            checks.append(ok("coordinator tls", certs.verify(cluster.tls)))
        except EdgesplitError as exc:
            fix = "edgesplit certs issue DIR coordinator (with this cluster's CA)"
            checks.append(Check("coordinator tls", "FAIL", str(exc), fix))
    with ThreadPoolExecutor(max_workers=max(1, len(cluster.devices))) as pool:
        per_device = list(pool.map(lambda d: device_checks(cluster, d), cluster.devices))
    for device_rows in per_device:
        checks.extend(device_rows)
    return checks


def table(checks: Sequence[Check]) -> str:
    """Fixed-width table: status, check, what was found, and the fix where one is needed."""
    rows = [("STATUS", "CHECK", "DETAIL", "FIX")]
    rows += [(c.status, c.name, c.detail, c.fix) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]).rstrip() for r in rows]
    counts = {s: sum(c.status == s for c in checks) for s in ("OK", "WARN", "FAIL")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def version_fix(name: str, here: tuple[str, str | None], torch_differs: bool) -> str:
    """What to install on ``name`` to match this machine. A local build tag (``+cu130``,
    ``+cpu``) names this machine's build, which a Pi cannot install (issue #20): only the public
    version is pinned, from PyTorch's CPU index where torch is concerned."""
    fix = f"pip install edgesplit=={here[0].split('+')[0]}"
    if torch_differs and here[1]:
        torch_public = here[1].split("+")[0]
        fix += (
            f" 'torch=={torch_public}' --index-url https://download.pytorch.org/whl/cpu "
            f"--extra-index-url https://pypi.org/simple"
        )
    return f"{fix} on {name}"
