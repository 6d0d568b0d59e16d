"""The worker's side of profiling: time every unit of the loaded model, and time transfers.

Unit times are for one micro-batch of zeros (compute time of these CNNs does not depend on the
values). Each timed pass runs the units in order on the previous unit's output, so every unit
sees its real input shape; the reply holds the median and the interquartile range per unit.

Units are cut from the worker's compiled ONNX model exactly like stages are
(:func:`edgesplit.runtime.stages.build_runner`); int8 units from the coordinator's quantized
model (``int8_model_sha256``), or, from an older coordinator, quantized here one by one, each
calibrated on its own inputs (the request's model inputs run through the fp32 units before it).
A unit run alone pays a quantize and a dequantize at its ends and loses fusion across them, so
its time overstates what it costs inside a quantized stage (MobileNetV2 at 224, units quantized
alone: 215 ms summed against 127 ms for the whole model quantized as one). The worker therefore
also times the whole quantized model as one stage and scales the int8 unit times to sum to it:
the relative unit costs come from the units, the level from the real quantized graph.

At every precision the reply also holds the whole model's time as one stage (wall and CPU). An
engine that fuses a stage into one graph (ONNX Runtime converts a stage's input and output
layouts once, at its ends) runs a stage faster than the sum of its units timed alone: fp32
MobileNetV2 at 224, batch 8, one thread: 87 ms as one stage against 149 ms summed over units.
The coordinator turns the difference into a cost per stage boundary
(:func:`edgesplit.plan.profile.boundary_model`).
Link probes time the wire, not the CPU around it: a probe of N bytes is one client-streaming
ProbeStream call whose payload goes as 256 KiB chunks, so the sender's serialisation, the
kernel's queue and the receiver's copies overlap instead of adding up, timed from before the
first chunk to the reply after the last. The CPU a hand-off costs each side is measured apart
(:func:`hop_cpu_ms_per_mb`) and modelled by the planner on its own; a probe that sent one big
message counted it a second time in the link's slope (940 Mbit/s kernel-shaped links between
0.5-CPU devices fitted 0.73-0.84 of their rate that way, streamed 0.96-0.97; see
``bench/README.md``). Emulated shaping
(:func:`~edgesplit.runtime.links.link_delay_s`) is applied per chunk: the link's latency before
the first, each chunk leaves once the emulated link has carried it, so on loopback the fitted
rate is the emulated one and the transfer itself overlaps the wait, as on a real link.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
import numpy as np
import psutil

from edgesplit import engines
from edgesplit.config import TlsSpec
from edgesplit.errors import EdgesplitError, Refused
from edgesplit.runtime import limits
from edgesplit.runtime.links import LinkShape, link_delay_s
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.stages import (
    LoadedModel,
    StageRunner,
    build_bytes,
    build_runner,
    calibration,
    work_bytes,
)
from edgesplit.runtime.transport import Call, open_channel
from edgesplit.shared.timeouts import TIMEOUTS

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_PROFILE_BATCH = 256
MAX_REPEATS = 50
MAX_STAGES = 32
MAX_PROBE_BYTES = limits.MAX_PROBE_BYTES
PROBE_CHUNK_BYTES = 256 * 1024
"""A probe stream's chunk: large enough that per-message costs are small against the bytes,
small enough that sender, kernel and receiver overlap (a 2 MiB probe is 8 chunks)."""
PROBE_TIMEOUT_S = TIMEOUTS.probe_s
HOP_BYTES = 2 * 1024 * 1024
HOP_REPEATS = 5


def _iqr(samples: list[float]) -> float:
    if len(samples) < 2:
        return 0.0
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[2] - q[0]


def unit_executors(
    model: LoadedModel,
    engine: str,
    threads: int,
    precision: str = "fp32",
    images: np.ndarray | None = None,
    int8: LoadedModel | None = None,
) -> list[StageRunner]:
    """One runner per unit on ``engine`` at ``precision``, each cut from the model the way a
    stage is. int8 units are cut from ``int8`` (the coordinator's quantized model) or, without
    it, quantized here once and cached on disk: that needs ``images`` (model inputs), on which
    each unit calibrates after the fp32 units before it."""
    spec = engines.EngineSpec(engine, precision)
    if precision == "int8" and int8 is not None:
        proto = int8.proto()
        return [
            build_runner(model, i, i + 1, spec, threads, proto=proto, int8_model=int8)
            for i in range(model.num_units)
        ]
    fp32 = engines.EngineSpec(engine, "fp32")
    proto = model.proto()
    out: list[StageRunner] = []
    inputs = images if precision == "int8" else None
    for i in range(model.num_units):
        out.append(build_runner(model, i, i + 1, spec, threads, stage_inputs=inputs, proto=proto))
        if inputs is not None and i + 1 < model.num_units:
            unit = build_runner(model, i, i + 1, fp32, threads, proto=proto)
            inputs = np.concatenate(
                [unit.run(inputs[j : j + 64]) for j in range(0, len(inputs), 64)]
            )
    return out


def _model_ms(
    model: LoadedModel,
    spec: engines.EngineSpec,
    threads: int,
    images: np.ndarray | None,
    x: np.ndarray,
    request: pb.ProfileRequest,
    int8: LoadedModel | None = None,
) -> tuple[float, float]:
    """Median wall and process CPU ms of the whole model run as one stage."""
    whole = build_runner(model, 0, model.num_units, spec, threads, images, int8_model=int8)
    samples, cpu = _time_runs(whole, x, request.warmup, request.repeats)
    return statistics.median(samples), statistics.median(cpu)


def hop_cpu_ms_per_mb(size: int = HOP_BYTES, repeats: int = HOP_REPEATS) -> float:
    """Process CPU ms that one side of a hand-off costs per MB (1e6 bytes).

    A tensor goes the way a micro-batch does: its header encoded, packed into a link frame
    with the array's bytes, sent over a loopback link stream to a server in this process,
    unpacked and viewed there as the engine's input, and acknowledged. Both sides run in this
    process, so half of its CPU time is one side's. On an emulated device that CPU comes out of
    the same quota as the stage's compute (measured: a quarter-core device receiving a 4.8 MB
    input and sending a 6.4 MB output ran its 3-unit stage at twice the predicted time).
    """
    from edgesplit.runtime import codec, wire
    from edgesplit.runtime.links import LinkStream
    from edgesplit.runtime.transport import make_server, service_handler

    def take(batch: pb.MicroBatch, data: memoryview) -> None:
        wire.decode_activation_array(batch.tensor, data=data)

    handler = service_handler("edgesplit.v1.HopTimer", {}, links={"Take": take})
    server = make_server([handler], None, max_workers=2)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = open_channel(f"127.0.0.1:{port}", None)
    stream = LinkStream(channel, "/edgesplit.v1.HopTimer/Take", "hop timer")
    try:
        x = np.zeros(size // 4, dtype=np.float32)
        samples = []
        for rep in range(repeats + 1):
            c0 = time.process_time()
            batch = pb.MicroBatch()
            payload = wire.activation_payload(x, "fp32", batch.tensor)
            stream.send(codec.pack(batch, payload)).result(timeout=PROBE_TIMEOUT_S)
            if rep:  # the first frame sets up the connection
                samples.append((time.process_time() - c0) * 1000.0)
    finally:
        stream.close()
        channel.close()
        server.stop(0.5).wait(1.0)  # lets the cancelled stream end first
    return statistics.median(samples) / 2 / (size / 1e6)


def profile_units(
    model: LoadedModel,
    request: pb.ProfileRequest,
    threads: int,
    default_engine: str | None = None,
    int8: LoadedModel | None = None,
    call: Call | None = None,
) -> pb.ProfileReply:
    """Time each unit of ``model`` for one micro-batch of ``request.batch_size`` on the
    requested engine and precision (int8: cut from ``int8`` when given, scaled to the whole
    quantized model, see the module doc). With ``request.stages``: :func:`profile_stages`."""
    _check_request(request)
    if request.stages:
        return profile_stages(model, request, threads, default_engine, int8, call)
    precision, images = _precision(model, request, int8)
    try:
        engine, _ = engines.resolve_engine(request.engine or default_engine)
        stages = unit_executors(model, engine, threads, precision, images, int8)
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    samples: list[list[float]] = [[] for _ in stages]
    cpu: list[list[float]] = [[] for _ in stages]
    x0 = np.zeros((request.batch_size, *model.units.input_shape), dtype=model.units.in_dtype(0))
    for rep in range(request.warmup + request.repeats):
        if call is not None:
            call.check()  # the caller gave up: stop timing
        x = x0
        for i, stage in enumerate(stages):
            c0, t0 = time.process_time(), time.perf_counter()
            x = stage.run(x)
            if rep >= request.warmup:
                samples[i].append((time.perf_counter() - t0) * 1000.0)
                cpu[i].append((time.process_time() - c0) * 1000.0)
    unit_ms = [statistics.median(s) for s in samples]
    spread_ms = [_iqr(s) for s in samples]
    cpu_ms = [statistics.median(c) for c in cpu]
    try:
        model_ms, model_cpu_ms = _model_ms(
            model,
            engines.EngineSpec(engine, precision),
            threads,
            images if precision == "int8" else None,
            x0,
            request,
            int8,
        )
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    if precision == "int8":
        scale = model_ms / sum(unit_ms) if sum(unit_ms) > 0 else 1.0
        unit_ms = [t * scale for t in unit_ms]
        spread_ms = [t * scale for t in spread_ms]
        cpu_ms = [t * scale for t in cpu_ms]
    process = psutil.Process()
    return pb.ProfileReply(
        unit_ms=unit_ms,
        unit_spread_ms=spread_ms,
        unit_cpu_ms=cpu_ms,
        rss_mb=process.memory_info().rss / 2**20,
        available_memory_mb=psutil.virtual_memory().available / 2**20,
        cpu_count=psutil.cpu_count() or 1,
        threads=threads,
        engine=engine,
        precision=precision,
        model_ms=model_ms,
        model_cpu_ms=model_cpu_ms,
        hop_cpu_ms_per_mb=hop_cpu_ms_per_mb() if precision == "fp32" else 0.0,
    )


def _precision(
    model: LoadedModel, request: pb.ProfileRequest, int8: LoadedModel | None = None
) -> tuple[str, np.ndarray | None]:
    """The request's precision and its calibration model inputs (int8 without the
    coordinator's quantized model needs them)."""
    precision = request.precision or "fp32"
    images = calibration(model, request) if int8 is None else None
    if precision == "int8" and images is None and int8 is None:
        raise Refused(
            INVALID, "profiling at precision int8 needs int8_model_sha256 or calibration images"
        )
    return precision, images


