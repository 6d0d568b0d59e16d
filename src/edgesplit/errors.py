"""One exception hierarchy for edgesplit.

Every error says what was expected and what was given. Lower-level exceptions (grpc, OSError,
torch.fx) are translated into these at the boundary, so the CLI only has to catch
:class:`EdgesplitError`. Every exception class of the package lives here (scripts/check_layering.py
checks it), and none is raised as the bare base class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc


class EdgesplitError(Exception):
    """Base class of every error edgesplit raises on purpose; its message says what was
    expected and what was given.

    Example::

        >>> try:
        ...     edgesplit.plan(prof, objective="speed")
        ... except edgesplit.EdgesplitError as exc:
        ...     print(exc)
        objective must be one of throughput, latency, energy, got 'speed'
    """


class ConfigError(EdgesplitError):
    """A config file, CLI option or spec is malformed."""


class ModelError(EdgesplitError):
    """A model name, checkpoint or weight file is unknown, missing or does not match."""


class GraphError(EdgesplitError):
    """A model cannot be traced or split."""


class AccuracyError(EdgesplitError):
    """Quantized stages lose more accuracy than the run allows."""


class PartitionError(EdgesplitError):
    """A partition (list of unit ranges) is malformed or does not fit the model."""


class PlanError(EdgesplitError):
    """No plan satisfies the constraints."""


class DataError(EdgesplitError):
    """A dataset is missing, corrupt or unknown."""


class WorkerError(EdgesplitError):
    """A worker refused a request, or could not be reached."""


class RunError(EdgesplitError):
    """A distributed run could not complete."""


class RequestError(EdgesplitError):
    """A request to ``edgesplit serve`` cannot be served; ``status`` is the HTTP status it gets
    (400/413/415/422 for bad input, 429 for a full queue, 503/504 when the pipeline cannot)."""

    def __init__(self, message: str, status: int = 400, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class CodecError(EdgesplitError):
    """A tensor message is malformed: unknown dtype, bad shape, or wrong byte count."""


class Refused(EdgesplitError):
    """Raised by a handler to answer the call with ``code`` and a message saying what was
    expected."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ListenError(EdgesplitError):
    """A gRPC server cannot listen on its address (in use, invalid, or refused by the OS)."""


class OversizeError(EdgesplitError):
    """A message would exceed the gRPC size limit."""


class SendStopped(EdgesplitError):
    """The sender was closed while a message waited for its link."""


class StreamBroken(EdgesplitError):
    """A link stream ended before a frame was acknowledged; ``code`` is the gRPC status that
    ended it (None: closed by us, or an acknowledgement that made no sense)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class LinkRefused(EdgesplitError):
    """The receiver acknowledged a frame with a refusal (``code``, a gRPC status)."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class InstallFailed(WorkerError):
    """A device did not take its stage of a new epoch (the epoch did not become current)."""

    def __init__(self, message: str, device: str) -> None:
        super().__init__(message)
        self.device = device


class RunAborted(RunError):
    """The run could not finish; ``record`` (a :class:`edgesplit.runtime.records.RunRecord`)
    holds what it did (results that arrived, failures). Typed ``Any`` here so that this module
    imports nothing of the package."""

    def __init__(self, message: str, record: Any) -> None:
        super().__init__(message)
        self.record = record


class RunInterrupted(RunAborted):
    """Ctrl-C or SIGTERM (as ``SystemExit``) stopped the run; ``record`` holds what it did and
    ``interruption`` the exception to raise again once the run folder is written."""

    def __init__(self, record: Any, interruption: BaseException) -> None:
        what = "Ctrl-C" if isinstance(interruption, KeyboardInterrupt) else "a signal (SIGTERM)"
        super().__init__(f"interrupted by {what}", record)
        self.interruption = interruption
