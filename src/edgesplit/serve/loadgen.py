"""A load generator for ``edgesplit serve``: latency against offered load.

Two ways to load a server (MLPerf Inference's scenarios):

- **open loop** (``poisson``, MLPerf's server scenario): requests arrive as a Poisson process at
  ``qps`` per second whatever the server does; latency counts from the *scheduled* arrival, so
  a server that falls behind is charged for the wait (no coordinated omission);
- **closed loop** (``closed``): ``clients`` clients each send a request, wait for its answer,
  and send the next.

A sweep runs one point per QPS (or client count) and names the highest QPS whose p99 meets a
bound with no failed request. Results are plain data (:class:`Point`), JSON-ready.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgesplit.errors import ConfigError
from edgesplit.metrics.summary import percentile

MAX_OUTSTANDING = 4096
"""Open-loop requests in flight at most; arrivals past it count as failed (``dropped``)."""


@dataclass(frozen=True)
class Sample:
    """One request: ``t`` is its (scheduled) start since the point began, seconds."""

    t: float
    latency_s: float
    status: int
    """HTTP status; 0 = no answer (connection error, client timeout, dropped)."""


@dataclass(frozen=True)
class Point:
    """One load level and what it measured."""

    mode: str
    offered_qps: float | None
    clients: int | None
    duration_s: float
    sent: int
    ok: int
    failed: int
    statuses: dict[str, int]
    achieved_qps: float
    images_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    samples: list[Sample] = field(default_factory=list, repr=False)

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out.pop("samples")
        if with_samples:
            out["samples"] = [
                [round(s.t, 4), round(s.latency_s * 1000, 3), s.status] for s in self.samples
            ]
        return out


def summarise(
    samples: Sequence[Sample],
    mode: str,
    duration_s: float,
    images_per_request: int,
    offered_qps: float | None = None,
    clients: int | None = None,
) -> Point:
    """A point's numbers from its samples (latency percentiles over successful requests)."""
    ok = [s for s in samples if s.status == 200]
    latencies = [s.latency_s * 1000.0 for s in ok]
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return Point(
        mode=mode,
        offered_qps=offered_qps,
        clients=clients,
        duration_s=duration_s,
        sent=len(samples),
        ok=len(ok),
        failed=len(samples) - len(ok),
        statuses=statuses,
        achieved_qps=len(ok) / duration_s if duration_s > 0 else 0.0,
        images_per_s=len(ok) * images_per_request / duration_s if duration_s > 0 else 0.0,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies) if latencies else None,
        samples=list(samples),
    )


def best_qps(points: Sequence[Point], p99_ms: float) -> float | None:
    """The highest offered (open loop) or achieved (closed loop) QPS of a point whose p99 is at
    most ``p99_ms`` with no failed request; None when no point meets it."""
    meeting = [
        p.offered_qps if p.offered_qps is not None else p.achieved_qps
        for p in points
        if p.failed == 0 and p.p99_ms is not None and p.p99_ms <= p99_ms
    ]
    return max(meeting) if meeting else None


def parse_levels(text: str) -> list[float]:
    """``"5,10,20"`` or ``"10:100:10"`` (start:stop:step, stop included) -> levels."""
    expected = f"expected levels like 5,10,20 or start:stop:step like 10:100:10, got {text!r}"
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ConfigError(expected)
            levels, value = [], start
            while value <= stop + 1e-9:
                levels.append(round(value, 6))
                value += step
        else:
            levels = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(expected) from None
    if not levels or any(not v > 0 for v in levels):
        raise ConfigError(f"levels must be > 0, got {text!r}")
    return levels


class Client:
    """Posts images to ``{url}/v1/classify`` (multipart) with one shared connection pool."""

    def __init__(
        self, url: str, payloads: Sequence[bytes], images_per_request: int, timeout_s: float
    ) -> None:
        import httpx

        if not payloads:
            raise ConfigError("no images to send; expected at least one")
        self.url = url.rstrip("/") + "/v1/classify"
        self.payloads = payloads
        self.images_per_request = images_per_request
        self.timeout_s = timeout_s
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        self.http = httpx.AsyncClient(timeout=timeout_s, limits=limits)
        self._next = 0

    def _files(self) -> list[tuple[str, tuple[str, bytes, str]]]:
        files = []
        for _ in range(self.images_per_request):
            blob = self.payloads[self._next % len(self.payloads)]
            self._next += 1
            files.append(("image", (f"{self._next}.png", blob, "image/png")))
        return files

    async def post(self) -> int:
        import httpx

        try:
            response = await self.http.post(self.url, files=self._files())
            return response.status_code
        except httpx.HTTPError:
            return 0

    async def close(self) -> None:
        await self.http.aclose()


