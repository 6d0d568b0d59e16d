"""Partition strings: a model's units cut into stages.

``"0-7,7-15,15-"`` means three stages with the half-open unit ranges ``[0, 7)``, ``[7, 15)`` and
``[15, n)``: the last end may be left open and then means "to the last unit". Stages must start at
0, follow each other without gaps or overlaps, be non-empty and end at the number of units.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgesplit.errors import PartitionError

Ranges = tuple[tuple[int, int], ...]

_FORM = 'expected comma-separated half-open unit ranges like "0-7,7-15,15-"'


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
        raise PartitionError(
            f"partition {text!r} names the device of some stages only; name every stage's "
            'device ("pi2:0-12,pi1:12-") or none ("0-12,12-")'
        )
    pairs = [p.split(":", 1) for p in pieces]
    devices = [d.strip() for d, _ in pairs]
    twice = sorted({d for d in devices if devices.count(d) > 1})
    if twice:
        raise PartitionError(f"partition {text!r} gives {', '.join(twice)} two stages; one each")
    return ",".join(r.strip() for _, r in pairs), devices


def parse_partition(text: str, num_units: int) -> Ranges:
    """Parse and validate ``text`` against a model of ``num_units`` units."""
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
    """The partition string of ``ranges`` (closed ends, so it is exact for any model)."""
    return ",".join(f"{start}-{end}" for start, end in ranges)


def balanced_ranges(
    costs: Sequence[float], stages: int, cut_costs: Sequence[float] | None = None
) -> Ranges:
    """Split units with the given costs into ``stages`` contiguous ranges minimising the largest
    stage cost (exact dynamic program, O(stages * units^2); fine for hundreds of units).

    ``cut_costs[i]``, when given, is added to a stage that ends after unit ``i`` and hands its
    output on (the transfer of that tensor); the last stage pays none."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise PartitionError(f"cannot cut {n} units into {stages} non-empty stages")
    cut = list(cut_costs) if cut_costs is not None else [0.0] * n
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][j]: smallest bottleneck splitting units [0, j) into k stages; last[k][j]: the start
    # of the k-th stage in that split.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    last = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, n + 1):
            handoff = cut[j - 1] if j < n else 0.0
            for i in range(k - 1, j):
                value = max(best[k - 1][i], prefix[j] - prefix[i] + handoff)
                if value < best[k][j]:
                    best[k][j], last[k][j] = value, i
    ranges: list[tuple[int, int]] = []
    end = n
    for k in range(stages, 0, -1):
        start = last[k][end]
        ranges.append((start, end))
        end = start
    return tuple(reversed(ranges))
