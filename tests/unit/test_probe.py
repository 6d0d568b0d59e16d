"""Link probes: the chunks of a probe stream and when the profiler adds its large probe."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from edgesplit.plan.profile import FAST_PROBE_MS, FAST_PROBE_SIZE, ProfileSettings, with_fast_probe
from edgesplit.runtime.links import LinkShape, link_delay_s
from edgesplit.runtime.profiling import PROBE_CHUNK_BYTES, probe_chunks
from edgesplit.runtime.transport import Call

KIB = 1024


@pytest.mark.parametrize("size", [0, 1, PROBE_CHUNK_BYTES, 2 * PROBE_CHUNK_BYTES + 100])
def test_a_probe_goes_as_chunks_that_add_up_to_its_size(size: int) -> None:
    chunks = [len(c.data) for c in probe_chunks(size, LinkShape(), Call(), time.perf_counter())]
    assert sum(chunks) == size
    assert all(0 < n <= PROBE_CHUNK_BYTES for n in chunks)
    assert len(chunks) == -(-size // PROBE_CHUNK_BYTES)


def test_the_last_chunk_leaves_once_the_emulated_link_carried_the_payload() -> None:
    shape = LinkShape(bandwidth_mbps=100.0, latency_ms=5.0)
    size = 4 * PROBE_CHUNK_BYTES
    t0 = time.perf_counter()
    left = []
    for _ in probe_chunks(size, shape, Call(), t0):
        left.append(time.perf_counter() - t0)
    # Lower bounds only: each chunk waits for its own bytes and every byte before it.
    for i, t in enumerate(left):
        assert t >= link_delay_s(shape, (i + 1) * PROBE_CHUNK_BYTES) - 1e-3


def test_a_probe_stream_ends_quietly_when_its_call_ends() -> None:
    call = Call()
    chunks = probe_chunks(4 * PROBE_CHUNK_BYTES, LinkShape(bandwidth_mbps=1.0), call, 0.0)
    call.cancel()
    assert list(chunks) == []


def test_the_large_probe_is_added_only_on_a_fast_link() -> None:
    settings = ProfileSettings(probe_sizes=(KIB, 2048 * KIB))
    asked: list[tuple[int, ...]] = []

    def link(ms_per_mib: float) -> Callable[[tuple[int, ...]], tuple[float, ...]]:
        def probe(sizes: tuple[int, ...]) -> tuple[float, ...]:
            asked.append(sizes)
            return tuple(0.5 + s / 2**20 * ms_per_mib for s in sizes)

        return probe

    sizes, medians = with_fast_probe(settings, link(FAST_PROBE_MS))  # 2 MiB: 40 ms
    assert sizes == (KIB, 2048 * KIB) and len(medians) == 2
    sizes, medians = with_fast_probe(settings, link(1.0))  # 2 MiB: 2.5 ms
    assert sizes == (KIB, 2048 * KIB, FAST_PROBE_SIZE) and len(medians) == 3
    assert asked[-1] == (FAST_PROBE_SIZE,)
    never = ProfileSettings(probe_sizes=(KIB, 2048 * KIB), fast_probe_size=None)
    assert with_fast_probe(never, link(1.0))[0] == (KIB, 2048 * KIB)
