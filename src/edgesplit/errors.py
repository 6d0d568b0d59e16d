"""One exception hierarchy for edgesplit.

Every error says what was expected and what was given. Lower-level exceptions (grpc, OSError,
torch.fx) are translated into these at the boundary, so the CLI only has to catch
:class:`EdgesplitError`.
"""


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
