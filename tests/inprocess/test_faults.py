"""Fault tolerance, fast tier: the device state machine (pure), and plan switches and device
losses with workers in this process over real gRPC, checked against one process."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import torch

from edgesplit.app.job import RunConfig, run_job
from edgesplit.cluster.faults import Injection, parse_injection, parse_injections
from edgesplit.config import parse_cluster
from edgesplit.errors import ConfigError, RunAborted, RunError
from edgesplit.model import models
from edgesplit.runtime import health as hl
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.health import DeviceState as S
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import open_channel
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve

POLICY = hl.HealthPolicy(deadline_s=2.0, probation_s=3.0)
TOKEN = "faults-test-token"
MODEL = "squeezenet1_1"
SIZE = 32


def run_steps(start: hl.DeviceHealth, observations: list[hl.Observation]) -> list[hl.DeviceHealth]:
    states = [start]
    for obs in observations:
        states.append(hl.step(states[-1], obs, POLICY))
    return states[1:]


def test_a_silent_device_is_suspect_then_lost_at_the_deadline() -> None:
    got = run_steps(
        hl.healthy(0.0),
        [
            hl.HeartbeatOk(0.5),
            hl.HeartbeatMissed(1.0, "DEADLINE_EXCEEDED"),
            hl.HeartbeatMissed(2.4, "DEADLINE_EXCEEDED"),
            hl.Tick(2.6),
        ],
    )
    assert [h.state for h in got] == [S.HEALTHY, S.SUSPECT, S.SUSPECT, S.LOST]
    assert got[-1].since == 2.6 and got[-1].last_ok == 0.5
    assert got[-1].reason == "no heartbeat for 2.1 s"
    assert not got[-1].usable and got[1].usable  # a suspect device keeps its stage


def test_a_missed_beat_past_the_deadline_is_lost_at_once_and_an_answer_clears_suspicion() -> None:
    assert hl.step(hl.healthy(0.0), hl.HeartbeatMissed(2.0, "x"), POLICY).state is S.LOST
    suspect = hl.step(hl.healthy(0.0), hl.HeartbeatMissed(1.0, "x"), POLICY)
    back = hl.step(suspect, hl.HeartbeatOk(1.5), POLICY)
    assert back == hl.DeviceHealth(S.HEALTHY, since=1.5, last_ok=1.5)


def test_a_confirmed_failed_send_is_lost_at_once() -> None:
    lost = hl.step(hl.healthy(0.0), hl.SendFailed(0.1, "UNAVAILABLE"), POLICY)
    assert lost.state is S.LOST and lost.reason == "send failed: UNAVAILABLE"
    assert hl.step(lost, hl.HeartbeatMissed(9.0, "y"), POLICY) is lost


def test_a_returning_device_is_readmitted_after_probation_without_a_miss() -> None:
    lost = hl.DeviceHealth(S.LOST, since=5.0, last_ok=3.0, reason="gone")
    got = run_steps(lost, [hl.HeartbeatOk(10.0), hl.HeartbeatOk(12.9), hl.HeartbeatOk(13.0)])
    assert [h.state for h in got] == [S.PROBATION, S.PROBATION, S.HEALTHY]
    assert not got[0].usable and got[-1].since == 13.0
    # A miss during probation sends it back, and probation starts over next time.
    again = run_steps(
        lost, [hl.HeartbeatOk(10.0), hl.HeartbeatMissed(11.0, "z"), hl.HeartbeatOk(12.0)]
    )
    assert [h.state for h in again] == [S.PROBATION, S.LOST, S.PROBATION]
    assert again[-1].since == 12.0


def test_policy_validation() -> None:
    with pytest.raises(ConfigError, match="deadline_s must be > 0"):
        hl.HealthPolicy(deadline_s=0)


# --- in-process workers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(MODEL, num_classes=10).eval()


@pytest.fixture
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningWorker]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    running = [
        # The torch engine: these tests compare split outputs bit for bit with the whole model.
        serve(WorkerConfig(name=f"w{i}", token=TOKEN, threads=1, engine="torch"), "127.0.0.1:0")
        for i in range(3)
    ]
    yield running
    for w in running:
        w.stop(0.2)
    mp.undo()


def coordinator_for(workers: list[RunningWorker], model: torch.nn.Module) -> Coordinator:
    devices = [{"name": f"w{i}", "address": w.address} for i, w in enumerate(workers)]
    c = Coordinator(
        parse_cluster({"token": TOKEN, "devices": devices}),
        # Generous (issue #15): a healthy in-process worker on an overloaded host took over
        # 4 s to answer a heartbeat; a crashed one is lost at once by its failed sends.
        health_policy=hl.HealthPolicy(deadline_s=15.0, probation_s=0.5),
    )
    c.check()
    c.load_model(MODEL, 10, 3, SIZE, model)
    return c


def thirds(n: int, names: list[str]) -> list[tuple[str, int, int]]:
    bounds = [round(n * k / len(names)) for k in range(len(names) + 1)]
    return [(name, bounds[k], bounds[k + 1]) for k, name in enumerate(names)]


def test_switch_plan_mid_run_loses_and_duplicates_nothing(
    workers: list[RunningWorker], model: torch.nn.Module
) -> None:
    torch.manual_seed(1)
    inputs = [(i, torch.randn(2, 3, SIZE, SIZE)) for i in range(24)]
    with torch.inference_mode():
        expected = {i: model(x) for i, x in inputs}
    with coordinator_for(workers, model) as c:
        n = c.load_model(MODEL, 10, 3, SIZE, model)
        first = c.install_plan(thirds(n, ["w0", "w1", "w2"]))
        switched: list[int] = []

        def on_result(request_id: int, _: torch.Tensor) -> None:
            if len(switched) == 0 and request_id >= 5:  # mid-run, with requests in flight
                switched.append(c.switch_plan(thirds(n, ["w2", "w0"]), reason="test"))

        record = c.run(inputs, window=6, on_result=on_result)
        assert switched == [first + 1]
        assert sorted(record.outputs) == [i for i, _ in inputs]
        for i, out in record.outputs.items():
            assert torch.equal(out, expected[i]), f"request {i} differs after the switch"
        assert record.duplicates == 0 and record.replayed == 0
        assert {first, first + 1} <= set(record.epochs)  # both epochs carried requests
        assert [(p.epoch, p.reason) for p in record.plan_changes] == [(first + 1, "test")]
        assert record.plan_changes[0].stages[0][0] == "w2"
        # The drained old epoch is dropped on its devices (in the background, soon).
        deadline = time.monotonic() + 60  # bounded, not timed
        while time.monotonic() < deadline and any(first in w.worker._epochs for w in workers):
            time.sleep(0.05)
        assert all(first not in w.worker._epochs for w in workers)
        assert first not in c.installed_epochs()


def test_a_lost_stage_device_is_replanned_around_and_replayed(
    workers: list[RunningWorker], model: torch.nn.Module
) -> None:
    torch.manual_seed(2)
    inputs = [(i, torch.randn(2, 3, SIZE, SIZE)) for i in range(30)]
    with torch.inference_mode():
        expected = {i: model(x) for i, x in inputs}
    with coordinator_for(workers, model) as c:
        n = c.load_model(MODEL, 10, 3, SIZE, model)
        c.install_plan(thirds(n, ["w0", "w1", "w2"]))
        asked: list[list[str]] = []

        def replan(usable: list[str]) -> list[tuple[str, int, int]]:
            asked.append(usable)
            return thirds(n, usable)

        def on_result(request_id: int, _: torch.Tensor) -> None:
            if request_id == 8:
                workers[1].stop(0.0)  # a crash: the middle stage goes away mid-run

        record = c.run(inputs, window=6, on_result=on_result, replan=replan)
        assert asked == [["w0", "w2"]]
        assert sorted(record.outputs) == [i for i, _ in inputs]
        for i, out in record.outputs.items():
            assert torch.equal(out, expected[i])
        [failure] = record.failures
        assert failure.device == "w1" and failure.replayed >= 1
        assert record.replayed >= failure.replayed
        assert failure.recovery_s is not None and 0 < failure.recovery_s < 60  # bounded, not timed
        assert [t.after for t in record.transitions if t.device == "w1"] == ["lost"]
        assert c.health()["w1"].state is S.LOST


def test_when_every_device_is_lost_the_run_aborts_with_what_completed(
    workers: list[RunningWorker], model: torch.nn.Module
) -> None:
    inputs = [(i, torch.randn(1, 3, SIZE, SIZE)) for i in range(12)]
    with coordinator_for(workers[:1], model) as c:
        n = c.load_model(MODEL, 10, 3, SIZE, model)
        c.install_plan([("w0", 0, n)])

        def on_result(request_id: int, _: torch.Tensor) -> None:
            if request_id == 3:
                workers[0].stop(0.0)

        with pytest.raises(
            RunAborted, match=r"every device is lost \(w0: .*\); 4 requests completed"
        ) as info:
            c.run(inputs, window=1, on_result=on_result, replan=lambda usable: [(usable[0], 0, n)])
        assert isinstance(info.value, RunError)
        assert sorted(info.value.record.outputs) == [0, 1, 2, 3]
        assert [f.device for f in info.value.record.failures] == ["w0"]


# --- injection specs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pi2:stress@10s", Injection("pi2:stress@10s", "stress", ("pi2",), 10.0)),
        ("pi3:kill@20s", Injection("pi3:kill@20s", "kill", ("pi3",), 20.0)),
        ("pi2:pause@15s+5s", Injection("pi2:pause@15s+5s", "pause", ("pi2",), 15.0, 5.0)),
        ("pi1:pause@500ms", Injection("pi1:pause@500ms", "pause", ("pi1",), 0.5)),
        (
            "link:pi1-pi2:bandwidth=50mbps@10s",
            Injection("link:pi1-pi2:bandwidth=50mbps@10s", "link", ("pi1", "pi2"), 10.0,
                      bandwidth_mbps=50.0),
        ),
        (
            "link:a-b:bandwidth=1gbps,latency=5ms@1.5s+2s",
            Injection("link:a-b:bandwidth=1gbps,latency=5ms@1.5s+2s", "link", ("a", "b"), 1.5,
                      2.0, bandwidth_mbps=1000.0, latency_ms=5.0),
        ),
    ],
)  # fmt: skip
def test_injection_specs_parse(spec: str, expected: Injection) -> None:
    assert parse_injection(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pi2:stress", "no @TIME; expected DEVICE:ACTION@TIME"),
        ("pi2:stress@10", "time '10' is not a time like 10s or 500ms"),
        ("pi2:reboot@1s", "expected DEVICE:ACTION@TIME.*ACTION stress, kill or pause"),
        ("pi2:pause@1s+0s", "the duration must be > 0"),
        ("pi2:kill@1s+2s", "a kill has no \\+DURATION"),
        ("link:pi1:bandwidth=5mbps@1s", "is not two different device names"),
        ("link:pi1-pi1:bandwidth=5mbps@1s", "is not two different device names"),
        ("link:pi1-pi2:bandwidth=5@1s", "bandwidth '5' is not a rate like 50mbps"),
        ("link:pi1-pi2:speed=5mbps@1s", "link setting 'speed=5mbps' is not bandwidth=RATE"),
        ("link:coordinator-pi2:latency=1ms@1s", "links to the coordinator cannot be injected"),
        ("link:pi1-pi2@1s", "expected DEVICE:ACTION@TIME"),
    ],
)
def test_bad_injection_specs_name_the_expected_form(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_injection(spec)


def test_injections_must_name_cluster_devices() -> None:
    with pytest.raises(ConfigError, match="names 'pi9'; devices: pi1, pi2"):
        parse_injections(["pi1:kill@1s", "link:pi1-pi9:latency=1ms@2s"], ["pi1", "pi2"])


def test_set_link_shapes_the_workers_sends_until_cleared(
    workers: list[RunningWorker], model: torch.nn.Module
) -> None:
    x = torch.randn(4, 3, SIZE, SIZE)
    with coordinator_for(workers[:2], model) as c:
        n = c.load_model(MODEL, 10, 3, SIZE, model)
        c.install_plan([("w0", 0, n // 2), ("w1", n // 2, n)])
        peer = stub_of(workers[0])

        def transfer_ms(request_id: int) -> tuple[float, int]:
            record = c.run([(request_id, x)], window=1)
            hop = next(h for h in record.hops if h.stage == 0)
            return hop.transfer_ms, hop.bytes_out

        peer.SetLink(pb.SetLinkRequest(to=workers[1].address, bandwidth_mbps=2.0), timeout=5)
        slow, nbytes = transfer_ms(0)
        shaped_ms = nbytes * 8 / 2e6 * 1000.0  # the 2 Mbit/s serialisation time
        assert slow >= shaped_ms, (slow, shaped_ms)
        peer.SetLink(pb.SetLinkRequest(to=workers[1].address, clear=True), timeout=5)
        fast, _ = transfer_ms(1)
        assert fast < slow - shaped_ms / 2, (fast, slow, shaped_ms)
        with pytest.raises(
            grpc.RpcError, match=r"bandwidth_mbps must be a finite number in \[0.1, "
        ):
            peer.SetLink(pb.SetLinkRequest(to="x:1", bandwidth_mbps=-1.0), timeout=5)


def stub_of(worker: RunningWorker) -> pb_grpc.WorkerStub:
    return pb_grpc.WorkerStub(open_channel(worker.address, TOKEN))


def test_run_job_checks_injections_before_starting_anything() -> None:
    given = parse_cluster({"token": TOKEN, "devices": [{"name": "a", "address": "127.0.0.1:1"}]})
    with pytest.raises(ConfigError, match="--inject needs an emulated cluster"):
        run_job(RunConfig(inject=("a:kill@1s",)), cluster=given)
    with pytest.raises(ConfigError, match="names 'pi7'; devices: pi1, pi2, pi3"):
        run_job(RunConfig(devices=3, inject=("pi7:kill@1s",)))
