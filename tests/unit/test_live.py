"""The live view of a run (issue #7): the pure reducer and snapshot with hand-made events, their
plain and rich renderings, the Prometheus gauges they feed, and the worker's own metrics."""

from __future__ import annotations

import io

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from edgesplit.errors import ConfigError
from edgesplit.metrics.dashboard import PlainDashboard, TerminalDashboard, live_table
from edgesplit.metrics.prometheus import RunMetrics
from edgesplit.metrics.worker_prometheus import WorkerMetrics
from edgesplit.runtime import live
from edgesplit.runtime.live import (
    FailureSeen,
    HopSeen,
    LiveFeed,
    LiveSnapshot,
    Reading,
    ResultSeen,
    StatusSeen,
    UnreachableSeen,
)
from edgesplit.runtime.sampler import DeviceSample

T0 = 1_000.0


def result(t: float, latency_s: float, images: int = 8) -> ResultSeen:
    """A result through pi1 (stage 0) then pi2 (stage 1)."""
    return ResultSeen(
        t=t,
        images=images,
        latency_s=latency_s,
        hops=(HopSeen("pi1", 0, images, t - 0.05), HopSeen("pi2", 1, images, t)),
    )


def sample(t: float, proc: float, system: float = 30.0, **extra: float | None) -> dict:
    return {
        "t": t, "process_cpu_percent": proc, "cpu_percent": system, "cpu_freq_mhz": 1500.0,
        "memory_percent": 40.0, "rss_mb": 200.0, "temperature_c": None, **extra,
    }  # fmt: skip


def by_name(snapshot: LiveSnapshot) -> dict[str, live.DeviceSnapshot]:
    return {d.name: d for d in snapshot.devices}


# --- reducer and snapshot ---------------------------------------------------------------------


def test_a_fresh_run_lists_the_plans_devices_in_stage_order_with_nothing_measured() -> None:
    snap = live.snapshot(live.start(T0, ["pi1", "pi2"]), T0 + 1)
    assert [(d.name, d.stage) for d in snap.devices] == [("pi1", 0), ("pi2", 1)]
    assert snap.images == 0 and snap.throughput_ips == 0.0
    assert snap.latency_p50_s is None and snap.latency_p95_s is None
    assert all(d.process_cpu_percent is None and d.queue_depth is None for d in snap.devices)


def test_throughput_and_latency_cover_the_sliding_window_only() -> None:
    state = live.start(T0, ["pi1", "pi2"], window_s=5.0)
    # 10 results of 8 images, one per second; latencies 0.1 .. 1.0 s.
    state = live.reduce_all(state, [result(T0 + i, latency_s=i / 10) for i in range(1, 11)])
    snap = live.snapshot(state, T0 + 10)
    assert snap.images == 80
    # Window (5, 10]: results at 6..10 = 5 results, 40 images over 5 s.
    assert snap.throughput_ips == pytest.approx(8.0)
    assert snap.latency_p50_s == pytest.approx(0.8)  # nearest rank of 0.6 .. 1.0
    assert snap.latency_p95_s == pytest.approx(1.0)
    devices = by_name(snap)
    assert devices["pi1"].images == 80 and devices["pi2"].images == 80
    assert devices["pi1"].throughput_ips == pytest.approx(8.0)
    # Old entries are pruned from the state, not only skipped.
    assert len(state.recent) == 5


def test_a_young_run_divides_by_its_age_not_by_the_whole_window() -> None:
    state = live.reduce(live.start(T0, ["pi1", "pi2"], window_s=5.0), result(T0 + 2, 0.3, 16))
    snap = live.snapshot(state, T0 + 2)
    assert snap.window_s == pytest.approx(2.0)
    assert snap.throughput_ips == pytest.approx(8.0)


def test_throughput_decays_when_results_stop() -> None:
    state = live.reduce(live.start(T0, ["pi1", "pi2"], window_s=5.0), result(T0 + 6, 0.3))
    assert live.snapshot(state, T0 + 6).throughput_ips > 0
    assert live.snapshot(state, T0 + 12).throughput_ips == 0.0


