"""Every number a worker accepts from the network, with its allowed range, in one place.

A caller holding the token may still be buggy or compromised, so a worker checks each number
before it uses it: finite, and inside the range named here. A refusal is ``INVALID_ARGUMENT``
naming the range (:func:`check_float`, :func:`check_int`); strings a caller sent are echoed
only as a short prefix (:func:`echo`). Ranges are closed ``[low, high]`` unless a name says
otherwise. See issue #18 for what each bound stops.
"""

from __future__ import annotations

import math

import grpc

from edgesplit.errors import Refused

INVALID = grpc.StatusCode.INVALID_ARGUMENT

MAX_LATENCY_MS = 60_000.0
"""Emulated one-way link latency, ms: a minute is far beyond any real link."""
MIN_BANDWIDTH_MBPS = 0.1
MAX_BANDWIDTH_MBPS = 1_000_000.0
"""Emulated link bandwidth, Mbit/s: 100 kbit/s to 1 Tbit/s."""
MAX_ADDRESS_CHARS = 256
"""A ``host:port`` (or "coordinator") a caller names."""
MAX_NAME_CHARS = 200
"""A model name or other label."""
MAX_TOKEN_CHARS = 4096
MAX_PROBE_SIZES = 64
"""Payload sizes in one ProbeLink."""
MAX_PROBE_TOTAL_BYTES = 256 * 1024 * 1024
"""Bytes one ProbeLink may send in all (sum of sizes x repeats)."""
MAX_PROBE_BYTES = 16 * 1024 * 1024
"""One probe's payload: a ProbeLink size, and the bytes of one ProbeStream call."""
MAX_PROBE_CHUNK_BYTES = 1024 * 1024
"""One chunk of a ProbeStream (a prober sends 256 KiB chunks)."""
MAX_PROBE_STREAM_S = 30.0
"""A ProbeStream that has not ended after this long is cancelled (a sender that stalls,
with or without a deadline of its own, holds a handler thread no longer)."""
MAX_CONCURRENT_PROBE_STREAMS = 4
"""ProbeStream calls received at once; a fifth is RESOURCE_EXHAUSTED."""
MAX_LINK_OVERRIDES = 64
"""SetLink targets a worker keeps; more is refused until some are cleared."""
MAX_EPOCHS = 16
"""Plan epochs a worker keeps installed; installing another drops the oldest."""
MAX_STAGE = 1024
"""Stage index within a plan."""
MAX_EPOCH = 2**62
"""A plan epoch number (uint64 on the wire; kept clear of the top for arithmetic)."""
ECHO_CHARS = 40
"""Characters of a caller's string repeated in an error message."""
MAX_LINK_STREAMS = 4
"""Link streams (micro-batches from previous hops and the coordinator) a worker keeps open; a
newer one ends the oldest (each holds a handler thread for its whole life)."""
MAX_CONCURRENT_PROBES = 2
"""ProbeLink calls running at once; a third is RESOURCE_EXHAUSTED (each may hold a handler
thread for its caller's whole deadline)."""


def echo(text: str | bytes, limit: int = ECHO_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of a caller's string, marked when cut."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def check_float(what: str, value: float, low: float, high: float) -> float:
    """``value`` if it is finite and in ``[low, high]``; else INVALID_ARGUMENT naming the
    range."""
    if not (math.isfinite(value) and low <= value <= high):
        raise Refused(
            INVALID, f"{what} must be a finite number in [{low:g}, {high:g}], got {value}"
        )
    return value


def check_int(what: str, value: int, low: int, high: int) -> int:
    """``value`` if it is in ``[low, high]``; else INVALID_ARGUMENT naming the range."""
    if not low <= value <= high:
        raise Refused(INVALID, f"{what} must be in [{low}, {high}], got {value}")
    return value


def check_text(what: str, value: str, max_chars: int, required: bool = False) -> str:
    """``value`` if it has at most ``max_chars`` characters (and is non-empty when
    ``required``)."""
    if required and not value:
        raise Refused(INVALID, f"{what} is required")
    if len(value) > max_chars:
        raise Refused(
            INVALID, f"{what} must have at most {max_chars} characters, got {echo(value)}"
        )
    return value


def check_address(what: str, value: str, allow_coordinator: bool = False) -> str:
    """A ``host:port`` a caller names (or "coordinator" where allowed)."""
    check_text(what, value, MAX_ADDRESS_CHARS, required=True)
    if allow_coordinator and value == "coordinator":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        expected = 'HOST:PORT or "coordinator"' if allow_coordinator else "HOST:PORT"
        raise Refused(INVALID, f"{what} must be {expected} (port 1-65535), got {echo(value)}")
    return value


def check_link(latency_ms: float | None, bandwidth_mbps: float | None) -> None:
    """An emulated link's latency and bandwidth (None: not given)."""
    if latency_ms is not None:
        check_float("latency_ms", latency_ms, 0.0, MAX_LATENCY_MS)
    if bandwidth_mbps is not None:
        check_float("bandwidth_mbps", bandwidth_mbps, MIN_BANDWIDTH_MBPS, MAX_BANDWIDTH_MBPS)
