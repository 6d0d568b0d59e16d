"""The HTTP API of ``edgesplit serve`` (FastAPI on uvicorn; OpenAPI docs at ``/docs``).

- ``POST /v1/classify``: JPEG/PNG images as multipart form files (any field name, one or many),
  or one image as the raw body; ``?top_k=5``; an optional deadline (``?deadline_ms=`` or the
  ``X-Deadline-Ms`` header) after which the answer is 504. Answers top-k class names with
  probabilities, the request id and where the time went (queue, upload, each stage, transfers).
- ``GET /v1/cluster``: plan, devices, health, live per-device readings, load.
- ``GET /metrics``: Prometheus (the run's device gauges and the server's request metrics).
- ``GET /``: the live page (:mod:`edgesplit.serve.page`).

Every refusal is JSON ``{"error": ..., "request_id": ...}`` with a 4xx/5xx status that fits
(400 empty or malformed, 413 too many or too large, 415 not an image, 429 queue full with
``Retry-After``, 503 pipeline stopped, 504 deadline); nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from edgesplit.errors import RequestError
from edgesplit.serve import images
from edgesplit.serve.batcher import Job
from edgesplit.serve.page import PAGE
from edgesplit.shared.timeouts import TIMEOUTS

if TYPE_CHECKING:
    from edgesplit.serve.session import Session

DEFAULT_TIMEOUT_S = TIMEOUTS.serve_request_s
"""A request without a deadline gets 504 after this long (so no client waits forever)."""
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class ServeMetrics:
    """The server's own Prometheus metrics, in the session's registry."""

    def __init__(self, session: Session) -> None:
        assert session.metrics is not None
        r = session.metrics.registry
        self.session = session
        self.requests = Counter(
            "edgesplit_serve_requests", "Classify requests answered, by HTTP status", ["code"],
            registry=r,
        )  # fmt: skip
        self.images = Counter(
            "edgesplit_serve_images", "Images classified by the server", registry=r
        )
        self.latency = Histogram(
            "edgesplit_serve_request_latency_seconds",
            "Classify request latency, received to answered (successful requests)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_requests = Gauge(
            "edgesplit_serve_queue_requests", "Requests waiting for the batcher", registry=r
        )
        self.queue_images = Gauge(
            "edgesplit_serve_queue_images", "Images waiting for the batcher", registry=r
        )

    def scrape(self) -> bytes:
        requests, queued = self.session.batcher.queued()
        self.queue_requests.set(requests)
        self.queue_images.set(queued)
        assert self.session.metrics is not None
        return generate_latest(self.session.metrics.registry)


def _error(exc: RequestError, request_id: str) -> JSONResponse:
    headers = {"X-Request-Id": request_id}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return JSONResponse(
        {"error": str(exc), "request_id": request_id}, status_code=exc.status, headers=headers
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the body is {declared} bytes; at most {limit} are accepted", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the body passes {limit} bytes; at most {limit} are accepted", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, session: Session) -> list[bytes]:
    """The request's image bytes: every file of a multipart form, or the raw body."""
    limits = session.config.limits
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise RequestError(
            f"the body is {declared} bytes; at most {limits.max_request_bytes} are accepted", 413
        )
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        return [await _read_body(request, limits.max_request_bytes)]
    try:
        form = await request.form(
            max_files=limits.max_images + 1,
            max_fields=limits.max_images + 16,
            max_part_size=limits.max_image_bytes + 1,
        )
    except HTTPException as exc:
        detail = str(exc.detail)
        if "Too many files" in detail:
            raise RequestError(
                f"the request holds more than {limits.max_images} images; at most "
                f"{limits.max_images} per request",
                413,
            ) from None
        if "maximum size" in detail:
            raise RequestError(
                f"a form field passes {limits.max_image_bytes} bytes; at most "
                f"{limits.max_image_bytes} bytes are accepted per part",
                413,
            ) from None
        raise RequestError(f"malformed multipart body: {detail}", 400) from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) > limits.max_images:
            raise RequestError(
                f"the request holds {len(files)} images; at most {limits.max_images} per request",
                413,
            )
        blobs, total = [], 0
        for index, f in enumerate(files):  # a chunked body has no Content-Length to check
            if f.size is not None and f.size > limits.max_image_bytes:
                raise RequestError(
                    f"image {index} is {f.size} bytes; at most {limits.max_image_bytes} bytes "
                    "are accepted",
                    413,
                )
            blobs.append(await f.read())
            total += len(blobs[-1])
            if total > limits.max_request_bytes:
                raise RequestError(
                    f"the images pass {limits.max_request_bytes} bytes in all; at most "
                    f"{limits.max_request_bytes} are accepted",
                    413,
                )
        return blobs
    finally:
        await form.close()


def _deadline(request: Request, received: float) -> float:
    text = request.query_params.get("deadline_ms") or request.headers.get("x-deadline-ms")
    if text is None:
        return received + DEFAULT_TIMEOUT_S
    try:
        ms = float(text)
    except ValueError:
        raise RequestError(f"deadline_ms must be a number of milliseconds, got {text!r}") from None
    if not ms > 0:
        raise RequestError(f"deadline_ms must be > 0, got {text}")
    return received + min(ms / 1000.0, DEFAULT_TIMEOUT_S)