async def open_loop(client: Client, qps: float, duration_s: float, seed: int = 0) -> Point:
    """Poisson arrivals at ``qps`` for ``duration_s`` (then waits for the answers)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    t0 = loop.time()
    scheduled = 0.0

    async def one(at: float) -> None:
        status = await client.post()
        samples.append(Sample(at, loop.time() - (t0 + at), status))

    while True:
        scheduled += rng.expovariate(qps)
        if scheduled > duration_s:
            break
        delay = t0 + scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= MAX_OUTSTANDING:
            samples.append(Sample(scheduled, 0.0, 0))
            continue
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*list(tasks))
    samples.sort(key=lambda s: s.t)
    return summarise(samples, "poisson", duration_s, client.images_per_request, offered_qps=qps)


async def closed_loop(client: Client, clients: int, duration_s: float) -> Point:
    """``clients`` clients, each sending its next request when the last one is answered."""
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    t0 = loop.time()

    async def worker() -> None:
        while loop.time() - t0 < duration_s:
            start = loop.time()
            status = await client.post()
            samples.append(Sample(start - t0, loop.time() - start, status))

    await asyncio.gather(*(worker() for _ in range(clients)))
    samples.sort(key=lambda s: s.t)
    elapsed = max(loop.time() - t0, 1e-9)
    return summarise(samples, "closed", elapsed, client.images_per_request, clients=clients)


@dataclass(frozen=True)
class LoadSpec:
    url: str
    mode: str = "poisson"
    """``poisson`` (open loop at each QPS level) or ``closed`` (each level is a client count)."""
    levels: tuple[float, ...] = (10.0,)
    duration_s: float = 10.0
    images_per_request: int = 1
    timeout_s: float = 30.0
    seed: int = 0
    pause_s: float = 1.0
    """Quiet time between two points, so one point's backlog does not spill into the next."""

    def __post_init__(self) -> None:
        if self.mode not in ("poisson", "closed"):
            raise ConfigError(f"mode must be poisson or closed, got {self.mode!r}")
        if not self.duration_s > 0:
            raise ConfigError(f"duration must be > 0 s, got {self.duration_s}")
        if self.images_per_request < 1:
            raise ConfigError(f"images per request must be >= 1, got {self.images_per_request}")


async def sweep_async(spec: LoadSpec, payloads: Sequence[bytes], say: Any = None) -> list[Point]:
    client = Client(spec.url, payloads, spec.images_per_request, spec.timeout_s)
    points = []
    try:
        for i, level in enumerate(spec.levels):
            if i and spec.pause_s > 0:
                await asyncio.sleep(spec.pause_s)
            if spec.mode == "poisson":
                point = await open_loop(client, level, spec.duration_s, spec.seed + i)
            else:
                point = await closed_loop(client, int(level), spec.duration_s)
            points.append(point)
            if say is not None:
                say(point_line(point))
    finally:
        await client.close()
    return points


def sweep(spec: LoadSpec, payloads: Sequence[bytes], say: Any = None) -> list[Point]:
    """Run every level of ``spec`` in order; ``say(line)`` after each point."""
    return asyncio.run(sweep_async(spec, payloads, say))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _clients(p: Point) -> str:
    return f"{p.clients} client{'' if p.clients == 1 else 's'}"


def point_line(p: Point) -> str:
    load = f"{p.offered_qps:g} qps offered" if p.offered_qps is not None else _clients(p)
    return (
        f"{load}: {p.achieved_qps:.1f} qps done, {p.ok}/{p.sent} ok, p50 {_ms(p.p50_ms)} ms, "
        f"p99 {_ms(p.p99_ms)} ms"
    )


def table(points: Sequence[Point]) -> str:
    """The sweep as a plain-text table."""
    head = ("load", "achieved qps", "img/s", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms")
    rows = [
        (
            f"{p.offered_qps:g} qps" if p.offered_qps is not None else _clients(p),
            f"{p.achieved_qps:.1f}",
            f"{p.images_per_s:.1f}",
            str(p.ok),
            str(p.failed),
            _ms(p.p50_ms),
            _ms(p.p90_ms),
            _ms(p.p99_ms),
            _ms(p.max_ms),
        )
        for p in points
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in (head, *rows)
    )


def plot(
    series: dict[str, Sequence[Point]], path: Path, p99_ms: float | None = None, title: str = ""
) -> Path:
    """p50 and p99 latency against offered load (or achieved QPS for closed loop), one pair of
    lines per series, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        xs = [p.offered_qps if p.offered_qps is not None else p.achieved_qps for p in points]
        label = f"{name} " if name else ""
        nan = float("nan")
        p99 = [p.p99_ms if p.failed == 0 and p.p99_ms is not None else nan for p in points]
        p50 = [nan if p.p50_ms is None else p.p50_ms for p in points]
        line = ax.plot(xs, p99, marker="o", label=f"{label}p99")[0]
        ax.plot(xs, p50, marker=".", linestyle="--",
                color=line.get_color(), label=f"{label}p50")  # fmt: skip
    if p99_ms is not None:
        ax.axhline(
            p99_ms, color="grey", linewidth=1, linestyle=":", label=f"p99 bound {p99_ms:g} ms"
        )
    closed = all(p.offered_qps is None for points in series.values() for p in points)
    ax.set_xlabel(f"{'achieved' if closed else 'offered'} load (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title or "latency against offered load")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dataset_payloads(name: str, count: int, data_dir: Path | None = None) -> list[bytes]:
    """The first ``count`` test images of a dataset as PNG files (lossless)."""
    from edgesplit.model import data
    from edgesplit.serve.images import encode_png

    dataset = data.load(name, "test", data_dir=data_dir)
    return [encode_png(dataset.images[i]) for i in range(min(count, len(dataset)))]


def wait_until_up(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll ``{url}/v1/cluster`` until the server answers; its answer."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url.rstrip("/") + "/v1/cluster", timeout=5.0)
            if response.status_code == 200:
                answer: dict[str, Any] = response.json()
                return answer
            last = f"status {response.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ConfigError(f"no edgesplit server answered at {url} within {timeout_s:.0f} s ({last})")
