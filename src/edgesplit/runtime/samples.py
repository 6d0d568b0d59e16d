"""Device samples on the wire: a missing sensor travels as an absent field, never as 0."""

from __future__ import annotations

from typing import Any

from edgesplit.runtime.proto import edgesplit_pb2 as pb

REQUIRED = ("t", "cpu_percent", "process_cpu_percent", "memory_percent", "rss_mb")
OPTIONAL = (
    "cpu_freq_mhz",
    "temperature_c",
    "throttled",
    "net_bytes_sent",
    "net_bytes_recv",
    "power_w",
    "power_source",
)


def to_proto(sample: Any) -> pb.DeviceSample:
    """Encode a :class:`edgesplit.runtime.sampler.DeviceSample` (or anything with its fields)."""
    msg = pb.DeviceSample(**{name: getattr(sample, name) for name in REQUIRED})
    for name in OPTIONAL:
        value = getattr(sample, name, None)
        if value is not None:
            setattr(msg, name, value)
    return msg


def to_dict(msg: pb.DeviceSample) -> dict[str, float | int | str | None]:
    """Decode into the same dict :meth:`DeviceSample.to_dict` gives; absent fields are None."""
    out: dict[str, float | int | str | None] = {name: getattr(msg, name) for name in REQUIRED}
    for name in OPTIONAL:
        out[name] = getattr(msg, name) if msg.HasField(name) else None
    return out
