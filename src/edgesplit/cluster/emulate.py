"""Emulated cluster: N real worker processes on this machine, each limited to a CPU share.

A CPU share is a cgroup CPU quota when we may create cgroups (v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``), otherwise worker threads plus CPU affinity; the cluster spec records
which mechanism is in force, so results say what they were measured under.

No worker outlives the cluster: each child runs in its own process group (so a stop also ends
anything it spawned), asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``,
which covers a SIGKILLed parent), and :meth:`EmulatedCluster.close` runs on ``with`` exit,
atexit, and SIGTERM (via :func:`exit_on_sigterm`). A SIGKILLed parent cannot remove its cgroup
directories; the next cluster start sweeps them (:func:`sweep_stale_cgroups`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import psutil

from edgesplit.config import (
    COORDINATOR,
    ClusterSpec,
    DeviceSpec,
    EmulationSpec,
    LinkSpec,
    PairLink,
    dump_cluster,
)
from edgesplit.errors import ConfigError, WorkerError

if TYPE_CHECKING:
    from edgesplit.cluster.emulate_hosts import HostNetwork

log = logging.getLogger(__name__)

Mechanism = Literal["cgroup-v1", "cgroup-v2", "affinity", "none"]
CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
STRESS_SHARE = 0.75
"""The part of a device's CPU share a CPU hog takes (issue #6: "most of one device's share")."""
MIN_CPUS = 0.01
"""The kernel refuses CFS quotas below 1 ms per period."""
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
_CGROUP_NAME = re.compile(r"^edgesplit-(\d+)-")


@dataclass(frozen=True)
class EmulatedDevice:
    """One emulated device: a worker limited to ``cpus`` cores (0.5 = half a core)."""

    name: str
    cpus: float = 1.0
    threads: int | None = None
    """Worker compute threads; default ``max(1, ceil(cpus))``."""
    power_command: str | None = None
    """A program that prints this device's watts (its worker runs it; see
    :mod:`edgesplit.runtime.power`). Without one the device's power is the model's."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"device name must match [A-Za-z0-9_.-]+, got {self.name!r}")
        if not self.cpus >= MIN_CPUS:
            raise ConfigError(f"device {self.name}: cpus must be >= {MIN_CPUS}, got {self.cpus}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"device {self.name}: threads must be >= 1, got {self.threads}")

    @property
    def worker_threads(self) -> int:
        return self.threads if self.threads is not None else max(1, math.ceil(self.cpus))


def uniform_devices(n: int, cpus: float = 1.0, threads: int | None = None) -> list[EmulatedDevice]:
    """``n`` equal devices named ``pi1`` .. ``piN``."""
    if n < 1:
        raise ConfigError(f"an emulated cluster needs at least 1 device, got {n}")
    return [EmulatedDevice(f"pi{i}", cpus, threads) for i in range(1, n + 1)]


@dataclass(frozen=True)
class WorkerLaunch:
    """What a worker command needs to know to start one device's worker."""

    name: str
    listen: str
    token_file: Path
    threads: int
    ready_file: Path
    """The worker writes its bound ``host:port`` here atomically once it serves."""
    power_command: str | None = None


def _power_args(launch: WorkerLaunch) -> list[str]:
    """An emulated worker never reads the host's power sensors: they measure the host."""
    args = ["--no-power-sensors"]
    if launch.power_command:
        args += ["--power-command", launch.power_command]
    return args


WorkerCommand = Callable[[WorkerLaunch], Sequence[str]]


def default_worker_cmd(launch: WorkerLaunch) -> list[str]:
    """The real worker: ``python -m edgesplit worker ...``."""
    return [
        sys.executable, "-m", "edgesplit", "worker",
        "--listen", launch.listen,
        "--name", launch.name,
        "--token-file", str(launch.token_file),
        "--threads", str(launch.threads),
        "--ready-file", str(launch.ready_file),
        *_power_args(launch),
    ]  # fmt: skip