def test_status_sets_readings_and_queues_and_keeps_them_when_no_new_sample() -> None:
    reading = Reading.from_samples([sample(1.0, 40.0), sample(1.2, 60.0, temperature_c=52.0)])
    assert reading is not None
    assert reading.process_cpu_percent == pytest.approx(50.0)  # mean of the round's samples
    assert reading.temperature_c == 52.0  # newest sample
    state = live.reduce(live.start(T0, ["pi1", "pi2"]), StatusSeen(T0 + 1, "pi1", reading, 3, 1, 0))
    state = live.reduce(state, StatusSeen(T0 + 2, "pi1", None, 0, 0, 0))
    pi1 = by_name(live.snapshot(state, T0 + 2))["pi1"]
    assert (pi1.process_cpu_percent, pi1.cpu_freq_mhz, pi1.temperature_c) == (50.0, 1500.0, 52.0)
    assert (pi1.queue_depth, pi1.send_queue_depth) == (0, 0)
    assert by_name(live.snapshot(state, T0 + 2))["pi2"].process_cpu_percent is None
    assert Reading.from_samples([]) is None


def test_unreachable_device_and_failures_are_state() -> None:
    state = live.start(T0, ["pi1", "pi2"])
    state = live.reduce(state, UnreachableSeen(T0 + 1, "pi2", "connection refused"))
    state = live.reduce(state, FailureSeen(T0 + 1.5, "pi1", "cannot send to pi2"))
    snap = live.snapshot(state, T0 + 2)
    assert not by_name(snap)["pi2"].reachable and by_name(snap)["pi1"].reachable
    assert snap.failures == 1 and by_name(snap)["pi1"].failures == 1
    assert snap.last_failure == "pi1: cannot send to pi2"
    assert live.device_line(by_name(snap)["pi2"]).startswith("pi2 stage 1 UNREACHABLE: ")
    state = live.reduce(state, StatusSeen(T0 + 3, "pi2", None, 0, stage=1))
    assert by_name(live.snapshot(state, T0 + 3))["pi2"].reachable


def test_stages_follow_the_heartbeats_and_devices_sort_by_stage() -> None:
    state = live.start(T0, ["pi1", "pi2"])
    state = live.reduce(state, ResultSeen(T0 + 1, 4, 0.2, (HopSeen("pi9", 2, 4, T0 + 1),)))
    assert [(d.name, d.stage) for d in live.snapshot(state, T0 + 1).devices] == [
        ("pi1", 0), ("pi2", 1), ("pi9", None),
    ]  # fmt: skip
    # A new plan: pi2 lost, pi9 runs stage 1.
    state = live.reduce_all(
        state,
        [
            UnreachableSeen(T0 + 2, "pi2", "deadline exceeded", "lost"),
            StatusSeen(T0 + 2, "pi9", None, 0, stage=1, health="healthy"),
        ],
    )
    snap = live.snapshot(state, T0 + 2)
    assert [(d.name, d.stage) for d in snap.devices] == [("pi1", 0), ("pi2", 1), ("pi9", 1)]
    state = live.reduce(state, StatusSeen(T0 + 3, "pi2", None, 0, stage=None, health="probation"))
    snap = live.snapshot(state, T0 + 3)
    assert [(d.name, d.stage, d.health) for d in snap.devices] == [
        ("pi1", 0, None), ("pi9", 1, "healthy"), ("pi2", None, "probation"),
    ]  # fmt: skip
    assert live.device_line(snap.devices[2]).startswith("pi2 stage - PROBATION: cpu -% ")


def test_the_reducer_does_not_mutate_its_input() -> None:
    state = live.start(T0, ["pi1", "pi2"])
    before = live.snapshot(state, T0 + 1)
    live.reduce(state, result(T0 + 1, 0.2))
    assert live.snapshot(state, T0 + 1) == before


def test_window_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="window_s must be > 0, got 0"):
        live.start(T0, ["pi1"], window_s=0)


def test_feed_calls_back_with_a_snapshot_per_event() -> None:
    got: list[LiveSnapshot] = []
    feed = LiveFeed(got.append, T0, ["pi1", "pi2"])
    feed.push(result(T0 + 1, 0.2))
    feed.push(StatusSeen(T0 + 1.5, "pi2", None, 2, stage=1))
    assert [s.t for s in got] == [T0 + 1, T0 + 1.5]
    assert got[-1].images == 8 and by_name(got[-1])["pi2"].queue_depth == 2


