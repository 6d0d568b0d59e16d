"""Emulated cluster: pure helpers, then stand-in worker processes managed by EmulatedCluster.

The stand-in child binds a port, writes it to the ready file atomically and sleeps, so the
process management is tested without the real worker (see test_emulate_worker.py for that).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest

from edgesplit.cluster.emulate import (
    CFS_PERIOD_US,
    STRESS_SHARE,
    EmulatedCluster,
    EmulatedDevice,
    WorkerCommand,
    WorkerLaunch,
    affinity_sets,
    cluster_table,
    create_cgroup,
    default_worker_cmd,
    detect_mechanism,
    template_worker_cmd,
    uniform_devices,
)
from edgesplit.config import ClusterSpec, DeviceSpec, EmulationSpec, LinkSpec, PairLink
from edgesplit.errors import ConfigError, WorkerError

STUB = r"""
import os, socket, subprocess, sys, time
name, ready = sys.argv[1], sys.argv[2]
if name == "bad":
    print("stub failing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
if name == "slow":
    time.sleep(60)
if name == "family":  # a grandchild, to check that a stop reaches the whole process group
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(ready + ".child", "w") as fh:
        fh.write(str(child.pid))
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
with open(ready + ".tmp", "w") as fh:
    fh.write("127.0.0.1:%d" % sock.getsockname()[1])
os.replace(ready + ".tmp", ready)
while True:
    time.sleep(1)
"""


@pytest.fixture
def stub_cmd(tmp_path: Path) -> WorkerCommand:
    script = tmp_path / "stub_worker.py"
    script.write_text(STUB)

    def cmd(launch: WorkerLaunch) -> list[str]:
        return [sys.executable, str(script), launch.name, str(launch.ready_file)]

    return cmd


def wait_gone(pids: Iterable[int], timeout_s: float = 10.0) -> list[int]:
    """Pids still alive (zombies count as gone) after waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children_alive() -> list[int]:
    return wait_gone([c.pid for c in psutil.Process().children(recursive=True)])


CGROUPS = detect_mechanism() in ("cgroup-v1", "cgroup-v2")


# --- pure helpers -----------------------------------------------------------------------------


def test_device_threads_default_to_ceil_cpus() -> None:
    assert EmulatedDevice("a", 0.5).worker_threads == 1
    assert EmulatedDevice("a", 2.5).worker_threads == 3
    assert EmulatedDevice("a", 0.5, threads=4).worker_threads == 4
    assert [d.name for d in uniform_devices(3)] == ["pi1", "pi2", "pi3"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a b"}, "device name"),
        ({"name": "a", "cpus": 0.0}, "cpus must be >= 0.01, got 0.0"),
        ({"name": "a", "threads": 0}, "threads must be >= 1"),
    ],
)
def test_device_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EmulatedDevice(**kwargs)  # type: ignore[arg-type]


def test_affinity_sets_deal_cpus_round_robin() -> None:
    devices = [EmulatedDevice("a", 1), EmulatedDevice("b", 0.5), EmulatedDevice("c", 2)]
    assert affinity_sets(devices, [0, 1]) == [{0}, {1}, {0, 1}]
    assert affinity_sets([EmulatedDevice("a", 8)], [0, 1]) == [{0, 1}]


def test_worker_commands(tmp_path: Path) -> None:
    launch = WorkerLaunch("pi1", "127.0.0.1:0", tmp_path / "tok", 2, tmp_path / "pi1.ready")
    argv = default_worker_cmd(launch)
    assert argv[1:4] == ["-m", "edgesplit", "worker"]
    assert argv[argv.index("--threads") + 1] == "2"
    assert argv[argv.index("--ready-file") + 1] == str(tmp_path / "pi1.ready")
    build = template_worker_cmd("run.sh --n {name} --t {threads} '{ready_file}'")
    assert build(launch) == ["run.sh", "--n", "pi1", "--t", "2", str(tmp_path / "pi1.ready")]
    with pytest.raises(ConfigError, match="malformed"):
        template_worker_cmd("run.sh {nope}")