def template_worker_cmd(template: str) -> WorkerCommand:
    """A worker command from a shell-style template with ``{name}``, ``{listen}``,
    ``{token_file}``, ``{threads}`` and ``{ready_file}`` placeholders."""
    try:
        shlex.split(
            template.format(name="x", listen="x", token_file="x", threads=1, ready_file="x")
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"worker command template {template!r} is malformed: {exc}") from None

    def build(launch: WorkerLaunch) -> list[str]:
        return shlex.split(template.format(**vars(launch)))

    return build


# --- CPU share mechanisms ---------------------------------------------------------------------


def _probe_mkdir(parent: Path) -> bool:
    # os.access says yes to root even where the kernel refuses a child cgroup; just try.
    probe = parent / f"edgesplit-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return False
    return True


def cgroup_base(mechanism: Mechanism, cgroup_root: Path = CGROUP_ROOT) -> Path | None:
    """The directory edgesplit's cgroups are created in for ``mechanism``, if it has one."""
    if mechanism == "cgroup-v1":
        return cgroup_root / "cpu"
    if mechanism == "cgroup-v2":
        for base in (cgroup_root, cgroup_root / "unified"):
            controllers = base / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split():
                return base
    return None


def detect_mechanism(cgroup_root: Path = CGROUP_ROOT) -> Mechanism:
    """The best CPU-share mechanism available here: cgroup v2, cgroup v1, affinity, none."""
    v2 = cgroup_base("cgroup-v2", cgroup_root)
    if v2 is not None and _probe_mkdir(v2):
        return "cgroup-v2"
    v1 = cgroup_root / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists() and _probe_mkdir(v1):
        return "cgroup-v1"
    return "affinity" if hasattr(os, "sched_setaffinity") else "none"


def create_cgroup(
    mechanism: Mechanism, name: str, cpus: float, cgroup_root: Path = CGROUP_ROOT
) -> Path:
    """Create ``edgesplit-<ourpid>-<name>`` limited to ``cpus`` cores; returns its directory."""
    base = cgroup_base(mechanism, cgroup_root)
    if base is None:
        raise ConfigError(f"{mechanism} has no cpu controller under {cgroup_root}")
    path = base / f"edgesplit-{os.getpid()}-{name}"
    try:
        if mechanism == "cgroup-v2":
            subtree = base / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise WorkerError(f"cannot create cgroup {path} for {name}: {exc}") from exc
    set_cgroup_quota(mechanism, path, cpus)
    return path


