"""Names that several layers agree on."""

from edgesplit.errors import ConfigError

COORDINATOR = "coordinator"
"""The coordinator's name in plans, links and hop records: the first stage's upload comes from it,
the last stage's results go to it. Reserved: no device may take it."""

WIRE_FORMATS = ("fp32", "fp16", "int8")
"""Activation formats between stages (:mod:`edgesplit.runtime.wire` encodes them)."""
DEFAULT_WIRE = "fp32"


def check_wire(wire: str) -> str:
    """``wire`` if it names a format, else a :class:`ConfigError` listing the formats."""
    if wire not in WIRE_FORMATS:
        raise ConfigError(f"wire format must be one of {', '.join(WIRE_FORMATS)}, got {wire!r}")
    return wire
