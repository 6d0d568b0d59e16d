"""The simulator does what the runtime does where a run's time goes (issue #23): the
coordinator's upload as ``Run.send`` does it, a shared host's other processes, one hand-off
cost per MB on one host. Pure: no processes, no sockets."""

from __future__ import annotations

import dataclasses
import math

import pytest

from edgesplit.errors import ConfigError
from edgesplit.plan.planner import DeviceCost, LinkCost, Problem, UnitCost
from edgesplit.plan.profile import DeviceProfile, Profile, UnitProfile
from edgesplit.shared.names import COORDINATOR
from edgesplit.simulate import SimConfig, SimSpec, cluster_from, simulate
from edgesplit.simulate.build import one_host_hop
from edgesplit.simulate.cpu import Host, Proc, settle, water_level

INPUT_BYTES = 100_000
DECLARED = LinkCost(80.0, 0.0)
"""The cluster's declared link, what ``Run.send`` sleeps: 100 kB in 10 ms."""


def upload_problem(
    fitted_mbps: float, prepare_ms: float = 5.0, hop_cpu_ms_per_mb: float = 0.0, **extra: object
) -> Problem:
    """One device of 1 ms per micro-batch behind an upload link whose fitted time (what the
    profile's probes timed: the wire and the RPC) is ``INPUT_BYTES`` at ``fitted_mbps``."""
    return Problem(
        units=(UnitCost(0, 0, 0, "u0"),),
        devices=(DeviceCost("d0", (1.0,), hop_cpu_ms_per_mb=hop_cpu_ms_per_mb),),
        batch_size=4,
        input_bytes=INPUT_BYTES,
        default_link=DECLARED,
        links=((COORDINATOR, "d0", LinkCost(fitted_mbps, 0.0)),),
        prepare_ms=prepare_ms,
        **extra,  # type: ignore[arg-type]
    )


def run(p: Problem, window: int, images: int = 800, background: float = 0.0) -> tuple[float, float]:
    got = simulate(SimSpec(p, background_threads=background), (("d0", 0, 1),),
                   SimConfig(images=images, window=window))  # fmt: skip
    assert got.steady_ips is not None
    return got.steady_ips, got.latency_ms["p50"]


def test_a_request_s_latency_is_the_wire_sleep_then_the_rpc_then_the_stages() -> None:
    # fitted 20 ms = the declared 10 ms of wire sleep + 10 ms of RPC
    _, p50 = run(upload_problem(fitted_mbps=40.0), window=1, images=40)
    assert p50 == pytest.approx(10.0 + 10.0 + 1.0, rel=1e-9)


def test_the_next_wire_sleep_overlaps_the_previous_upload_s_rpc() -> None:
    # Run.send: prepare 5, sleep 10, (the previous RPC of 10 ms has ended meanwhile), start
    # the RPC and take the next request: one upload every 15 ms, not every 5 + 20 ms.
    ips, _ = run(upload_problem(fitted_mbps=40.0), window=8)
    assert ips == pytest.approx(4 * 1000.0 / 15.0, rel=1e-6)
    # An RPC longer than preparing and sleeping sets the pace: fitted 40 ms, RPC 30 ms.
    ips, _ = run(upload_problem(fitted_mbps=20.0), window=8)
    assert ips == pytest.approx(4 * 1000.0 / 30.0, rel=1e-6)


def test_the_upload_rpc_lasts_at_least_its_coordinator_side_cpu() -> None:
    # 250 ms per MB: 25 ms of the coordinator's CPU per upload, more than the RPC's 10 ms
    ips, p50 = run(upload_problem(fitted_mbps=40.0, hop_cpu_ms_per_mb=250.0), window=8)
    assert ips == pytest.approx(4 * 1000.0 / 25.0, rel=1e-6)
    _, alone = run(upload_problem(fitted_mbps=40.0, hop_cpu_ms_per_mb=250.0), window=1)
    assert alone == pytest.approx(10.0 + 25.0 + 1.0, rel=1e-9)
    assert p50 > alone  # a deep window queues behind the coordinator's uploads


def test_other_processes_runnable_threads_share_a_host_s_cores() -> None:
    # one device of 10 ms CPU per micro-batch, nothing else to do, on a host of one core
    p = dataclasses.replace(upload_problem(fitted_mbps=None, prepare_ms=0.0),  # type: ignore[arg-type]
                            devices=(DeviceCost("d0", (10.0,)),), host_cpus=1.0,
                            default_link=LinkCost(None, 0.0), links=())  # fmt: skip
    alone, _ = run(p, window=4)
    assert alone == pytest.approx(4 * 1000.0 / 10.0, rel=1e-6)
    # one other thread runnable all along: half of the core each
    shared, _ = run(p, window=4, background=1.0)
    assert shared == pytest.approx(4 * 1000.0 / 20.0, rel=1e-6)
    # on two cores, one other thread leaves a whole core
    two, _ = run(dataclasses.replace(p, host_cpus=2.0), window=4, background=1.0)
    assert two == pytest.approx(alone, rel=1e-6)