def set_cgroup_quota(mechanism: Mechanism, path: Path, cpus: float) -> None:
    """Limit the existing cgroup ``path`` to ``cpus`` cores."""
    quota_us = max(round(cpus * CFS_PERIOD_US), 1000)
    try:
        if mechanism == "cgroup-v2":
            (path / "cpu.max").write_text(f"{quota_us} {CFS_PERIOD_US}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota_us))
    except OSError as exc:
        raise WorkerError(f"cannot set the CPU quota of cgroup {path}: {exc}") from exc


def remove_cgroup(path: Path, timeout_s: float = 2.0) -> bool:
    """Remove an (emptied) cgroup directory; retries while the kernel still lists exiting tasks."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if time.monotonic() > deadline:
                log.warning("cannot remove cgroup %s: %s", path, exc)
                return False
            time.sleep(0.05)


def sweep_stale_cgroups(cgroup_root: Path = CGROUP_ROOT) -> list[Path]:
    """Remove edgesplit cgroups whose creating process is gone (e.g. it was SIGKILLed)."""
    removed = []
    mechanisms: tuple[Mechanism, ...] = ("cgroup-v1", "cgroup-v2")
    for mechanism in mechanisms:
        base = cgroup_base(mechanism, cgroup_root)
        if base is None or not base.is_dir():
            continue
        for path in base.glob("edgesplit-*"):
            match = _CGROUP_NAME.match(path.name)
            if match and not psutil.pid_exists(int(match.group(1))) and remove_cgroup(path, 0.0):
                removed.append(path)
    return removed


def affinity_sets(devices: Sequence[EmulatedDevice], host_cpus: Sequence[int]) -> list[set[int]]:
    """CPU sets for the affinity mechanism: ``ceil(cpus)`` CPUs each, dealt round-robin."""
    cpus = sorted(host_cpus)
    sets, next_cpu = [], 0
    for device in devices:
        want = min(max(1, math.ceil(device.cpus)), len(cpus))
        sets.append({cpus[(next_cpu + k) % len(cpus)] for k in range(want)})
        next_cpu = (next_cpu + want) % len(cpus)
    return sets


HOG_PROGRAM = (
    "import os, sys\n"
    "parent = int(sys.argv[1])\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(200_000):\n"
    "        pass\n"
)
"""A CPU hog that ends when the process that started it is gone (it checks every few ms).
Hogs are started by whichever thread fires a stress (the fault injector's, which ends after
its last injection), so the parent-death signal, which Linux ties to the forking thread,
killed a hog at once when the stress was the run's last injection."""


def _child_setup(
    parent_pid: int,
    procs_file: Path | None,
    cpu_set: set[int] | None,
    netns_fd: int | None = None,
    death_signal: bool = True,
) -> Callable[[], None]:
    """The function the child runs between fork and exec. Everything it needs is bound here:
    loading libraries after fork can deadlock in a threaded parent. ``netns_fd``: an open
    ``/run/netns/NAME``, the network namespace the child enters (an emulated host).

    ``death_signal``: SIGKILL the child when its parent dies. Linux sends it when the parent
    *thread* that forked it ends, so only children forked by a thread that lives as long as
    the process may ask for it (see :data:`HOG_PROGRAM` for the others)."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    prctl = libc.prctl if libc is not None else None
    setns = libc.setns if libc is not None and netns_fd is not None else None
    procs = str(procs_file) if procs_file is not None else None

    def setup() -> None:
        if setns is not None and setns(netns_fd, CLONE_NEWNET) != 0:
            os._exit(126)
        if prctl is not None and death_signal:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
        if procs is not None:
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))
        if cpu_set is not None:
            os.sched_setaffinity(0, cpu_set)

    return setup


# --- the cluster ------------------------------------------------------------------------------


@dataclass
class _Worker:
    device: EmulatedDevice
    launch: WorkerLaunch
    log_path: Path
    process: subprocess.Popen[bytes]
    cgroup: Path | None = None
    cpu_set: set[int] | None = None
    """The CPUs it may use under the affinity mechanism."""
    address: str | None = None
    state: Literal["starting", "running", "paused", "stopped"] = "starting"
    hogs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    hog_cgroup: Path | None = None


@dataclass
class EmulatedCluster:
    """Running emulated devices. Build with :meth:`start`; use as a context manager."""

    folder: Path
    mechanism: Mechanism
    token_file: Path
    default_link: LinkSpec
    links: tuple[PairLink, ...]
    network: HostNetwork | None = None
    """Namespaced hosts with kernel-shaped links (``hosts=True``); None: all on loopback."""
    _workers: dict[str, _Worker] = field(default_factory=dict)
    _own_folder: bool = False
    _closed: bool = False

    @classmethod
    def start(
        cls,
        devices: Sequence[EmulatedDevice],
        default_link: LinkSpec | None = None,
        links: Sequence[PairLink] = (),
        *,
        worker_cmd: WorkerCommand = default_worker_cmd,
        folder: Path | None = None,
        base_port: int = 0,
        mechanism: Mechanism | Literal["auto"] = "auto",
        ready_timeout_s: float = 60.0,
        cgroup_root: Path = CGROUP_ROOT,
        hosts: bool = False,
    ) -> EmulatedCluster:
        """Start one worker per device and wait until every one has written its ready file.

        ``hosts``: each device in its own network namespace with its own address, links shaped
        by the kernel (:mod:`edgesplit.cluster.emulate_hosts`); ConfigError when this host cannot.

        Raises WorkerError (with the tail of the worker's log) when a worker exits or is not
        ready within ``ready_timeout_s``; everything started so far is stopped first.

        Call it from a thread that lives as long as the cluster: the kernel sends the
        parent-death signal when the *thread* that forked a worker exits, not the process.
        """
        names = [d.name for d in devices]
        if not devices or len(set(names)) != len(names):
            raise ConfigError(f"expected at least one device and unique names, got {names}")
        for link in links:
            unknown = sorted(set(link.between) - {*names, COORDINATOR})
            if unknown:
                raise ConfigError(f"link {list(link.between)} names unknown devices {unknown}")
        if mechanism == "auto":
            mechanism = detect_mechanism(cgroup_root)
        if mechanism.startswith("cgroup"):
            sweep_stale_cgroups(cgroup_root)
        own = folder is None
        folder = Path(tempfile.mkdtemp(prefix="edgesplit-emulate-")) if folder is None else folder
        folder.mkdir(parents=True, exist_ok=True)
        token_file = folder / "token"
        with contextlib.suppress(FileNotFoundError):
            token_file.unlink()
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        cluster = cls(folder, mechanism, token_file, default_link or LinkSpec(), tuple(links))
        cluster._own_folder = own
        atexit.register(cluster.close)
        try:
            if hosts:
                from edgesplit.cluster.emulate_hosts import HostNetwork

                cluster.network = HostNetwork.create(names, cluster.default_link, links)
            cpu_sets = affinity_sets(devices, _host_cpus())
            for i, device in enumerate(devices):
                port = base_port + i if base_port else 0
                cluster._spawn(device, worker_cmd, port, cpu_sets[i], cgroup_root)
            cluster._wait_ready(ready_timeout_s)
        except BaseException:
            cluster.close()
            raise
        where = "namespaced hosts" if hosts else "loopback"
        log.info("emulated cluster up: %s (%s, %s) in %s", ", ".join(names), mechanism, where,
                 folder)  # fmt: skip
        return cluster

    def _spawn(
        self,
        device: EmulatedDevice,
        worker_cmd: WorkerCommand,
        port: int,
        cpu_set: set[int],
        cgroup_root: Path,
    ) -> None:
        host = self.network.address(device.name) if self.network else "127.0.0.1"
        if self.network is not None and not port:
            from edgesplit.cluster.emulate_hosts import WORKER_PORT

            port = WORKER_PORT  # each host has its own address: the port a Pi uses
        launch = WorkerLaunch(
            name=device.name,
            listen=f"{host}:{port}",
            token_file=self.token_file,
            threads=device.worker_threads,
            ready_file=self.folder / f"{device.name}.ready",
            power_command=device.power_command,
        )
        with contextlib.suppress(FileNotFoundError):
            launch.ready_file.unlink()
        cgroup = None
        if self.mechanism in ("cgroup-v1", "cgroup-v2"):
            cgroup = create_cgroup(self.mechanism, device.name, device.cpus, cgroup_root)
        affinity = cpu_set if self.mechanism == "affinity" else None
        procs = cgroup / "cgroup.procs" if cgroup is not None else None
        log_path = self.folder / f"{device.name}.log"
        argv = list(worker_cmd(launch))
        netns_fd = None
        try:
            if self.network is not None:
                netns_fd = os.open(self.network.netns_path(device.name), os.O_RDONLY)
            with open(log_path, "wb") as log_fh:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: killpg reaches grandchildren
                    preexec_fn=_child_setup(os.getpid(), procs, affinity, netns_fd),
                )
        except (OSError, subprocess.SubprocessError) as exc:
            if cgroup is not None:
                remove_cgroup(cgroup)
            raise WorkerError(f"cannot start worker {device.name} ({argv[0]}): {exc}") from exc
        finally:
            if netns_fd is not None:
                os.close(netns_fd)
        self._workers[device.name] = _Worker(device, launch, log_path, process, cgroup, affinity)
        log.debug("[%s] started pid %d: %s", device.name, process.pid, shlex.join(argv))

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = dict(self._workers)
        while pending:
            for name, worker in list(pending.items()):
                text = _read_ready(worker.launch.ready_file)
                if text:
                    worker.address, worker.state = text, "running"
                    del pending[name]
                elif worker.process.poll() is not None:
                    raise WorkerError(
                        f"worker {name} exited with code {worker.process.returncode} before it "
                        f"was ready; last lines of {worker.log_path}:\n{_tail(worker.log_path)}"
                    )
            if pending and time.monotonic() > deadline:
                name, worker = next(iter(pending.items()))
                raise WorkerError(
                    f"workers {sorted(pending)} not ready after {timeout_s:g} s (no "
                    f"{worker.launch.ready_file.name}); last lines of {worker.log_path}:\n"
                    f"{_tail(worker.log_path)}"
                )
            if pending:
                time.sleep(0.05)
        self.spec  # noqa: B018 - validate the addresses now, not at the caller's first use

    @property
    def spec(self) -> ClusterSpec:
        """The cluster file's content: addresses, token file, links, and each CPU share (what
        the worker gets: a device under a CPU hog keeps ``1 - STRESS_SHARE`` of its own)."""
        devices = []
        for w in self._workers.values():
            cpus = w.device.cpus * (1 - STRESS_SHARE) if w.hog_cgroup else w.device.cpus
            emulation = EmulationSpec(cpus=cpus, mechanism=self.mechanism, pid=w.process.pid)
            try:
                devices.append(
                    DeviceSpec(
                        name=w.device.name,
                        address=w.address or "",
                        threads=w.device.worker_threads,
                        power_command=w.device.power_command,
                        emulation=emulation,
                    )
                )
            except ValueError as exc:
                raise WorkerError(
                    f"worker {w.device.name} wrote {w.address!r} to {w.launch.ready_file}; "
                    f"expected HOST:PORT ({exc})"
                ) from None
        if self.network is None:
            return ClusterSpec(
                devices=devices,
                default_link=self.default_link,
                links=list(self.links),
                token_file=self.token_file,
            )
        from edgesplit.cluster.emulate_hosts import RESULT_PORT

        return ClusterSpec(
            devices=devices,
            default_link=self.default_link,
            links=list(self.links),
            token_file=self.token_file,
            coordinator_host=self.network.coordinator_host,
            result_port=RESULT_PORT,
            bandwidth_shaping="network",
        )

    def write_spec(self, path: Path) -> Path:
        """Write the cluster file atomically (a reader never sees half a file)."""
        tmp = path.with_name(path.name + ".tmp")
        dump_cluster(self.spec, tmp)
        os.replace(tmp, path)
        return path

    @property
    def names(self) -> list[str]:
        return list(self._workers)

    def _worker(self, name: str) -> _Worker:
        if name not in self._workers:
            raise ConfigError(f"no emulated device {name!r}; devices: {', '.join(self._workers)}")
        return self._workers[name]

    def pid(self, name: str) -> int:
        return self._worker(name).process.pid

    def log_path(self, name: str) -> Path:
        return self._worker(name).log_path

    def cgroup(self, name: str) -> Path | None:
        return self._worker(name).cgroup

    def poll(self) -> dict[str, int | None]:
        """Exit code of every worker, ``None`` while it runs."""
        return {name: w.process.poll() for name, w in self._workers.items()}

    def _signal(self, worker: _Worker, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, sig)

    def _running(self, name: str) -> _Worker:
        worker = self._worker(name)
        code = worker.process.poll()
        if code is not None:
            raise WorkerError(f"emulated device {name} is not running (exit code {code})")
        return worker

    def pause(self, name: str) -> None:
        """Freeze a device (SIGSTOP): it keeps its connections but answers nothing."""
        worker = self._running(name)
        self._signal(worker, signal.SIGSTOP)
        worker.state = "paused"

    def resume(self, name: str) -> None:
        worker = self._running(name)
        self._signal(worker, signal.SIGCONT)
        worker.state = "running"

    def start_hog(self, name: str) -> int:
        """Start a CPU hog that takes :data:`STRESS_SHARE` of device ``name``'s CPU share, as
        another busy program on that device would. Returns its pid; it ends with
        :meth:`stop_hogs`, or when the device or the cluster stops.

        With cgroups the device's share is split: the worker's cgroup keeps ``1 -
        STRESS_SHARE`` of it and the hog runs in a cgroup of its own with the rest. A hog in the
        worker's own cgroup would not do: CFS favours a task that wakes from sleep, so a
        pipeline worker, which sleeps between micro-batches, kept its pace beside three busy
        hogs (measured: MobileNetV2 stage times fell from 113 to 93 ms). Without cgroups the hog
        shares the worker's CPU set. More hogs on one device share the hog's part."""
        worker = self._running(name)
        procs = None
        if worker.cgroup is not None:
            if worker.hog_cgroup is None:
                cpus = worker.device.cpus
                hog_cgroup = worker.cgroup.with_name(f"{worker.cgroup.name}-hog")
                try:
                    hog_cgroup.mkdir(exist_ok=True)
                except OSError as exc:
                    raise WorkerError(f"cannot create cgroup {hog_cgroup}: {exc}") from exc
                worker.hog_cgroup = hog_cgroup
                set_cgroup_quota(self.mechanism, hog_cgroup, cpus * STRESS_SHARE)
                set_cgroup_quota(self.mechanism, worker.cgroup, cpus * (1 - STRESS_SHARE))
            procs = worker.hog_cgroup / "cgroup.procs"
        argv = [sys.executable, "-c", HOG_PROGRAM, str(os.getpid())]
        try:
            hog = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid(), procs, worker.cpu_set, death_signal=False),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise WorkerError(f"cannot start a CPU hog on {name}: {exc}") from exc
        worker.hogs.append(hog)
        log.info("[%s] CPU hog started (pid %d)", name, hog.pid)
        return hog.pid

    def stop_hogs(self, name: str) -> int:
        """End every CPU hog of device ``name``; returns how many were running."""
        worker = self._worker(name)
        hogs, worker.hogs = worker.hogs, []
        running = 0
        for hog in hogs:
            if hog.poll() is None:
                running += 1
                hog.kill()
            hog.wait()
        if worker.hog_cgroup is not None:
            if worker.cgroup is not None:
                set_cgroup_quota(self.mechanism, worker.cgroup, worker.device.cpus)
            remove_cgroup(worker.hog_cgroup)
            worker.hog_cgroup = None
        return running

    def kill(self, name: str) -> None:
        """Crash a device: SIGKILL, no goodbye."""
        self._stop(self._worker(name), grace_s=0.0)

    def stop(self, name: str, grace_s: float = 5.0) -> None:
        """Stop a device: SIGTERM, then SIGKILL after ``grace_s``."""
        self._stop(self._worker(name), grace_s)

    def _stop(self, worker: _Worker, grace_s: float) -> None:
        if worker.state == "stopped":  # its pid, and so its group id, may belong to others now
            return
        self.stop_hogs(worker.device.name)
        if worker.process.poll() is None:
            if grace_s > 0:
                self._signal(worker, signal.SIGTERM)
                self._signal(worker, signal.SIGCONT)  # a paused worker must run to exit
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(grace_s)
            if worker.process.poll() is None:
                self._signal(worker, signal.SIGKILL)
                worker.process.wait()
        # The group may hold grandchildren that outlived the leader.
        self._signal(worker, signal.SIGKILL)
        if worker.cgroup is not None and remove_cgroup(worker.cgroup):
            worker.cgroup = None
        worker.state = "stopped"

    def close(self, grace_s: float = 5.0) -> None:
        """Stop every worker, remove the cgroups and, if we made it, the folder. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for worker in self._workers.values():
            if worker.process.poll() is None and grace_s > 0:
                self._signal(worker, signal.SIGTERM)
                self._signal(worker, signal.SIGCONT)
        deadline = time.monotonic() + grace_s
        try:
            for worker in self._workers.values():
                self._stop(worker, max(deadline - time.monotonic(), 0.01) if grace_s > 0 else 0.0)
        finally:
            if self.network is not None:
                self.network.close()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> EmulatedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _host_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _read_ready(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit in the main thread, so ``with`` blocks clean up."""

    def handler(signum: int, frame: object) -> None:
        # A second SIGTERM must not interrupt the cleanup the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cluster_table(spec: ClusterSpec) -> str:
    """A short fixed-width table of the devices in ``spec``."""
    rows = [("device", "address", "cpus", "threads", "mechanism", "pid")]
    for d in spec.devices:
        emu = d.emulation or EmulationSpec()
        rows.append(
            (d.name, d.address, f"{emu.cpus:g}", str(d.threads or ""), emu.mechanism, str(emu.pid))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
