"""The public API (issue #26): its surface, its docstrings, and the parts that need no cluster."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edgesplit
from edgesplit.errors import ConfigError
from tests.test_simulate import toy_profile

PUBLIC = {
    "Cluster",
    "EdgesplitError",
    "EmulatedCluster",
    "Plan",
    "Profile",
    "RunPlots",
    "RunResult",
    "RunSummary",
    "Simulation",
    "Split",
    "__version__",
    "plan",
    "profile",
    "run",
    "serve",
    "simulate",
    "split",
    "sweep",
}
ROOT = Path(__file__).resolve().parents[1]


def test_the_public_surface_is_exactly_the_documented_one() -> None:
    assert set(edgesplit.__all__) == PUBLIC
    api_md = (ROOT / "docs" / "API.md").read_text()
    for name in PUBLIC - {"__version__"}:
        assert f"`edgesplit.{name}" in api_md, f"docs/API.md does not list edgesplit.{name}"
    for name in PUBLIC:
        assert getattr(edgesplit, name) is not None


def _public_members() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name in sorted(PUBLIC - {"__version__"}):
        obj = getattr(edgesplit, name)
        out.append((name, obj))
        if inspect.isclass(obj) and obj.__module__.startswith("edgesplit._"):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                target = member.fget if isinstance(member, property) else member
                if isinstance(target, (classmethod, staticmethod)):
                    target = target.__func__
                if inspect.isfunction(target):
                    out.append((f"{name}.{attr}", target))
    return out


def _has_example(obj: object) -> bool:
    doc = inspect.getdoc(obj) or ""
    return "Example::" in doc and ">>>" in doc


def test_every_public_function_and_class_has_a_docstring_with_an_example() -> None:
    lacking = [
        n for n in sorted(PUBLIC - {"__version__"}) if not _has_example(getattr(edgesplit, n))
    ]
    assert not lacking, f"public names without a docstring example: {lacking}"


def test_public_methods_have_docstrings_and_callables_have_examples() -> None:
    members = [(n, o) for n, o in _public_members() if "." in n]
    assert len(members) > 20  # the walk found the methods
    no_doc = [n for n, o in members if not inspect.getdoc(o)]
    assert not no_doc, no_doc
    # Methods that do something (not plain attribute-like properties) show how.
    verbs = ("load", "save", "from_file", "start", "timeline", "devices", "stages", "row")
    no_example = [n for n, o in members if n.split(".")[1] in verbs and not _has_example(o)]
    assert not no_example, no_example


def test_import_edgesplit_stays_light() -> None:
    """A worker imports the package: the API's names (and torch, pandas) load on first use."""
    code = (
        "import sys, edgesplit; heavy = [m for m in ('torch', 'pandas', 'edgesplit.app.api') "
        "if m in sys.modules]; print(heavy); edgesplit.RunResult; "
        "print('edgesplit.app.results' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["[]", "True"]


def test_simulate_stays_the_function_after_the_package_is_imported() -> None:
    import edgesplit.simulate.engine  # sets the parent package attribute

    assert callable(edgesplit.simulate)
    assert inspect.isfunction(edgesplit.simulate)
    from edgesplit.simulate import SimConfig  # the package still imports by its full name

    assert SimConfig().images == 2000
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        edgesplit.nothing  # type: ignore[attr-defined]  # noqa: B018


def test_split_gives_units_and_stages_that_reproduce_the_model() -> None:
    s = edgesplit.split("mobilenet_v2", input_size=32, partition="0-5,5-", check=True)
    assert s.max_abs_diff == 0.0
    assert s.partition == f"0-5,5-{s.num_units}"
    units = s.units
    assert list(units["unit"]) == list(range(s.num_units))
    assert {"params", "macs", "out_bytes"} <= set(units.columns)
    x = torch.randn(2, 3, 32, 32)
    for stage in s.stages():
        x = stage(x)
    assert x.shape == (2, 10)
    with pytest.raises(ConfigError, match="needs a partition"):
        edgesplit.split("mobilenet_v2", input_size=32).stages()
    with pytest.raises(edgesplit.EdgesplitError):
        edgesplit.split("mobilenet_v2", input_size=32, partition="0-999")


def test_plan_and_simulate_work_on_a_profile(tmp_path: Path) -> None:
    raw = toy_profile(["a", "b", "c"], [4.0] * 12, speeds={"c": 2.0})
    prof = edgesplit.Profile(raw)
    path = prof.save(tmp_path / "profile.json")
    prof = edgesplit.Profile.load(path)
    assert list(prof.devices["name"]) == ["a", "b", "c"]
    assert (
        prof.devices.set_index("name")["model_ms"]["c"]
        > prof.devices.set_index("name")["model_ms"]["a"]
    )
    p = edgesplit.plan(prof, objective="throughput")
    assert p.objective == "throughput"
    assert p.partition.endswith("-12") and len(p.devices) == len(p.stages)
    assert p.throughput_ips > 0 and "throughput" in str(p).lower()
    sim = edgesplit.simulate(prof, p, images=400)
    assert sim.stages == tuple(p._plan.assignment())
    assert sim.images == 400 and sim.throughput_ips > 0
    assert set(sim.devices["name"]) == {"a", "b", "c"}
    assert json.dumps(sim.to_dict())
    fixed = edgesplit.simulate(prof, "0-6,6-", images=400)
    assert fixed.stages == (("a", 0, 6), ("b", 6, 12))
    synthetic = edgesplit.simulate(prof, devices="4xa", images=400)
    assert {d for d, _, _ in synthetic.stages} <= {"a_1", "a_2", "a_3", "a_4"}
    with pytest.raises(edgesplit.EdgesplitError, match="objective"):
        edgesplit.plan(prof, objective="speed")


def test_a_plan_runs_on_its_own_devices_in_its_order() -> None:
    from edgesplit.app.api import _ordered_for
    from edgesplit.config import ClusterSpec

    spec = ClusterSpec.model_validate(
        {"devices": [{"name": n, "address": f"127.0.0.1:{5000 + i}"} for i, n in
                     enumerate(["a", "b", "c"])]}
    )  # fmt: skip
    prof = edgesplit.Profile(toy_profile(["a", "b", "c"], [4.0] * 12, speeds={"a": 3.0}))
    p = edgesplit.plan(prof, objective="throughput")
    ordered = _ordered_for(p, spec)
    assert [d.name for d in ordered.devices][: len(p.devices)] == list(p.devices)
    assert sorted(d.name for d in ordered.devices) == ["a", "b", "c"]
    other = ClusterSpec.model_validate({"devices": [{"name": "x", "address": "127.0.0.1:1"}]})
    with pytest.raises(ConfigError, match="lacks"):
        _ordered_for(p, other)


def test_a_cluster_that_is_not_running_says_so() -> None:
    cluster = edgesplit.EmulatedCluster(cpus=[1, 0.5])
    assert "not running" in repr(cluster)
    with pytest.raises(ConfigError, match="not running"):
        _ = cluster.devices
    with pytest.raises(ConfigError, match="not running"):
        _ = cluster.pids
    cluster.close()  # closing what never started is fine
    with pytest.raises(ConfigError, match="CPU share"):
        edgesplit.EmulatedCluster(cpus=[1, 0])
    with pytest.raises(ConfigError, match="at least one"):
        edgesplit.EmulatedCluster(cpus=[])


def test_a_cluster_file_is_a_cluster(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("devices:\n  - {name: pi1, address: '127.0.0.1:5001'}\n")
    with edgesplit.Cluster.from_file(path) as cluster:
        assert cluster.devices == ("pi1",)
    with pytest.raises(edgesplit.EdgesplitError):
        edgesplit.Cluster.from_file(tmp_path / "missing.yaml")


def test_loading_what_is_no_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no summary\.json"):
        edgesplit.RunResult.load(tmp_path)
    (tmp_path / "summary.json").write_text('{"model": "x"}')
    with pytest.raises(ConfigError, match="lacks"):
        edgesplit.RunResult.load(tmp_path)
    (tmp_path / "summary.json").write_text("{trunc")
    with pytest.raises(ConfigError, match="unreadable"):
        edgesplit.RunResult.load(tmp_path)


def test_a_sweeps_objectives_multiply_only_the_auto_partitions() -> None:
    from edgesplit.app.api import grid

    cells = grid(["m"], ["0-5,5-", "auto"], ["throughput", "energy"], [8, 16])
    assert cells == [
        ("m", "0-5,5-", "throughput", 8),
        ("m", "0-5,5-", "throughput", 16),
        ("m", "auto", "throughput", 8),
        ("m", "auto", "energy", 8),
        ("m", "auto", "throughput", 16),
        ("m", "auto", "energy", 16),
    ]
    assert len(grid(["a", "b"], ["equal"], ["latency"], [4])) == 2


def test_a_sweep_refuses_an_empty_grid_before_anything_runs() -> None:
    cluster = edgesplit.EmulatedCluster(cpus=[1])
    with pytest.raises(ConfigError, match="empty"):
        edgesplit.sweep(cluster, partitions=[])
    with pytest.raises(ConfigError, match="partitions="):
        edgesplit.sweep(cluster, partition="auto")
    assert cluster.worker_starts == 0


STRICT = """\
[mypy]
strict = True
follow_imports = silent
cache_dir = {cache}

[mypy-torch.*,torchvision.*,onnx.*,onnxruntime.*,onnxscript.*,grpc.*,google.protobuf.*,numpy.*]
follow_imports = skip
"""
"""Strict on the script; edgesplit's own modules are read (silently: their errors are make
lint's), the heavy libraries behind them are skipped so the check takes seconds, not a minute."""


def _strict_mypy(script: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mypy.ini"
    config.write_text(STRICT.format(cache=tmp_path / "mypy-cache"))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_mypy_strict_passes_on_a_script_that_uses_only_the_public_api(tmp_path: Path) -> None:
    script = ROOT / "tests" / "api_script.py"
    assert "edgesplit._" not in script.read_text()  # only the public API
    result = _strict_mypy(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check sees the API's types: a misuse of them fails it.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import edgesplit\n\n"
        "speed: str = edgesplit.RunResult.load('runs/a').throughput_ips\n"
        "edgesplit.simulate(edgesplit.Plan)\n"
    )
    result = _strict_mypy(bad, tmp_path)
    assert result.returncode == 1
    assert 'has type "float | None", variable has type "str"' in result.stdout
    assert 'Argument 1 to "simulate" has incompatible type' in result.stdout
