"""No ``edgesplit run`` leaves a worker behind: not when it is interrupted (SIGINT, SIGTERM)
mid-run, not when it is SIGKILLed (the workers' parent-death signal), and its cgroups go with it
(a SIGKILLed run cannot remove them; the next start sweeps them, checked here)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgesplit.cluster.emulate import (
    CGROUP_ROOT,
    cgroup_base,
    detect_mechanism,
    sweep_stale_cgroups,
)
from tests.inprocess.test_cli_run import SMALL, Cli, cli_fixture, left_behind, workers_of

__all__ = ["cli_fixture"]  # the ``cli`` fixture, used here too

# Two devices and slow links, so the run is still busy seconds after it says "running" while the
# CPUs stay free: 8 micro-batches, one in flight, 3 link crossings of >= 200 ms each.
MID_RUN = [
    "run", "--devices", "2", "--partition", "0-16,16-", "--limit", "64", "--input-size", "32",
    *SMALL, "--window", "1", "--latency-ms", "200",
]  # fmt: skip
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 120.0
"""A guard against hanging, not a speed assertion: the run writes its folder, then stops."""


def cgroups_of(pid: int) -> list[Path]:
    """The cgroup directories a run with this pid created (``edgesplit-<pid>-<device>``)."""
    mechanism = detect_mechanism()
    base = cgroup_base(mechanism) if mechanism in ("cgroup-v1", "cgroup-v2") else None
    return sorted(base.glob(f"edgesplit-{pid}-*")) if base is not None else []


def live_members(cgroup: Path, timeout_s: float = 10.0) -> list[int]:
    """Pids in ``cgroup`` that still run. A worker killed by its parent-death signal can stay
    listed for a moment (until the kernel has reaped it), so this waits a bounded time and then
    ignores zombies, which hold no CPU or memory."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    live = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                live.append(pid)
        except psutil.NoSuchProcess:
            pass
    return live


def uses_cgroups() -> bool:
    return detect_mechanism() in ("cgroup-v1", "cgroup-v2")


def start_mid_run(cli: Any, tmp_path: Path) -> tuple[Cli, list[int]]:
    """A run that has said "running" and is busy; its worker pids, found while they live."""
    run: Cli = cli(*MID_RUN, "--out", str(tmp_path / "run"))
    run.wait_for_stderr("running", START_TIMEOUT_S)
    workers = [p.pid for p in workers_of(run)]
    assert len(workers) == 2, f"expected 2 workers under pid {run.proc.pid}, got {workers}"
    if uses_cgroups():
        assert len(cgroups_of(run.proc.pid)) == 2
    everything = [p.pid for p in run.descendants()]
    time.sleep(0.5)  # into the run, not at its first micro-batch
    assert run.proc.poll() is None, f"the run ended before it was interrupted:\n{run.stderr}"
    return run, everything


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_stops_every_worker(cli: Any, tmp_path: Path, sig: signal.Signals) -> None:
    run, pids = start_mid_run(cli, tmp_path)
    run.proc.send_signal(sig)
    code = run.wait(EXIT_TIMEOUT_S)
    assert code != 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert left_behind(pids, run.tag) == []
    assert cgroups_of(run.proc.pid) == []
    # What finished is kept (issue #25): the folder says the run is incomplete.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] is False and summary["completed_images"] < summary["images"]


@pytest.mark.slow
def test_sigkilled_run_leaves_no_worker(cli: Any, tmp_path: Path) -> None:
    run, pids = start_mid_run(cli, tmp_path)
    run.proc.send_signal(signal.SIGKILL)
    run.wait(10)
    assert left_behind(pids, run.tag) == []  # PR_SET_PDEATHSIG
    # A SIGKILLed run cannot remove its cgroups: they stay, empty, until the next start sweeps.
    stale = cgroups_of(run.proc.pid)
    for path in stale:
        assert live_members(path) == [], path
    if stale:
        assert set(stale) <= set(sweep_stale_cgroups(CGROUP_ROOT))
    assert cgroups_of(run.proc.pid) == []
    print(f"cgroups left by the SIGKILLed run (swept): {[p.name for p in stale]}")
