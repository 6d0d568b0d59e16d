"""scripts/check_layering.py on small synthetic package trees, and on the real one."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_layering.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layering", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layering"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


layering = _load()


def tree(root: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``root`` with ``files`` (relative path -> source)."""
    package = root / "pkg"
    for rel, source in {"__init__.py": "", "errors.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return package


def findings(package: Path, layers: tuple[tuple[str, ...], ...]) -> list[str]:
    modules = layering.load(package)
    edges = layering.imports(modules)
    cycles, _ = layering.check_cycles(modules, edges)
    return [
        *cycles,
        *layering.check_layers(modules, edges, layers),
        *layering.check_exceptions(modules),
    ]


LAYERS = (("errors",), ("low",), ("high",), ("__init__",))


def test_a_clean_tree_has_no_findings(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "from pkg.errors import Bad\n",
            "high/__init__.py": "",
            "high/b.py": "from pkg.low import a\nfrom pkg.low.a import Bad\n",
        },
    )
    (package / "errors.py").write_text("class Bad(Exception):\n    pass\n")
    assert findings(package, LAYERS) == []


def test_a_module_cycle_is_found_with_its_lines(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "from pkg.low import b\n",
            "low/b.py": "def f():\n    from pkg.low.a import x\n",
        },
    )
    [finding] = findings(package, LAYERS)
    assert "import cycle among 2 modules: pkg.low.a, pkg.low.b" in finding
    assert "pkg.low.a -> pkg.low.b (line 1)" in finding
    assert "pkg.low.b -> pkg.low.a (line 2, lazy)" in finding


def test_a_type_checking_import_closes_a_cycle_too(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "from pkg.low.b import B\n",
            "low/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.low.a import A\n"
                "class B: ...\n"
            ),
        },
    )
    [finding] = findings(package, LAYERS)
    assert "pkg.low.b -> pkg.low.a (line 3, type-checking)" in finding


def test_a_relative_import_counts(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {"low/__init__.py": "", "low/a.py": "from . import b\n", "low/b.py": "from .a import x\n"},
    )
    [finding] = findings(package, LAYERS)
    assert "pkg.low.a, pkg.low.b" in finding


def test_a_back_edge_between_packages_is_found(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from pkg.high import b\n",
            "high/__init__.py": "",
            "high/b.py": "",
        },
    )
    [finding] = findings(package, LAYERS)
    assert "back edge low -> high: layer 1 imports layer 2" in finding
    assert "pkg.low.a -> pkg.high.b (line 2, lazy)" in finding


def test_a_part_without_a_layer_is_a_finding(tmp_path: Path) -> None:
    package = tree(tmp_path, {"newpart.py": ""})
    assert findings(package, LAYERS) == [
        "'newpart' has no layer: add it to LAYERS in scripts/check_layering.py"
    ]


def test_the_light_parts_import_no_heavy_library_at_run_time(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "shared/__init__.py": "",
            "shared/ok.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
            ),
            "shared/bad.py": "def f():\n    import grpc.aio\n",
        },
    )
    modules = layering.load(package)
    assert layering.check_light(modules) == [
        f"shared must stay light, but imports grpc.aio\n    {package / 'shared' / 'bad.py'}:2"
    ]


def test_exceptions_live_in_errors_and_are_precise(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": textwrap.dedent(
                """\
                from pkg.errors import EdgesplitError

                class Oops(EdgesplitError):
                    pass

                class Other(RuntimeError):
                    pass

                def f():
                    raise EdgesplitError("vague")

                def g():
                    raise ValueError("bare")

                class Model:
                    @field_validator("x")
                    def check(cls, v):
                        raise ValueError("pydantic wants this")
                """
            ),
        },
    )
    (package / "errors.py").write_text("class EdgesplitError(Exception):\n    pass\n")
    text = "\n".join(findings(package, LAYERS))
    assert "exception class Oops defined outside errors.py" in text
    assert "exception class Other defined outside errors.py" in text
    assert "raise of the base class EdgesplitError" in text
    assert text.count("bare ValueError") == 1  # the validator's is allowed


def _runtime_cycle(root: Path, members: list[str]) -> tuple[list[str], list[str]]:
    """A package ``edgesplit`` whose runtime modules ``members`` import each other in a ring."""
    package = root / "edgesplit"
    (package / "runtime").mkdir(parents=True)
    for rel in ("__init__.py", "errors.py", "runtime/__init__.py"):
        (package / rel).write_text("")
    for name, following in zip(members, [*members[1:], members[0]], strict=True):
        (package / "runtime" / f"{name}.py").write_text(
            f"from edgesplit.runtime import {following}\n"
        )
    modules = layering.load(package)
    cycles: list[str]
    notes: list[str]
    cycles, notes = layering.check_cycles(modules, layering.imports(modules))
    return cycles, notes


def test_the_allow_list_tolerates_exactly_its_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = ["coordinator", "heartbeat", "runner"]
    allowed = frozenset(f"edgesplit.runtime.{m}" for m in members)
    monkeypatch.setattr(layering, "ALLOWED_CYCLES", (allowed,))
    cycles, notes = _runtime_cycle(tmp_path / "exact", members)
    assert cycles == [] and len(notes) == 1
    cycles, notes = _runtime_cycle(tmp_path / "larger", [*members, "links"])
    assert len(cycles) == 1 and notes == []


def test_nothing_is_allow_listed_today() -> None:
    """The runtime cycle the list once carried is gone (the request book and RunPort)."""
    assert layering.ALLOWED_CYCLES == ()


@pytest.mark.parametrize("argument", [[], [str(SCRIPT.parents[1] / "src" / "edgesplit")]])
def test_the_real_package_is_clean(argument: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert layering.main(argument) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.strip().endswith("clean")


def test_a_directory_that_is_no_package_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert layering.main([str(tmp_path)]) == 2
    assert "expected a package directory with __init__.py" in capsys.readouterr().out


def test_a_long_function_is_a_finding(tmp_path: Path) -> None:
    package = tmp_path / "edgesplit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    short = "def short():\n" + "    x = 1\n" * (layering.MAX_FUNCTION_LINES - 1)
    long = "def long():\n" + "    x = 1\n" * layering.MAX_FUNCTION_LINES
    (package / "config.py").write_text(short + "\n\n" + long)
    findings, _ = layering.check(package)
    assert len(findings) == 1
    assert f"long is {layering.MAX_FUNCTION_LINES + 1} lines" in findings[0]
