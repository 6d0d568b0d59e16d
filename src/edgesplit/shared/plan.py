"""A plan: which device runs which units, and its text form (issue #16).

A plan is a tuple of :class:`Stage` (:data:`Stages`): stage ``i`` runs the half-open unit range
``[start, end)`` on ``device``, the stages in pipeline order. Its text form is what
``--partition`` takes and what every printed plan shows, ``"pi2:0-12,pi1:12-33"``
(:func:`plan_text`); :func:`parse_plan` reads it back, so a printed plan can be given back
verbatim. The same parser reads the unnamed form, ``"0-7,7-15,15-"``: half-open unit ranges whose
devices come from elsewhere (the cluster's order), the last end may be left open and then means
"to the last unit". Stages must start at 0, follow each other without gaps or overlaps, be
non-empty and end at the number of units; every message says what was expected.

Pure and light (no torch, no grpc): every layer uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from edgesplit.errors import PartitionError

Ranges = tuple[tuple[int, int], ...]
"""A partition without devices: ``(start, end)`` per stage."""

_FORM = 'expected comma-separated half-open unit ranges like "0-7,7-15,15-"'
_NAMED = 'name every stage\'s device ("pi2:0-12,pi1:12-") or none ("0-12,12-")'


class Stage(NamedTuple):
    """One stage of a plan: ``device`` runs units ``[start, end)``. A tuple, so
    ``device, start, end = stage`` and comparison with a plain triple work."""

    device: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.device}:{self.start}-{self.end}"

    @property
    def units(self) -> int:
        """How many units the stage runs."""
        return self.end - self.start


Stages = tuple[Stage, ...]
"""A plan: its stages in pipeline order."""


def as_plan(stages: Iterable[tuple[str, int, int]]) -> Stages:
    """``(device, start, end)`` triples (or stages) as a plan, unchecked."""
    return tuple(Stage(device, start, end) for device, start, end in stages)


def plan_text(stages: Iterable[tuple[str, int, int]]) -> str:
    """``"pi2:0-12,pi1:12-33"``: every stage with its device and closed ends, so
    :func:`parse_plan` gives the same plan back for any model."""
    return ",".join(str(Stage(*s)) for s in stages)


def parse_plan(text: str, num_units: int, devices: Sequence[str] | None = None) -> Stages:
    """The plan ``text`` gives a model of ``num_units`` units: ``"pi2:0-12,pi1:12-"`` names each
    stage's device (each one of ``devices`` when they are given); ``"0-12,12-"`` takes the first
    of ``devices`` in order, which it then needs."""
    ranges_text, named = split_devices(text)
    ranges = parse_partition(ranges_text, num_units)
    if named is not None:
        unknown = [d for d in named if devices is not None and d not in devices]
        if unknown:
            raise PartitionError(
                f"partition {text!r} names {', '.join(unknown)}; the devices are "
                f"{', '.join(devices or ())}"
            )
        return tuple(Stage(d, a, b) for d, (a, b) in zip(named, ranges, strict=True))
    if devices is None:
        raise PartitionError(
            f"partition {text!r} names no device and no devices were given; name each stage's "
            'device, e.g. "pi2:0-12,pi1:12-"'
        )
    if len(ranges) > len(devices):
        raise PartitionError(
            f"partition {text!r} has {len(ranges)} stages but there are {len(devices)} devices "
            f"({', '.join(devices)}); expected at most {len(devices)} stages"
        )
    return tuple(Stage(d, a, b) for d, (a, b) in zip(devices, ranges, strict=False))


def _parse_int(text: str, piece: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise PartitionError(f"stage {piece!r}: {text!r} is not a non-negative unit index; {_FORM}")
    return int(text)


def split_devices(text: str) -> tuple[str, list[str] | None]:
    """``"pi2:0-12,pi1:12-"`` -> ``("0-12,12-", ["pi2", "pi1"])``: a partition may name the
    device of each stage (a plan's own order, which need not be the cluster's; issue #20).
    Without names: ``(text, None)``."""
    pieces = [p.strip() for p in text.split(",")]
    named = [":" in p for p in pieces]
    if not any(named):
        return text, None
    if not all(named):
        raise PartitionError(f"partition {text!r} names the device of some stages only; {_NAMED}")
    pairs = [p.split(":", 1) for p in pieces]
    devices = [d.strip() for d, _ in pairs]
    if "" in devices:
        raise PartitionError(
            f"partition {text!r}: stage {devices.index('')} has an empty device name; {_NAMED}"
        )
    twice = sorted({d for d in devices if devices.count(d) > 1})
    if twice:
        raise PartitionError(f"partition {text!r} gives {', '.join(twice)} two stages; one each")
    return ",".join(r.strip() for _, r in pairs), devices


def parse_partition(text: str, num_units: int) -> Ranges:
    """Parse and validate the unnamed form ``text`` against a model of ``num_units`` units."""
    if not text.strip():
        raise PartitionError(f"empty partition; {_FORM}")
    pieces = [p.strip() for p in text.split(",")]
    ranges: list[tuple[int, int]] = []
    for i, piece in enumerate(pieces):
        start_text, sep, end_text = piece.partition("-")
        if not sep:
            raise PartitionError(f"stage {i} is {piece!r}, not START-END; {_FORM}")
        start = _parse_int(start_text, piece)
        if end_text.strip():
            end = _parse_int(end_text, piece)
        elif i == len(pieces) - 1:
            end = num_units
        else:
            raise PartitionError(
                f"stage {i} ({piece!r}) has no end; only the last stage may leave its end open"
            )
        ranges.append((start, end))
    validate_ranges(ranges, num_units)
    return tuple(ranges)


def validate_ranges(ranges: Sequence[tuple[int, int]], num_units: int) -> None:
    """Check that ``ranges`` cover ``[0, num_units)`` in order, without gaps, overlaps or
    empty stages."""
    if not ranges:
        raise PartitionError("a partition needs at least one stage")
    expected_start = 0
    for i, (start, end) in enumerate(ranges):
        if i == 0 and start != 0:
            raise PartitionError(f"the first stage starts at unit {start}; it must start at 0")
        if start != expected_start:
            kind = "a gap" if start > expected_start else "an overlap"
            raise PartitionError(
                f"stage {i} starts at unit {start} but the previous stage ended at "
                f"{expected_start} ({kind}); stage {i} must start at {expected_start}"
            )
        if end <= start:
            raise PartitionError(
                f"stage {i} is {start}-{end}, which is empty; expected an end greater than {start}"
            )
        if end > num_units:
            raise PartitionError(
                f"stage {i} ends at unit {end}, past the model's {num_units} units "
                f"(valid unit indices are 0..{num_units - 1}, the last end is at most {num_units})"
            )
        expected_start = end
    if expected_start != num_units:
        raise PartitionError(
            f"the last stage ends at unit {expected_start} but the model has {num_units} units; "
            f'end the last stage at {num_units} or leave its end open ("{ranges[-1][0]}-")'
        )


def format_partition(ranges: Sequence[tuple[int, int]]) -> str:
    """The unnamed partition string of ``ranges`` (closed ends, so it is exact for any model)."""
    return ",".join(f"{start}-{end}" for start, end in ranges)