def _top_k(request: Request, classes: int) -> int:
    text = request.query_params.get("top_k", "5")
    try:
        k = int(text)
    except ValueError:
        raise RequestError(f"top_k must be an integer, got {text!r}") from None
    if not 1 <= k <= classes:
        raise RequestError(f"top_k must be in 1..{classes}, got {k}")
    return k


def latency_split(job: Job, received: float, decoded: float, answered: float) -> dict[str, Any]:
    """Where a request's time went (ms): decoding, waiting in the batcher's queue, and the
    micro-batch that delivered its last rows: upload, each stage (queue + compute) and each
    transfer (serialise, wait for the link, send)."""

    def ms(seconds: float) -> float:
        return round(seconds * 1000.0, 3)

    split: dict[str, Any] = {
        "total": ms(answered - received),
        "decode": ms(decoded - received),
        "queue": ms((job.first_sent or decoded) - decoded),
        "micro_batches": len(job.parts),
    }
    seen = job.timing
    if seen is not None:
        sent = seen.t - seen.latency_s
        hops = sorted(seen.records, key=lambda h: h.stage)
        split["upload"] = ms(hops[0].start - sent) if hops else None
        split["stages"] = [
            {
                "stage": h.stage,
                "device": h.device,
                "queue": round(h.queue_ms, 3),
                "compute": round(h.compute_ms, 3),
            }
            for h in hops
        ]
        split["transfers"] = [
            round(h.serialize_ms + h.send_wait_ms + h.transfer_ms, 3) for h in hops
        ]
        split["pipeline"] = ms(seen.latency_s)
    return split


def results(outputs: torch.Tensor, names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    probs = torch.softmax(outputs.to(torch.float32), dim=1)
    values, indices = probs.topk(k, dim=1)
    return [
        {
            "label": int(idx[0]),
            "class": names[int(idx[0])],
            "top": [
                {"label": int(i), "class": names[int(i)], "probability": round(float(p), 6)}
                for p, i in zip(vals, idx, strict=True)
            ],
        }
        for vals, idx in zip(values, indices, strict=True)
    ]


async def _run(session: Session, x: torch.Tensor, deadline: float) -> tuple[Job, torch.Tensor]:
    """Submit ``x`` to the session's batcher and wait for its outputs until ``deadline``
    (:class:`RequestError` 504 past it; a client that went away fails the job with 499, so
    its images need not run)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Job] = loop.create_future()

    def on_done(job: Job) -> None:
        def resolve() -> None:
            if not done.done():
                done.set_result(job)

        # RuntimeError: the server stopped meanwhile, and nobody waits for this answer.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve)

    job = session.submit(x, deadline, on_done)
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout=max(deadline - time.time(), 0))
    except asyncio.TimeoutError:
        job.fail(RequestError("the request's deadline passed in the pipeline", status=504))
    except asyncio.CancelledError:  # the client went away: its images need not run
        job.fail(RequestError("the client disconnected", status=499))
        raise
    if job.error is not None:
        raise job.error
    assert job.outputs is not None
    return job, job.outputs


def create_app(session: Session) -> FastAPI:
    """The ASGI app over an open :class:`~edgesplit.serve.session.Session`."""
    app = FastAPI(
        title="edgesplit serve",
        description="Image classification on a pipelined edge cluster (edgesplit).",
        version="1",
    )
    metrics = ServeMetrics(session)

    @app.post("/v1/classify")
    async def classify(request: Request) -> Response:
        """Classify one or more JPEG/PNG images (multipart files, or one raw body)."""
        received = time.time()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            response = await _classify(request, request_id, received)
        except RequestError as exc:
            response = _error(exc, request_id)
        metrics.requests.labels(code=str(response.status_code)).inc()
        return response

    async def _classify(request: Request, request_id: str, received: float) -> Response:
        k = _top_k(request, len(session.classes))
        deadline = _deadline(request, received)
        blobs = await _uploads(request, session)
        info, size, limits = session.info_dataset, session.input_size, session.config.limits
        raw = session.raw_images
        x = await run_in_threadpool(images.model_inputs, blobs, info, size, limits, raw)
        decoded = time.time()
        job, outputs = await _run(session, x, deadline)
        answered = time.time()
        session.record(job, answered)
        metrics.images.inc(job.images)
        metrics.latency.observe(answered - received)
        epoch = session.coordinator.epoch if session.coordinator else None
        body = {
            "request_id": request_id,
            "images": job.images,
            "results": results(outputs, session.classes, k),
            "latency_ms": latency_split(job, received, decoded, answered),
            "plan_epoch": epoch,
            "model": session.config.run.model,
        }
        return JSONResponse(body, headers={"X-Request-Id": request_id})

    @app.get("/v1/cluster")
    async def cluster() -> dict[str, Any]:
        """The plan, every device with its health and live readings, and the load."""
        return await run_in_threadpool(session.describe)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format."""
        return Response(metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        """The live page: devices, throughput, p50/p99, the plan, and a drop zone."""
        return HTMLResponse(PAGE)

    return app
