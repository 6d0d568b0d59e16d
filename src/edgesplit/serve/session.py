"""The long-lived pipeline behind ``edgesplit serve``.

:class:`Session` prepares a model and a plan the way ``edgesplit run`` does (the same helpers
of :mod:`edgesplit.app.job`: model and checkpoint, the cluster bootstrap, partition or profile
and plan) and then runs **one** :meth:`Coordinator.run` for its whole life, fed by the
:class:`~edgesplit.serve.batcher.Batcher` instead of a dataset. So the window, replay of
unfinished micro-batches after a worker loss, re-admission after probation and ``--adaptive``
re-planning are the run's own code, not a copy. The run keeps no outputs (``keep_outputs=False``)
and a bounded sample history, so memory does not grow with the requests served.

Threads: the caller's (submit, info), the run's (feeds micro-batches, delivers results), and a
waker that tells the run when a micro-batch may leave (full, or ``max_wait_s`` ran out).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from edgesplit.adapt.controller import Controller
from edgesplit.app.execution import execution_for
from edgesplit.app.job import (
    Connected,
    ResolvedModel,
    bootstrap,
    emulation_mode,
    resolve_model,
)
from edgesplit.app.staging import choose_ranges, replanner, unit_costs
from edgesplit.config import ClusterSpec
from edgesplit.errors import ConfigError, EdgesplitError, RequestError
from edgesplit.metrics.summary import percentile
from edgesplit.model import data
from edgesplit.plan import autoplan
from edgesplit.plan.profile import ProfileSettings
from edgesplit.runconfig import RunConfig
from edgesplit.runtime.live import LiveEvent, LiveSnapshot, ResultSeen
from edgesplit.serve.batcher import Batcher, BatchPolicy, Job, MicroBatch
from edgesplit.serve.images import ImageLimits
from edgesplit.serve.labels import class_names
from edgesplit.shared.plan import Stage
from edgesplit.shared.timeouts import TIMEOUTS

if TYPE_CHECKING:
    from edgesplit.cluster.emulate import EmulatedCluster
    from edgesplit.engines import Execution
    from edgesplit.metrics.prometheus import RunMetrics
    from edgesplit.model.graph import UnitGraph
    from edgesplit.plan.profile import Profile
    from edgesplit.runtime.coordinator import Coordinator
    from edgesplit.runtime.runner import Replan
    from edgesplit.shared.plan import Ranges

log = logging.getLogger(__name__)

LATENCY_WINDOW_S = 10.0
"""Request latency percentiles and throughput on the page are over this many seconds."""
MAX_RECENT = 20_000
"""Recent requests kept for those statistics at most."""
STALL_TIMEOUT_S = TIMEOUTS.serve_stall_s


@dataclass(frozen=True)
class ServeConfig:
    """What ``edgesplit serve`` was asked to do. ``run`` carries the model, cluster and plan
    options it shares with ``edgesplit run`` (its dataset names the classes and the
    normalisation; no test set is read)."""

    run: RunConfig = field(default_factory=RunConfig)
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    limits: ImageLimits = field(default_factory=ImageLimits)
    top_k: int = 5


class Session:
    """A warm pipeline accepting jobs (see the module doc). Use as a context manager, or call
    :meth:`open` and :meth:`close`."""

    def __init__(
        self,
        config: ServeConfig,
        cluster: ClusterSpec | None = None,
        phase: Callable[[str], None] | None = None,
    ) -> None:
        if config.run.precision != "fp32":
            raise ConfigError(f"serve runs fp32 stages; got --precision {config.run.precision}")
        self.config = config
        self.cluster = cluster
        self.phase = phase or (lambda text: log.info("%s", text))
        self.batcher = Batcher(config.policy)
        self.info_dataset = data.dataset_info(config.run.dataset)
        self.classes = class_names(self.info_dataset.name, self.info_dataset.classes)
        self.input_size = 0
        self.raw_images = False
        """Whether requests go out as uint8 images (stage 0 preprocesses them)."""
        self.engine = ""
        self.notes: list[str] = []
        self.emulated: EmulatedCluster | None = None
        self.coordinator: Coordinator | None = None
        self.controller: Controller | None = None
        self.metrics: RunMetrics | None = None
        self.snapshot: LiveSnapshot | None = None
        self.failed: str | None = None
        self.started = 0.0
        self._stack = contextlib.ExitStack()
        self._closing = threading.Event()
        self._inflight: dict[int, MicroBatch] = {}
        self._timings: dict[int, ResultSeen] = {}
        self._next_id = 0
        self._jobs = 0
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int, float]] = deque(maxlen=MAX_RECENT)
        """(finished, images, latency_s) of recent successful requests."""
        self.served = 0
        self.images_served = 0
        self._threads: list[threading.Thread] = []

    # --- start and stop ------------------------------------------------------------------------

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Session:
        """Start (or connect to) the cluster, load the model, plan, and start serving."""
        try:
            self._prepare()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _prepare(self) -> None:
        from edgesplit.runtime.health import HealthPolicy

        config = self.config.run
        auto = config.planned
        if config.adaptive and not auto:
            raise ConfigError(
                f"--adaptive plans from the devices' profile: it needs --partition auto, "
                f"got {config.partition!r}"
            )
        # No test set is read: an empty one carries the classes, normalisation and name.
        empty = torch.empty((0, self.info_dataset.channels, 1, 1), dtype=torch.uint8)
        labels = torch.empty((0,), dtype=torch.int64)
        dataset = data.ImageSet(self.info_dataset.name, empty, labels, self.info_dataset)
        resolved = resolve_model(config, dataset)
        if resolved.weights == "random":
            self.notes.append(f"{config.model} has random weights: its answers are meaningless")
        self.input_size = resolved.input_size
        self.raw_images = resolved.raw_images
        ug = resolved.unit_graph()
        count = len(config.cpus_each) if config.cpus_each else config.devices
        costs = None if auto else unit_costs(config, ug)
        devices = len(self.cluster.devices) if self.cluster else count
        ranges = choose_ranges(config, ug, devices, costs)
        execution = execution_for(
            config, dataset, resolved.input_size, self.notes, resolved.raw_images
        )
        self.engine = str(execution.engine)
        policy = HealthPolicy(config.heartbeat_deadline_s, config.probation_s)
        connected = bootstrap(config, self.cluster, resolved, ug, self._stack, self.phase, policy)
        self.emulated, self.coordinator = connected.emulated, connected.coordinator
        if self.emulated is not None:
            self.notes.append(emulation_mode(config.network)[1])
        planned = autoplan.PlanRequest(
            config.objective, config.max_latency_ms, config.min_throughput_ips, precision="fp32"
        )
        profile, initial = self._first_plan(connected, resolved, ug, ranges, planned, execution)
        self.phase(f"installing {len(initial)} stages ({execution.engine} fp32)")
        connected.coordinator.install_plan(initial, execution=execution)
        replan = (
            autoplan.replanner(profile, planned, initial)
            if profile is not None
            else replanner(initial, costs or unit_costs(config, ug))
        )
        observers: list[Callable[[LiveEvent], None]] = [self._observe]
        if config.adaptive and profile is not None:
            self.controller = Controller(
                connected.coordinator, profile, planned, config.adapt_policy
            ).start()
            self._stack.callback(self.controller.stop)
            replan = self.controller.replan
            observers.append(self.controller.observe)
        self._start_run(connected.coordinator, config.window or 2 * len(initial), replan, observers)

    def _first_plan(
        self,
        connected: Connected,
        resolved: ResolvedModel,
        ug: UnitGraph,
        ranges: Ranges | None,
        planned: autoplan.PlanRequest,
        execution: Execution,
    ) -> tuple[Profile | None, list[Stage]]:
        """The plan the session starts with: the planner's from a profile (``auto``), else the
        fixed ranges on the cluster's first devices; and the profile, if one was taken."""
        if ranges is not None:
            names = [d.name for d in connected.spec.devices[: len(ranges)]]
            return None, [Stage(n, a, b) for n, (a, b) in zip(names, ranges, strict=True)]
        config = self.config.run
        self.phase("profiling the devices and links")
        settings = ProfileSettings(
            batch_size=self.config.policy.max_batch,
            reprofile=config.reprofile,
            engine=execution.engine,
            precisions=("fp32",),
        )
        profile, chosen = autoplan.profile_and_plan(
            connected.coordinator, ug, config.model, resolved.num_classes, planned, settings,
            self.phase,
        )  # fmt: skip
        self.notes.extend(chosen.notes)
        return profile, list(chosen.assignment())

    def _start_run(
        self,
        coordinator: Coordinator,
        window: int,
        replan: Replan,
        observers: list[Callable[[LiveEvent], None]],
    ) -> None:
        """Run the feed through the pipeline on its own thread until the session closes."""
        from edgesplit.metrics.prometheus import RunMetrics

        self.metrics = RunMetrics()
        self.started = time.time()

        def observe(event: LiveEvent) -> None:
            for fn in observers:
                fn(event)

        def run() -> None:
            from edgesplit.errors import RunAborted

            try:
                coordinator.run(
                    self._feed(),
                    window=window,
                    on_result=self._on_result,
                    stall_timeout_s=STALL_TIMEOUT_S,
                    replan=replan,
                    on_live=self._on_live,
                    observer=observe,
                    keep_outputs=False,
                )
            except RunAborted as exc:
                self._fail(f"the pipeline stopped: {exc}")
            except EdgesplitError as exc:
                self._fail(f"the pipeline stopped: {exc}")
            except BaseException as exc:  # a bug: answer every waiting request, then say it
                self._fail(f"the pipeline stopped: {type(exc).__name__}: {exc}")
                raise

        self._start_thread(run, "serve-run")
        self._start_thread(self._wake_loop, "serve-waker")

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Answer what waits with 503, let the run finish what is in flight, stop the cluster."""
        self._closing.set()
        self.batcher.drain(RequestError("the server is shutting down", status=503))
        self._wake()
        for thread in self._threads:
            thread.join(timeout=STALL_TIMEOUT_S)
        self._stack.close()

    def _fail(self, why: str) -> None:
        log.error("%s", why)
        self.failed = why
        error = RequestError(why, status=503)
        self.batcher.drain(error)
        with self._lock:
            batches, self._inflight = list(self._inflight.values()), {}
        for batch in batches:
            for part in batch.parts:
                part.job.fail(error)

    # --- the run's side ------------------------------------------------------------------------

    def _wake(self) -> None:
        from edgesplit.runtime.runner import Wake

        if self.coordinator is not None:
            self.coordinator.events.put(Wake())

    def _wake_loop(self) -> None:
        """Tell the run when a micro-batch may leave: at once when one is full, else when the
        oldest image has waited ``max_wait_s``."""
        changed = self.batcher.changed
        with changed:
            while not self._closing.is_set():
                delay = self.batcher.ready_in_locked(time.time())
                if delay is None:
                    changed.wait(1.0)
                elif delay > 0:
                    changed.wait(delay)
                else:
                    self._wake()
                    changed.wait(1.0)  # until the run took it (or again, if it could not)

    def _feed(self) -> Iterator[tuple[int, torch.Tensor] | None]:
        while not self._closing.is_set():
            batch = self.batcher.take(time.time())
            if batch is None:
                yield None
                continue
            with self._lock:
                request_id = self._next_id
                self._next_id += 1
                self._inflight[request_id] = batch
            for part in batch.parts:
                part.job.parts.append(request_id)
            yield request_id, batch.x

    def _observe(self, event: LiveEvent) -> None:
        if isinstance(event, ResultSeen) and event.records:
            self._timings[event.records[0].request_id] = event

    def _on_result(self, request_id: int, output: torch.Tensor) -> None:
        with self._lock:
            batch = self._inflight.pop(request_id, None)
        seen = self._timings.pop(request_id, None)
        if batch is None:
            return
        for part in batch.parts:
            if seen is not None:
                part.job.timing = seen
        batch.deliver(output)

    def _on_live(self, snapshot: LiveSnapshot) -> None:
        self.snapshot = snapshot
        if self.metrics is not None:
            self.metrics.on_live(snapshot)

    # --- the server's side ---------------------------------------------------------------------

    def submit(
        self, x: torch.Tensor, deadline: float | None, on_done: Callable[[Job], None]
    ) -> Job:
        """Queue preprocessed images; ``on_done(job)`` is called from another thread.
        :class:`RequestError` 429 (queue full) or 503 (the pipeline stopped)."""
        if self.failed is not None:
            raise RequestError(self.failed, status=503)
        if self._closing.is_set():
            raise RequestError("the server is shutting down", status=503)
        now = time.time()
        if deadline is not None and deadline <= now:
            raise RequestError("the request's deadline passed before it was queued", status=504)
        with self._lock:
            self._jobs += 1
            job_id = self._jobs
        job = Job(job_id, x, now, deadline, on_done)
        self.batcher.submit(job, retry_after_s=self.retry_after_s)
        return job

    def retry_after_s(self) -> float:
        """A guess at when the queue has room: the images waiting over recent throughput."""
        _, images = self.batcher.queued()
        rate = self.throughput_ips()
        return max(1.0, images / rate) if rate > 0 else 1.0

    def record(self, job: Job, finished: float) -> None:
        """Count a request answered with its results."""
        with self._lock:
            while self._recent and self._recent[0][0] <= finished - LATENCY_WINDOW_S:
                self._recent.popleft()  # older than any window asked for
            self._recent.append((finished, job.images, finished - job.received))
            self.served += 1
            self.images_served += job.images

    def _window(self, now: float) -> list[tuple[float, int, float]]:
        with self._lock:
            return [r for r in self._recent if r[0] > now - LATENCY_WINDOW_S]

    def throughput_ips(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        recent = self._window(now)
        span = min(LATENCY_WINDOW_S, max(now - self.started, 1e-9))
        return sum(r[1] for r in recent) / span

    def latency_ms(self, now: float | None = None) -> dict[str, float | None]:
        recent = self._window(time.time() if now is None else now)
        values = [r[2] * 1000.0 for r in recent]
        return {"p50": percentile(values, 50), "p99": percentile(values, 99)}

    def describe(self) -> dict[str, Any]:
        """``GET /v1/cluster``: plan, devices with health and live readings, load, settings."""
        assert self.coordinator is not None
        c = self.coordinator
        epoch, plan = c.current()
        stage_of = {s.device: i for i, s in enumerate(plan)}
        live = {d.name: d for d in self.snapshot.devices} if self.snapshot else {}
        health = c.health()
        devices = []
        for spec in c.cluster.devices:
            d = live.get(spec.name)
            h = health.get(spec.name)
            row: dict[str, Any] = {
                "name": spec.name,
                "address": spec.address,
                "stage": stage_of.get(spec.name),
                "health": h.state.value if h else None,
                "reason": h.reason if h else "",
                "cpu_kind": getattr(c.device_infos.get(spec.name), "cpu_kind", None),
            }
            if d is not None:
                row.update(
                    reachable=d.reachable,
                    throughput_ips=round(d.throughput_ips, 2),
                    process_cpu_percent=d.process_cpu_percent,
                    cpu_freq_mhz=d.cpu_freq_mhz,
                    memory_percent=d.memory_percent,
                    rss_mb=d.rss_mb,
                    temperature_c=d.temperature_c,
                    queue_depth=d.queue_depth,
                    images=d.images,
                    failures=d.failures,
                )
            if self.emulated is not None:
                with contextlib.suppress(EdgesplitError, KeyError):
                    row["pid"] = self.emulated.pid(spec.name)
            devices.append(row)
        requests, images = self.batcher.queued()
        return {
            "model": self.config.run.model,
            "dataset": self.info_dataset.name,
            "classes": list(self.classes),
            "input_size": self.input_size,
            "engine": self.engine,
            "emulated": self.emulated is not None,
            "status": "failed" if self.failed else "serving",
            "error": self.failed,
            "plan": {
                "epoch": epoch,
                "stages": [
                    {"stage": i, "device": s.device, "units": [s.start, s.end]}
                    for i, s in enumerate(plan)
                ],
            },
            "plan_changes": [p.to_dict() for p in c.plan_changes[-10:]],
            "devices": devices,
            "throughput_ips": round(self.throughput_ips(), 2),
            "latency_ms": self.latency_ms(),
            "window_s": LATENCY_WINDOW_S,
            "served_requests": self.served,
            "served_images": self.images_served,
            "queue": {"requests": requests, "images": images},
            "refused": self.batcher.refused,
            "expired": self.batcher.expired,
            "batching": {
                "max_batch": self.config.policy.max_batch,
                "max_wait_ms": self.config.policy.max_wait_s * 1000.0,
                "max_queue": self.config.policy.max_queue,
            },
            "adaptive": self.controller.line() if self.controller else None,
            "notes": self.notes,
        }