def test_detect_mechanism_on_fake_trees(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (v2 / "cgroup.subtree_control").write_text("memory\n")
    assert detect_mechanism(v2) == "cgroup-v2"
    hybrid = tmp_path / "hybrid"
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (hybrid / "cpu").mkdir()
    (hybrid / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert detect_mechanism(hybrid) == "cgroup-v1"
    assert detect_mechanism(tmp_path / "none") == "affinity"


def test_create_cgroup_v2_writes_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    path = create_cgroup("cgroup-v2", "pi1", 0.25, tmp_path)
    assert path.name == f"edgesplit-{os.getpid()}-pi1"
    assert (path / "cpu.max").read_text() == f"25000 {CFS_PERIOD_US}"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"


def test_start_rejects_bad_names_before_starting_anything() -> None:
    with pytest.raises(ConfigError, match="unique names"):
        EmulatedCluster.start([EmulatedDevice("a"), EmulatedDevice("a")])
    with pytest.raises(ConfigError, match=r"unknown devices \['b'\]"):
        EmulatedCluster.start([EmulatedDevice("a")], links=[PairLink(between=("a", "b"))])


# --- stand-in processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_cluster_of_stand_ins(tmp_path: Path, stub_cmd: WorkerCommand) -> None:
    devices = [EmulatedDevice("pi1", 0.5), EmulatedDevice("family", 1.5)]
    link = LinkSpec(bandwidth_mbps=100, latency_ms=1.0)
    pair = PairLink(between=("pi1", "family"), bandwidth_mbps=10, latency_ms=5)
    with EmulatedCluster.start(
        devices, link, [pair], worker_cmd=stub_cmd, folder=tmp_path / "c", ready_timeout_s=20
    ) as cluster:
        spec = cluster.spec
        assert [d.name for d in spec.devices] == ["pi1", "family"]
        assert spec.default_link == link and spec.link("family", "pi1").bandwidth_mbps == 10
        assert stat.S_IMODE(os.stat(cluster.token_file).st_mode) == 0o600
        pids = [cluster.pid("pi1"), cluster.pid("family")]
        for device, pid, cpus, threads in zip(spec.devices, pids, (0.5, 1.5), (1, 2), strict=True):
            assert device.emulation is not None
            assert (device.emulation.cpus, device.emulation.pid) == (cpus, pid)
            assert device.emulation.mechanism == cluster.mechanism
            assert device.threads == threads
            host, _, port = device.address.rpartition(":")
            socket.create_connection((host, int(port)), timeout=2).close()
        grandchild = int((tmp_path / "c" / "family.ready.child").read_text())
        if CGROUPS:
            _check_cgroups(cluster, pids)

        cluster.pause("pi1")
        assert _status_soon(pids[0], psutil.STATUS_STOPPED)
        cluster.resume("pi1")
        assert _status_soon(pids[0], psutil.STATUS_SLEEPING)
        cluster.kill("pi1")
        assert cluster.poll()["pi1"] == -signal.SIGKILL
        with pytest.raises(WorkerError, match="pi1 is not running"):
            cluster.pause("pi1")
        cluster.kill("pi1")  # again: a no-op, never a signal to a recycled pid
        cluster.stop("family")
        assert cluster.poll()["family"] == -signal.SIGTERM
        assert wait_gone([*pids, grandchild]) == []
        groups = [cluster.cgroup("pi1"), cluster.cgroup("family")]
        assert groups == [None, None]
    assert children_alive() == []
    assert (tmp_path / "c" / "pi1.log").exists()  # a folder we were given is kept


def _check_cgroups(cluster: EmulatedCluster, pids: list[int]) -> None:
    for name, pid, quota in (("pi1", pids[0], 50000), ("family", pids[1], 150000)):
        group = cluster.cgroup(name)
        assert group is not None and group.name == f"edgesplit-{os.getpid()}-{name}"
        if cluster.mechanism == "cgroup-v1":
            assert int((group / "cpu.cfs_quota_us").read_text()) == quota
            assert int((group / "cpu.cfs_period_us").read_text()) == CFS_PERIOD_US
        else:
            assert (group / "cpu.max").read_text().split() == [str(quota), str(CFS_PERIOD_US)]
        assert pid in [int(x) for x in (group / "cgroup.procs").read_text().split()]


def _quota(mechanism: str, group: Path) -> int:
    if mechanism == "cgroup-v1":
        return int((group / "cpu.cfs_quota_us").read_text())
    return int((group / "cpu.max").read_text().split()[0])


@pytest.mark.skipif(not CGROUPS, reason="needs cgroups (the hog takes part of a quota)")
def test_a_hog_takes_most_of_the_devices_share_until_it_stops(stub_cmd: WorkerCommand) -> None:
    with EmulatedCluster.start([EmulatedDevice("pi1", 0.5)], worker_cmd=stub_cmd) as cluster:
        group = cluster.cgroup("pi1")
        assert group is not None
        pids = [cluster.start_hog("pi1"), cluster.start_hog("pi1")]
        hogs = group.with_name(f"{group.name}-hog")
        # The worker keeps a quarter of its half core; both hogs share the other three quarters.
        assert _quota(cluster.mechanism, group) == round(0.5 * (1 - STRESS_SHARE) * CFS_PERIOD_US)
        assert _quota(cluster.mechanism, hogs) == round(0.5 * STRESS_SHARE * CFS_PERIOD_US)
        assert sorted(int(x) for x in (hogs / "cgroup.procs").read_text().split()) == sorted(pids)
        emulation = cluster.spec.devices[0].emulation  # what a profile plans pi1 with
        assert emulation is not None and emulation.cpus == pytest.approx(0.5 * (1 - STRESS_SHARE))
        assert cluster.stop_hogs("pi1") == 2
        assert _quota(cluster.mechanism, group) == 50000
        assert not hogs.exists()
        assert wait_gone(pids) == []
        cluster.start_hog("pi1")  # stopping the cluster ends a hog still running
    assert not hogs.exists()
    assert children_alive() == []


def _status_soon(pid: int, status: str, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if psutil.Process(pid).status() == status:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_affinity_mechanism(stub_cmd: WorkerCommand) -> None:
    devices = uniform_devices(2, cpus=1.0)
    with EmulatedCluster.start(devices, worker_cmd=stub_cmd, mechanism="affinity") as cluster:
        folder = cluster.folder
        expected = affinity_sets(devices, sorted(os.sched_getaffinity(0)))
        got = [set(psutil.Process(cluster.pid(d.name)).cpu_affinity() or []) for d in devices]
        assert got == expected
        assert {d.emulation.mechanism for d in cluster.spec.devices if d.emulation} == {"affinity"}
        assert cluster.cgroup("pi1") is None
    assert not folder.exists()  # a temporary folder is removed
    assert children_alive() == []


@pytest.mark.slow
def test_failed_worker_is_a_clear_error(stub_cmd: WorkerCommand) -> None:
    devices = [EmulatedDevice("pi1"), EmulatedDevice("bad")]
    with pytest.raises(WorkerError, match=r"(?s)worker bad exited with code 3.*failing on purpose"):
        EmulatedCluster.start(devices, worker_cmd=stub_cmd, ready_timeout_s=20)
    assert children_alive() == []


@pytest.mark.slow
def test_ready_timeout(stub_cmd: WorkerCommand) -> None:
    devices = [EmulatedDevice("pi1"), EmulatedDevice("slow")]
    with pytest.raises(WorkerError, match=r"workers \['slow'\] not ready after 1 s"):
        EmulatedCluster.start(devices, worker_cmd=stub_cmd, ready_timeout_s=1.0)
    assert children_alive() == []


def test_missing_worker_executable() -> None:
    with pytest.raises(WorkerError, match="cannot start worker pi1"):
        EmulatedCluster.start(
            [EmulatedDevice("pi1")], worker_cmd=lambda launch: ["/nonexistent/worker"]
        )


def test_cluster_table_lists_every_device() -> None:
    spec = ClusterSpec(
        devices=[
            DeviceSpec(
                name="pi1",
                address="127.0.0.1:5000",
                threads=1,
                emulation=EmulationSpec(cpus=0.5, mechanism="cgroup-v1", pid=42),
            )
        ]
    )
    lines = cluster_table(spec).splitlines()
    assert lines[0].split() == ["device", "address", "cpus", "threads", "mechanism", "pid"]
    assert lines[1].split() == ["pi1", "127.0.0.1:5000", "0.5", "1", "cgroup-v1", "42"]


def test_a_hog_started_by_a_thread_that_ends_keeps_running(stub_cmd: WorkerCommand) -> None:
    """The fault injector starts hogs from its own thread, which ends after its last injection:
    a stress that was the run's last injection must not end with that thread (the parent-death
    signal, tied to the forking thread, killed it at once)."""
    import threading

    with EmulatedCluster.start([EmulatedDevice("pi1", 0.5)], worker_cmd=stub_cmd) as cluster:
        started: list[int] = []
        thread = threading.Thread(target=lambda: started.append(cluster.start_hog("pi1")))
        thread.start()
        thread.join(60)
        assert started and psutil.pid_exists(started[0])
        assert psutil.Process(started[0]).status() != psutil.STATUS_ZOMBIE
        assert cluster.stop_hogs("pi1") == 1


def test_a_hog_ends_when_the_process_that_started_it_dies() -> None:
    from edgesplit.cluster.emulate import HOG_PROGRAM

    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, os, time\n"
         f"hog = subprocess.Popen([sys.executable, '-c', {HOG_PROGRAM!r}, str(os.getpid())])\n"
         "print(hog.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    hog = int(parent.stdout.readline())
    assert psutil.pid_exists(hog)
    parent.kill()
    parent.wait()
    assert wait_gone([hog]) == []