# --- rendering --------------------------------------------------------------------------------


def busy_snapshot() -> LiveSnapshot:
    reading = Reading(48.0, 30.0, 1500.0, 40.0, 200.0, 52.0)
    state = live.start(T0, ["pi1", "pi2"])
    state = live.reduce_all(
        state,
        [
            *(result(T0 + i, 0.22) for i in range(1, 6)),
            StatusSeen(T0 + 5, "pi1", reading, 1, stage=0, health="healthy"),
            StatusSeen(T0 + 5, "pi2", Reading(process_cpu_percent=20.0), 0, stage=1),
        ],
    )
    return live.snapshot(state, T0 + 5)


def test_plain_lines_show_every_device_and_mark_absent_sensors() -> None:
    lines = live.plain_lines(busy_snapshot(), total=256)
    assert lines[0] == "40/256 images | 8.0 img/s p50 220 ms p95 220 ms (last 5 s)"
    assert lines[1] == "pi1 stage 0: cpu 48% 1500 MHz 52°C mem 40% q 1 | 8.0 img/s"
    assert lines[2] == "pi2 stage 1: cpu 20% - MHz -°C mem -% q 0 | 8.0 img/s"


def test_plain_dashboard_prints_every_few_seconds_of_run_time() -> None:
    out: list[str] = []
    board = PlainDashboard(out.append, every_s=3.0)
    board.on_progress(40, 256, 5.0)
    snap = busy_snapshot()
    for dt in (0.0, 1.0, 2.9, 3.0, 3.5):
        board.on_live(LiveSnapshot(**{**snap.__dict__, "t": snap.t + dt}))
    blocks = [line for line in out if line.startswith("  live ")]
    assert len(blocks) == 2  # at +0 and +3
    assert blocks[0] == "  live 5 s: 40/256 images | 8.0 img/s p50 220 ms p95 220 ms (last 5 s)"
    assert "    pi1 stage 0: cpu 48% 1500 MHz 52°C mem 40% q 1 | 8.0 img/s" in out
    board.on_progress(256, 256, 8.0)
    assert out[-1] == "  256/256 images, 32.0 images/s, 8.0 s"


def test_plain_dashboard_off_keeps_only_progress_lines() -> None:
    out: list[str] = []
    board = PlainDashboard(out.append, every_s=2.0, show_table=False)
    board.on_live(busy_snapshot())
    board.on_progress(8, 64, 2.5)
    board.on_progress(16, 64, 3.0)
    board.on_progress(64, 64, 6.0)
    assert out == [
        "  8/64 images, 3.2 images/s, 2.5 s",
        "  64/64 images, 10.7 images/s, 6.0 s",
    ]