def _check_request(request: pb.ProfileRequest) -> None:
    limits.check_int("batch_size", request.batch_size, 1, MAX_PROFILE_BATCH)
    limits.check_int("repeats", request.repeats, 1, MAX_REPEATS)
    limits.check_int("warmup", request.warmup, 0, MAX_REPEATS)
    limits.check_text("engine", request.engine, 32)
    limits.check_text("precision", request.precision, 32)
    limits.check_int("stages", len(request.stages), 0, MAX_STAGES)


def profile_bytes(model: LoadedModel, request: pb.ProfileRequest) -> int:
    """Estimated memory a Profile request needs (checked against the worker's budget before
    anything is built): one micro-batch's working memory through the whole model, the units'
    stages built from the model file, and the calibration images."""
    _check_request(request)
    activations = request.batch_size * work_bytes(model.units, 0, model.num_units)
    return activations + build_bytes(model) + len(request.calibration.data) * 2


def profile_stages(
    model: LoadedModel,
    request: pb.ProfileRequest,
    threads: int,
    default_engine: str | None = None,
    int8: LoadedModel | None = None,
    call: Call | None = None,
) -> pb.ProfileReply:
    """Time each of ``request.stages`` as one stage, built the way a run builds it (same
    engine, precision, threads and compiled-stage cache), on one micro-batch of zeros of its
    input shape: the median wall and process CPU ms and the wall spread per stage.

    The planner's stage times are a model (unit times plus boundary costs, fitted to the whole
    model); it asks for these to replace the model where it matters, at the stages it chose."""
    n = model.num_units
    if len(request.stages) > MAX_STAGES:
        raise Refused(
            INVALID, f"at most {MAX_STAGES} stages per request, got {len(request.stages)}"
        )
    for span in request.stages:
        if not 0 <= span.start < span.end <= n:
            raise Refused(
                INVALID,
                f"stage [{span.start}, {span.end}) is not a unit range of the loaded model; "
                f"expected 0 <= start < end <= {n}",
            )
    precision, images = _precision(model, request, int8)
    try:
        engine, _ = engines.resolve_engine(request.engine or default_engine)
        spec = engines.EngineSpec(engine, precision)
        timings = []
        cut_from = int8 if int8 is not None and precision == "int8" else None
        proto = (cut_from or model).proto()
        for span in request.stages:
            if call is not None:
                call.check()
            executor = build_runner(
                model, span.start, span.end, spec, threads, images, proto=proto, int8_model=cut_from
            )
            shape = model.units.in_shape(span.start)
            x = np.zeros((request.batch_size, *shape), dtype=model.units.in_dtype(span.start))
            wall, cpu = _time_runs(executor, x, request.warmup, request.repeats)
            timings.append(
                pb.StageTiming(
                    start=span.start,
                    end=span.end,
                    wall_ms=statistics.median(wall),
                    cpu_ms=statistics.median(cpu),
                    spread_ms=_iqr(wall),
                )
            )
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    return pb.ProfileReply(
        cpu_count=psutil.cpu_count() or 1,
        threads=threads,
        engine=engine,
        precision=precision,
        stage_timings=timings,
    )


