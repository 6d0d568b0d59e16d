"""Shared test fixtures. Tests run with a fixed torch thread count so that "bit-identical" means
the same kernels in the same order.

Tests live in three folders, one per tier (scripts/test-tiers.sh runs them in this order):

* ``tests/unit/`` — pure: no worker processes, no sockets. A ``slow`` test here is an error.
* ``tests/inprocess/`` — real gRPC on loopback in this process, the CLI as a subprocess, short
  emulated runs; a file here may carry ``@pytest.mark.slow`` on its multi-process tests.
* ``tests/cluster/`` — multi-process emulated clusters: every test here is ``slow`` by folder.

A test file directly in ``tests/`` fails the session: put it in the folder of its tier."""

from __future__ import annotations

import functools
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from edgesplit.errors import EdgesplitError
from edgesplit.metrics import manifest, resultlog
from edgesplit.model import graph, models
from edgesplit.shared import runsummary

torch.set_num_threads(1)

# A shell that starts a job in the background sets SIGINT to "ignored", and children inherit an
# ignored signal across exec: then a Python child never raises KeyboardInterrupt, and the tests
# that press Ctrl-C on `edgesplit run`/`emulate` would test nothing. Children inherit a *handled*
# SIGINT as the default action, as under an interactive terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)


TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "inprocess", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    loose = sorted(p.name for p in TESTS.glob("test_*.py"))
    if loose:
        raise pytest.UsageError(
            f"test files directly in tests/: {', '.join(loose)}; expected each in one of "
            f"tests/{{{','.join(TIERS)}}}/ (see tests/conftest.py)"
        )


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in tests/cluster/ is slow; none in tests/unit/ may be."""
    misplaced = []
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if folder == "cluster":
            item.add_marker(pytest.mark.slow)
        elif folder == "unit" and item.get_closest_marker("slow") is not None:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "slow tests in tests/unit/ (expected none: unit tests start no processes): "
            + ", ".join(misplaced)
        )


@pytest.fixture(scope="session", autouse=True)
def every_run_folder_has_a_full_manifest(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """After the session: every run folder the tests wrote (those with a result log, which only
    ``edgesplit run`` writes) has a manifest with every field filled (issue #25)."""
    yield
    missing = []
    for log in tmp_path_factory.getbasetemp().rglob(resultlog.FILE):
        try:
            made = manifest.read(log.parent)
        except EdgesplitError as exc:
            missing.append(str(exc))
            continue
        empty = [key for key in manifest.FIELDS if made.get(key) in (None, "", [], {})]
        empty += [f"libraries.{k}" for k, v in made.get("libraries", {}).items() if not v]
        empty += [f"devices.{name}.{k}" for name, d in made.get("devices", {}).items()
                  for k in ("cpu_model", "cpu_kind", "cores") if not d.get(k)]  # fmt: skip
        empty += [f"coordinator.{k}" for k, v in made.get("coordinator", {}).items() if not v]
        if empty:
            missing.append(f"{log.parent}: {', '.join(empty)}")
    assert not missing, "run folders without a full manifest:\n" + "\n".join(missing)


@pytest.fixture(scope="session", autouse=True)
def every_summary_matches_the_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the session: every ``summary.json`` the tests wrote validates against the committed
    docs/summary.schema.json and reads back into :class:`RunSummary` as written (issue #16)."""
    yield
    import json
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).parents[1] / "docs" / "summary.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    bad = []
    for path in tmp_path_factory.getbasetemp().rglob(runsummary.FILE):
        text = path.read_text()
        try:
            written = json.loads(text)
        except ValueError:
            continue  # a test that truncates a summary on purpose
        if not isinstance(written, dict) or "throughput_ips" not in written:
            continue  # a test's deliberately broken file, not a run's
        errors = [
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(written)
        ]
        if not errors and json.loads(runsummary.parse(text, str(path)).to_json()) != written:
            errors.append("does not read back as written")
        if errors:
            bad.append(f"{path}: {'; '.join(errors[:3])}")
    assert not bad, "summary.json files that do not match docs/summary.schema.json:\n" + "\n".join(
        bad
    )


@pytest.fixture(scope="session", autouse=True)
def no_emulated_hosts_left() -> Iterator[None]:
    """After the session: no network namespace, veth or bridge of an emulated-hosts cluster
    (issue #24) that this session built or whose builder is gone; their qdiscs go with them."""
    import os

    from edgesplit.cluster.emulate_hosts import leftovers, stale

    yield
    mine = f"es{os.getpid()}x"
    left = sorted({*stale(), *(i for i in leftovers() if i.split(" ", 1)[1].startswith(mine))})
    assert not left, "emulated hosts left behind: " + ", ".join(left)


@functools.cache
def traced(name: str, input_size: int = 224) -> tuple[torch.nn.Module, graph.UnitGraph]:
    """A zoo model with seeded random weights and its UnitGraph, cached across tests."""
    torch.manual_seed(0)
    model = models.build(name, num_classes=10)
    return model, graph.trace(model, (3, input_size, input_size))


@pytest.fixture(scope="session")
def zoo_names() -> list[str]:
    return models.known_models()
