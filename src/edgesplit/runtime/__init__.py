"""The distributed runtime: wire protocol, tensor codec, auth, worker server and coordinator.

Workers run a stage (a half-open unit range ``[start, end)``) of a model they hold whole, and
stream micro-batches to the next hop over gRPC; the coordinator feeds inputs, collects results
and per-hop timings. See ``edgesplit.proto`` for the messages.
"""

PROTOCOL_VERSION = 5
"""Bumped on any incompatible change to ``edgesplit.proto``; peers must agree on it."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The gRPC message size limit, set explicitly on every server and channel."""

__all__ = ["MAX_MESSAGE_BYTES", "PROTOCOL_VERSION"]
