"""``edgesplit emulate`` as a subprocess: no worker outlives it, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgesplit.cluster.emulate import (
    CGROUP_ROOT,
    cgroup_base,
    detect_mechanism,
    sweep_stale_cgroups,
)
from edgesplit.config import load_cluster
from tests.inprocess.test_emulate import STUB, wait_gone

START_TIMEOUT_S = 60.0  # the CLI imports torch (via other subcommands) before it starts anything


def start_emulate(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Run ``edgesplit emulate`` with stand-in workers; return it and its workers' pids."""
    script = tmp_path / "stub_worker.py"
    script.write_text(STUB)
    out = tmp_path / "cluster.yaml"
    cmd = [
        sys.executable, "-m", "edgesplit", "emulate", "--devices", "2",
        "--device-cpus", "pi2=0.25", "--out", str(out), "--folder", str(tmp_path / "c"),
        "--worker-command", f"{sys.executable} {script} {{name}} {{ready_file}}", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not out.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"edgesplit emulate did not start: {err.decode()[-2000:]}")
        time.sleep(0.05)
    spec = load_cluster(out)
    pids = [d.emulation.pid for d in spec.devices if d.emulation and d.emulation.pid]
    assert [d.name for d in spec.devices] == ["pi1", "pi2"] and len(pids) == 2
    assert [d.emulation.cpus for d in spec.devices if d.emulation] == [0.5, 0.25]
    assert spec.default_link.bandwidth_mbps == 940 and spec.default_link.latency_ms == 0.2
    return proc, pids


def our_cgroups(pid: int) -> list[Path]:
    mechanism = detect_mechanism()
    base = cgroup_base(mechanism) if mechanism in ("cgroup-v1", "cgroup-v2") else None
    return sorted(base.glob(f"edgesplit-{pid}-*")) if base is not None else []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_every_worker(tmp_path: Path, sig: signal.Signals) -> None:
    proc, pids = start_emulate(tmp_path)
    if detect_mechanism() in ("cgroup-v1", "cgroup-v2"):
        assert len(our_cgroups(proc.pid)) == 2
    # Once the cluster file exists the table is printed; read nothing yet to avoid blocking.
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == (0 if sig == signal.SIGINT else 128 + sig), err.decode()
    table = out.decode()
    assert "pi2" in table and ("cgroup" in table or "affinity" in table)
    assert wait_gone(pids) == []
    assert our_cgroups(proc.pid) == []


@pytest.mark.slow
def test_sigkill_of_emulate_leaves_no_worker(tmp_path: Path) -> None:
    proc, pids = start_emulate(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_gone(pids) == []  # PR_SET_PDEATHSIG
    # A SIGKILLed parent cannot clean its cgroups; the next start (or a sweep) does.
    stale = our_cgroups(proc.pid)
    removed = sweep_stale_cgroups(CGROUP_ROOT)
    assert set(stale) <= set(removed)
    assert our_cgroups(proc.pid) == []