def test_other_processes_need_a_shared_host_and_a_count() -> None:
    p = upload_problem(fitted_mbps=40.0)
    with pytest.raises(ConfigError, match="shared host"):
        SimSpec(p, background_threads=1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        SimSpec(dataclasses.replace(p, host_cpus=2.0), background_threads=-1.0)


def device(name: str, hop: float) -> DeviceProfile:
    return DeviceProfile(name=name, unit_ms=(4.0, 4.0), unit_spread_ms=(0.0, 0.0), threads=1,
                         cpu_count=2, cpus=0.5, memory_budget_bytes=None, idle_w=2.7, busy_w=6.4,
                         unit_cpu_ms=(2.0, 2.0), hop_cpu_ms_per_mb=hop)  # fmt: skip


def test_devices_on_one_host_hand_off_at_the_median_of_their_measured_costs() -> None:
    units = tuple(UnitProfile(i, f"u{i}", f"u{i}", 0, 0, 1_000_000, 0, 0) for i in range(2))
    profile = Profile(model="toy", input_size=32, batch_size=4, num_classes=10,
                      input_bytes=1_000_000, units=units,
                      devices=(device("a", 1.66), device("b", 3.11), device("c", 3.15)),
                      links=(), host_cpus=2.0)  # fmt: skip
    assert [d.hop_cpu_ms_per_mb for d in one_host_hop(profile).devices] == [3.11] * 3
    assert [d.hop_cpu_ms_per_mb for d in cluster_from(profile).problem.devices] == [3.11] * 3
    # devices with hosts of their own keep what each measured
    apart = dataclasses.replace(profile, host_cpus=None)
    assert [d.hop_cpu_ms_per_mb for d in one_host_hop(apart).devices] == [1.66, 3.11, 3.15]


# --- CPU: threads, quotas and CFS entities (simulate/cpu.py) -----------------------------------


def test_water_level_shares_cores_fairly_between_entities() -> None:
    assert water_level([1, 1], 0.0, 1.0) == pytest.approx(0.5)
    assert water_level([2], 0.0, 2.0) == math.inf  # every demand fits
    # an entity of two threads and one of one on two cores: a core each
    assert water_level([2, 1], 0.0, 2.0) == pytest.approx(1.0)
    # two other processes' threads that take at most 0.25 each leave 0.5 of one core
    assert water_level([1], 2.0, 1.0, background_cap=0.25) == pytest.approx(0.5)
    assert water_level([1], 2.0, 1.0) == pytest.approx(1 / 3)


def test_a_device_s_threads_are_one_entity_on_a_shared_host() -> None:
    host = Host(1.0)
    a1, a2 = (host.add(Proc(n, entity="A")) for n in ("a compute", "a rx"))
    b = host.add(Proc("coordinator"))
    for p in (a1, a2, b):
        p.work_ms, p.active = 10.0, True
    settle(b, 0.0)
    assert (a1.speed, a2.speed, b.speed) == pytest.approx((0.25, 0.25, 0.5))


def test_a_device_s_threads_share_its_quota() -> None:
    # 10 ms of compute and 10 ms of receiving per micro-batch on half a core: 40 ms each
    d0 = DeviceCost("d0", (20.0,), burst_unit_ms=(10.0,), quota_ms=50.0,
                    hop_cpu_ms_per_mb=100.0)  # fmt: skip
    p = dataclasses.replace(upload_problem(fitted_mbps=None, prepare_ms=0.0),  # type: ignore[arg-type]
                            devices=(d0,), default_link=LinkCost(None, 0.0), links=())  # fmt: skip
    ips, _ = run(p, window=4, images=4000)
    assert ips == pytest.approx(4 * 1000.0 / 40.0, rel=0.02)
    # without the hand-off's CPU the compute alone sustains 20 ms
    no_hop = dataclasses.replace(d0, hop_cpu_ms_per_mb=0.0)
    alone, _ = run(dataclasses.replace(p, devices=(no_hop,)), window=4, images=4000)
    assert alone == pytest.approx(4 * 1000.0 / 20.0, rel=0.02)
