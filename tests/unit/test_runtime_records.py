"""Pure parts of the runtime: clock offsets, hop records, link delays, plans, samples, weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from edgesplit.errors import ModelError, PlanError, WorkerError
from edgesplit.runtime import samples, weights
from edgesplit.runtime.coordinator import Stage, _validate_plan
from edgesplit.runtime.links import LinkShape, link_delay_s
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.records import best_offset, hop_records, upload_record
from edgesplit.shared import cache


def test_best_offset_takes_the_smallest_round_trip() -> None:
    # Worker clock is 5 s ahead. The first probe is delayed one way, so its midpoint is off.
    probes = [(100.0, 105.3, 100.4), (200.0, 205.01, 200.02), (300.0, 305.2, 300.3)]
    offset_ms, rtt_ms = best_offset(probes)
    assert rtt_ms == pytest.approx(20.0)
    assert offset_ms == pytest.approx(5000.0)


def test_best_offset_needs_a_probe() -> None:
    with pytest.raises(WorkerError, match="at least one clock probe"):
        best_offset([])


@dataclass
class Hop:
    device: str
    stage: int
    received: float
    compute_start: float
    compute_end: float
    serialize_end: float
    send_start: float
    send_end: float
    bytes_out: int
    batch_size: int


def test_hop_records_convert_clocks_and_chain_transfers() -> None:
    # a's clock is 1 s ahead of the coordinator, b's 2 s behind.
    a = Hop("a", 0, 11.000, 11.001, 11.011, 11.012, 11.013, 11.020, 4000, 2)
    b = Hop("b", 1, 8.030, 8.030, 8.050, 8.051, 8.051, 8.052, 40, 2)
    offsets = {"a": 1000.0, "b": -2000.0}
    recs = hop_records(7, 3, [a, b], arrival=10.060, offsets_ms=offsets)
    assert [r.device for r in recs] == ["a", "b"]
    ra, rb = recs
    assert (ra.request_id, ra.epoch, ra.stage, ra.batch_size) == (7, 3, 0, 2)
    assert ra.queue_ms == pytest.approx(1.0)
    assert ra.compute_ms == pytest.approx(10.0)
    assert ra.serialize_ms == pytest.approx(1.0)
    assert ra.send_wait_ms == pytest.approx(1.0)
    assert ra.start == pytest.approx(10.000)
    # a started sending at coordinator 10.013, b received at coordinator 10.030.
    assert ra.transfer_ms == pytest.approx(17.0)
    assert ra.end == pytest.approx(rb.start)
    assert rb.transfer_ms == pytest.approx(9.0)
    assert rb.end == pytest.approx(10.060)
    assert ra.to_dict()["bytes_out"] == 4000

    up = upload_record(7, 3, 2, 24576, send_start=9.990, first=a, offsets_ms=offsets)
    assert (up.stage, up.device) == (-1, "coordinator")
    assert up.transfer_ms == pytest.approx(10.0)


def test_link_delay() -> None:
    assert link_delay_s(LinkShape(), 10**9) == 0.0
    assert link_delay_s(LinkShape(latency_ms=2.0), 10**9) == pytest.approx(0.002)
    # 1 MB at 100 Mbit/s is 80 ms, plus 1 ms latency.
    assert link_delay_s(LinkShape(100.0, 1.0), 1_000_000) == pytest.approx(0.081)


DEVICES = {"a", "b", "c"}


def test_valid_plan() -> None:
    _validate_plan((Stage("a", 0, 3), Stage("b", 3, 7), Stage("c", 7, 10)), 10, DEVICES)


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ((), "at least one stage"),
        ((Stage("x", 0, 10),), "names device 'x'"),
        ((Stage("a", 1, 10),), r"covers units \[1, 10\); expected a non-empty range starting at 0"),
        ((Stage("a", 0, 4), Stage("b", 5, 10)), "starting at 4"),
        ((Stage("a", 0, 4), Stage("b", 4, 4), Stage("c", 4, 10)), "non-empty"),
        ((Stage("a", 0, 4), Stage("b", 4, 9)), "ends at unit 9; the model has 10"),
        ((Stage("a", 0, 4), Stage("a", 4, 10)), "repeated: \\['a'\\]"),
    ],
)
def test_invalid_plans(plan: tuple[Stage, ...], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        _validate_plan(plan, 10, DEVICES)


@dataclass
class Sample:
    t: float = 1.5
    cpu_percent: float = 20.0
    process_cpu_percent: float = 90.0
    cpu_freq_mhz: float | None = None
    memory_percent: float = 30.0
    rss_mb: float = 100.0
    temperature_c: float | None = 0.0
    throttled: int | None = None
    net_bytes_sent: int | None = 10
    net_bytes_recv: int | None = None


def test_missing_sensors_travel_as_absent_not_zero() -> None:
    msg = pb.DeviceSample.FromString(samples.to_proto(Sample()).SerializeToString())
    assert not msg.HasField("cpu_freq_mhz")
    assert msg.HasField("temperature_c")  # a real 0 °C stays a reading
    back = samples.to_dict(msg)
    assert back["cpu_freq_mhz"] is None
    assert back["throttled"] is None
    assert back["net_bytes_recv"] is None
    assert back["temperature_c"] == 0.0
    assert back["net_bytes_sent"] == 10
    assert back["t"] == 1.5


def test_weights_round_trip_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    model = torch.nn.Linear(3, 2)
    blob = weights.to_bytes(model)
    state = weights.from_bytes(blob)
    assert torch.equal(state["weight"], model.weight.detach())
    sha = "ab" * 32
    assert weights.cached(sha) is None
    path = weights.store(sha, blob)
    assert path == tmp_path / "weights" / f"{sha}.safetensors"
    assert weights.cached(sha) == blob


@pytest.mark.parametrize("bad", ["../../etc/passwd", "AB" * 32, "ab" * 31, ""])
def test_weights_sha_must_be_hex(bad: str) -> None:
    with pytest.raises(ModelError, match="64 lowercase hex"):
        weights.check_sha256(bad)


def test_garbage_weights_are_a_model_error() -> None:
    with pytest.raises(ModelError, match="not a valid safetensors"):
        weights.from_bytes(b"\x00garbage" * 10)
