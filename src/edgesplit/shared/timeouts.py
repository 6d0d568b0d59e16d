"""How long edgesplit waits, in one frozen object of named defaults (issue #16; the shape of
httpx's ``DEFAULT_TIMEOUT_CONFIG``). Every value is in seconds. Modules keep their old constant
names (``CHECK_TIMEOUT_S = TIMEOUTS.check_s``), so a test or a caller may still pass its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """Deadlines of remote calls and bounded waits, by what waits."""

    # The coordinator and its workers (runtime/)
    check_s: float = 3.0
    """A worker's Check call (version, token, CPU kind) before anything is installed."""
    load_s: float = 180.0
    """Shipping and loading the model on a worker."""
    engine_install_s: float = 60.0
    """InstallPlan for onnxruntime stages (the first install cuts and may quantize the stage)."""
    result_server_stop_s: float = 1.0
    """Grace of the coordinator's result server at close (it waits twice this for the stop)."""
    send_s: float = 30.0
    """One activation send on a link (worker to worker, or to the coordinator)."""
    confirm_s: float = 1.0
    """How long a device named in a failed send gets to answer the coordinator's own probe."""
    min_heartbeat_s: float = 0.25
    """A heartbeat call always gets at least this long, even right at the health deadline."""
    report_s: float = 5.0
    """A worker's report call to the coordinator."""
    profile_wait_s: float = 5.0
    """How long a worker's Profile waits for the one running before RESOURCE_EXHAUSTED."""
    probe_s: float = 30.0
    """One timing probe of the profiler on a worker (runtime/profiling.py)."""

    # Planning (plan/) and adaptation (adapt/)
    profile_s: float = 600.0
    """Profiling one device's units."""
    probe_link_s: float = 60.0
    """One ProbeLink call (a worker times sends of probe sizes to its peer)."""
    adapt_probe_s: float = 10.0
    """The controller's probe of a link the new plan would use."""

    # The cluster (cluster/) and its tools
    fault_link_s: float = 5.0
    """A fault injector's SetLink call."""
    doctor_connect_s: float = 2.0
    """``edgesplit doctor``: how long a worker gets to answer its first call."""
    ip_command_s: float = 10.0
    """One ``ip``/``tc`` command of the namespaced hosts."""
    host_check_s: float = 30.0
    """One ``ip link`` step of the check that this machine may create namespaced hosts."""
    worker_stop_grace_s: float = 0.7
    """Grace for calls in progress when a worker gets SIGTERM (the whole stop takes < 2 s)."""

    # Serving (serve/)
    serve_start_s: float = 60.0
    """How long uvicorn may take to accept connections once the pipeline is ready."""
    serve_stall_s: float = 30.0
    """The serving run's stall timeout, and how long its threads get to finish at close."""
    serve_request_s: float = 120.0
    """A request without a deadline gets 504 after this long (so no client waits forever)."""


TIMEOUTS = Timeouts()
"""The defaults every module reads."""