def _time_runs(
    executor: StageRunner, x: np.ndarray, warmup: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Wall and process CPU ms of each timed run of ``executor`` on ``x`` (after ``warmup``)."""
    wall, cpu = [], []
    for rep in range(warmup + repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        executor.run(x)
        if rep >= warmup:
            wall.append((time.perf_counter() - t0) * 1000.0)
            cpu.append((time.process_time() - c0) * 1000.0)
    return wall, cpu


def time_transfers(
    stub: pb_grpc.WorkerStub,
    sizes: Sequence[int],
    repeats: int,
    shape: LinkShape,
    call: Call | None = None,
) -> list[float]:
    """Median ms of ``repeats`` probe streams per payload size (:func:`time_stream`), after one
    untimed chunk (at most the largest size) that warms the channel's streams. Raises
    ``grpc.RpcError`` when a call fails, and :class:`Refused` when ``call`` (the ProbeLink being
    answered) ends first: its deadline bounds every wait."""
    call = call or Call()
    warm = min(PROBE_CHUNK_BYTES, max(sizes, default=0))
    stub.ProbeStream(
        iter([pb.ProbeChunk(data=bytes(warm))]),
        timeout=max(0.01, call.timeout_s(PROBE_TIMEOUT_S)),
    )
    return [
        statistics.median(time_stream(stub, size, shape, call) for _ in range(repeats))
        for size in sizes
    ]


def time_stream(stub: pb_grpc.WorkerStub, size: int, shape: LinkShape, call: Call) -> float:
    """Ms from before the first chunk of a ``size``-byte probe stream to the receiver's reply
    after the last, with ``shape`` applied in the send path (:func:`probe_chunks`)."""
    t0 = time.perf_counter()
    reply = stub.ProbeStream(
        probe_chunks(size, shape, call, t0), timeout=max(0.01, call.timeout_s(PROBE_TIMEOUT_S))
    )
    ms = (time.perf_counter() - t0) * 1000.0
    call.check()  # the stream was cut short because the call ended
    if reply.received_bytes != size:
        raise Refused(
            grpc.StatusCode.DATA_LOSS,
            f"a {size}-byte probe arrived as {reply.received_bytes} bytes",
        )
    return ms


def probe_chunks(size: int, shape: LinkShape, call: Call, t0: float) -> Iterator[pb.ProbeChunk]:
    """``size`` bytes as chunks of :data:`PROBE_CHUNK_BYTES`, paced by the emulated link:
    the first after its latency, each once the link has carried it at its bandwidth (so the
    last leaves at ``t0 + link_delay_s(shape, size)``). Ends early, without raising, when
    ``call`` ends (the caller checks it)."""
    full = pb.ProbeChunk(data=bytes(min(size, PROBE_CHUNK_BYTES)))
    rate = LinkShape(bandwidth_mbps=shape.bandwidth_mbps)
    due = t0 + shape.latency_ms / 1000.0
    sent = 0
    while sent < size:
        n = min(PROBE_CHUNK_BYTES, size - sent)
        due += link_delay_s(rate, n)
        try:
            call.wait(max(0.0, due - time.perf_counter()))
        except Refused:
            return
        yield full if n == len(full.data) else pb.ProbeChunk(data=bytes(n))
        sent += n


def receive_probe(chunks: Iterator[pb.ProbeChunk], call: Call) -> pb.ProbeStreamReply:
    """A ProbeStream's answer: the bytes received. Each chunk may hold at most
    :data:`~edgesplit.runtime.limits.MAX_PROBE_CHUNK_BYTES`, the stream at most
    :data:`MAX_PROBE_BYTES` (INVALID_ARGUMENT past either, the rest unread), and a stream
    still open after :data:`~edgesplit.runtime.limits.MAX_PROBE_STREAM_S` (or its caller's
    deadline) is cancelled."""
    timer = threading.Timer(call.timeout_s(limits.MAX_PROBE_STREAM_S), call.cancel)
    timer.daemon = True
    timer.start()
    received = 0
    try:
        for chunk in chunks:
            n = limits.check_int(
                "a probe chunk's bytes", len(chunk.data), 0, limits.MAX_PROBE_CHUNK_BYTES
            )
            received += n
            if received > MAX_PROBE_BYTES:
                raise Refused(INVALID, f"a probe stream may carry at most {MAX_PROBE_BYTES} bytes")
    finally:
        timer.cancel()
    return pb.ProbeStreamReply(received_bytes=received)


def check_probe(request: pb.ProbeLinkRequest) -> LinkShape:
    """Validate a ProbeLink request's numbers (see :mod:`~edgesplit.runtime.limits`); the link
    shape it names."""
    limits.check_address("address", request.address)
    limits.check_text("token", request.token, limits.MAX_TOKEN_CHARS)
    limits.check_int("number of sizes", len(request.sizes), 1, limits.MAX_PROBE_SIZES)
    for size in request.sizes:
        limits.check_int("each size", size, 0, MAX_PROBE_BYTES)
    limits.check_int("repeats", request.repeats, 1, MAX_REPEATS)
    total = sum(request.sizes) * request.repeats
    if total > limits.MAX_PROBE_TOTAL_BYTES:
        raise Refused(
            INVALID,
            f"sum(sizes) x repeats must be at most {limits.MAX_PROBE_TOTAL_BYTES} bytes, "
            f"got {total}",
        )
    bandwidth = request.bandwidth_mbps if request.HasField("bandwidth_mbps") else None
    limits.check_link(request.latency_ms, bandwidth)
    return LinkShape(bandwidth_mbps=bandwidth, latency_ms=request.latency_ms)


def probe_link(
    request: pb.ProbeLinkRequest,
    token: str | None,
    tls: TlsSpec | None,
    shape_for: Callable[[str, LinkShape], LinkShape] | None = None,
    call: Call | None = None,
) -> pb.ProbeLinkReply:
    """Time probe streams of each size to ``request.address`` (median of ``repeats``).
    ``shape_for(address, requested)`` gives the emulated shaping in force towards the address
    (a SetLink change wins over the shaping the request names). ``call``'s deadline and
    cancellation end the probe early (DEADLINE_EXCEEDED / CANCELLED)."""
    shape = check_probe(request)
    call = call or Call()
    if shape_for is not None:
        shape = shape_for(request.address, shape)
    channel = open_channel(request.address, request.token or token, tls)
    try:
        stub = pb_grpc.WorkerStub(channel)
        # connect before timing
        stub.Probe(pb.ProbeRequest(), timeout=max(0.01, call.timeout_s(PROBE_TIMEOUT_S)))
        medians = time_transfers(stub, request.sizes, request.repeats, shape, call)
    except grpc.RpcError as exc:
        call.check()  # a probe cut short by its own deadline says so
        raise Refused(
            grpc.StatusCode.UNAVAILABLE, f"probing {request.address} failed: {exc.code()}"
        ) from None
    finally:
        channel.close()
    return pb.ProbeLinkReply(sizes=list(request.sizes), median_ms=medians)