def test_terminal_dashboard_draws_the_table_under_the_progress_bar() -> None:
    console = Console(file=io.StringIO(), width=160, force_terminal=True, color_system=None)
    board = TerminalDashboard(console)
    board.on_progress(40, 256, 5.0)
    assert board.render() is board.progress  # nothing live yet
    board.on_live(busy_snapshot())
    console.print(board.render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "40/256 images | 8.0 img/s" in text
    assert "pi1" in text and "1500" in text and "52" in text and "CPU MHz" in text
    hidden = TerminalDashboard(console, show_table=False)
    hidden.on_live(busy_snapshot())
    assert hidden.render() is hidden.progress


def test_live_table_names_an_unreachable_device_and_the_last_failure() -> None:
    state = live.start(T0, ["pi1", "pi2"])
    state = live.reduce(state, UnreachableSeen(T0 + 1, "pi2", "refused"))
    state = live.reduce(state, FailureSeen(T0 + 1, "pi1", "send to pi2 failed"))
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(live_table(live.snapshot(state, T0 + 1)))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "unreachable" in text and "last failure: pi1: send to pi2 failed" in text


# --- Prometheus -------------------------------------------------------------------------------


def scrape(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_run_metrics_follow_the_live_snapshots_in_base_units() -> None:
    metrics = RunMetrics()
    metrics.on_progress(40, 256, 5.0)
    metrics.on_live(busy_snapshot())
    got = scrape(metrics.registry)
    pi1 = (("device", "pi1"),)
    assert got[("edgesplit_device_cpu_percent", pi1)] == 48.0
    assert got[("edgesplit_device_cpu_frequency_hertz", pi1)] == 1.5e9
    assert got[("edgesplit_device_memory_used_ratio", pi1)] == pytest.approx(0.4)
    assert got[("edgesplit_device_rss_bytes", pi1)] == 200 * 1024 * 1024
    assert got[("edgesplit_device_temperature_celsius", pi1)] == 52.0
    assert got[("edgesplit_device_throughput_images_per_second", pi1)] == pytest.approx(8.0)
    assert got[("edgesplit_device_queue_depth", pi1)] == 1
    assert got[("edgesplit_device_stage", (("device", "pi2"),))] == 1
    assert got[("edgesplit_device_up", pi1)] == 1
    assert got[("edgesplit_device_state", (("device", "pi1"), ("state", "healthy")))] == 1
    assert got[("edgesplit_device_state", (("device", "pi1"), ("state", "lost")))] == 0
    assert ("edgesplit_device_state", (("device", "pi2"), ("state", "healthy"))) not in got
    assert got[("edgesplit_device_images_total", pi1)] == 40
    assert ("edgesplit_device_temperature_celsius", (("device", "pi2"),)) not in got  # absent
    assert got[("edgesplit_throughput_images_per_second", ())] == pytest.approx(8.0)
    assert got[("edgesplit_latency_seconds", (("quantile", "0.95"),))] == pytest.approx(0.22)
    assert got[("edgesplit_images_completed_total", ())] == 40
    assert got[("edgesplit_run_images", ())] == 256
    # Counters never go back, and a repeated snapshot adds nothing.
    metrics.on_live(busy_snapshot())
    metrics.on_progress(48, 256, 6.0)
    got = scrape(metrics.registry)
    assert got[("edgesplit_device_images_total", pi1)] == 40
    assert got[("edgesplit_images_completed_total", ())] == 48


class FakeWorker:
    """The two things WorkerMetrics reads from a worker."""

    def __init__(self, sample: DeviceSample | None) -> None:
        self.sample = sample

    def latest_sample(self) -> DeviceSample | None:
        return self.sample

    def queue_depths(self) -> tuple[int, int]:
        return 2, 1


def test_worker_metrics_read_the_sampler_at_scrape_time_and_count_stage_work() -> None:
    worker = FakeWorker(None)
    metrics = WorkerMetrics("pi1", worker)
    pi1 = (("device", "pi1"),)
    got = scrape(metrics.registry)
    assert ("edgesplit_device_cpu_percent", pi1) not in got  # no reading yet: no sample, no 0
    assert got[("edgesplit_device_queue_depth", pi1)] == 2
    worker.sample = DeviceSample(
        t=T0, cpu_percent=30.0, process_cpu_percent=95.0, cpu_freq_mhz=1800.0,
        memory_percent=25.0, rss_mb=100.0, temperature_c=None, throttled=None,
        net_bytes_sent=None, net_bytes_recv=None,
    )  # fmt: skip
    metrics.on_computed(0, 8, 0.04, 1000)
    metrics.on_computed(0, 8, 0.06, 1000)
    got = scrape(metrics.registry)
    assert got[("edgesplit_device_cpu_percent", pi1)] == 95.0
    assert got[("edgesplit_device_cpu_frequency_hertz", pi1)] == 1.8e9
    assert ("edgesplit_device_temperature_celsius", pi1) not in got
    stage0 = (("device", "pi1"), ("stage", "0"))
    assert got[("edgesplit_worker_images_computed_total", stage0)] == 16
    assert got[("edgesplit_worker_batches_computed_total", stage0)] == 2
    assert got[("edgesplit_worker_compute_seconds_sum", stage0)] == pytest.approx(0.1)
    assert got[("edgesplit_worker_compute_seconds_count", stage0)] == 2
    assert got[("edgesplit_worker_output_bytes_total", stage0)] == 2000
