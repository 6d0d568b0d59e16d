"""The pure helpers of scripts/arm/make_root.py (the aarch64 root for `make check-arm`): reading
apt's dependency and control output, the manylinux tags for the root's glibc, and the wheels it
installs agreeing with pyproject.toml. Building the root itself needs root, apt and minutes; it
runs in `make check-arm`, not here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    tomllib = pytest.importorskip("tomli")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_root", ROOT / "scripts/arm/make_root.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_root = _load()

# Debian 12's `apt-cache depends libpython3.11-stdlib:arm64 python3.11-minimal:arm64`.
DEPENDS = """\
libpython3.11-stdlib:arm64
  Depends: libpython3.11-minimal:arm64
 |Depends: <media-types:arm64>
    media-types
  Depends: <mime-support:arm64>
    mime-support
  Depends: libbz2-1.0:arm64
  Depends: libc6:arm64
  Breaks: python3-gdbm:arm64
  Replaces: python3-gdbm:arm64
python3.11-minimal:arm64
  PreDepends: libc6:arm64
  Depends: libpython3.11-minimal:arm64
  Depends: zlib1g:arm64
  Conflicts: binfmt-support:arm64
  Recommends: python3.11:arm64
  Suggests: binfmt-support:arm64
    binfmt-support
"""


def test_dependency_groups_join_alternatives_and_replace_virtuals_by_providers() -> None:
    groups = make_root.dependency_groups(DEPENDS)
    assert groups == {
        "libpython3.11-stdlib": [
            ["libpython3.11-minimal"],
            ["media-types", "mime-support"],
            ["libbz2-1.0"],
            ["libc6"],
        ],
        "python3.11-minimal": [["libc6"], ["libpython3.11-minimal"], ["zlib1g"]],
    }


def test_control_stanzas_keep_the_first_stanza_of_each_package() -> None:
    show = (
        "Package: libc6\nVersion: 2.36-9+deb12u14\nArchitecture: arm64\n"
        "Description: GNU C Library\n continued line: not a field\n\n"
        "Package: dpkg\nEssential: yes\nVersion: 1.21.22\nArchitecture: arm64\n\n"
        "Package: libc6\nVersion: 2.36-9\nArchitecture: arm64\n"
    )
    stanzas = make_root.control_stanzas(show)
    assert stanzas["libc6"]["Version"] == "2.36-9+deb12u14"
    assert stanzas["dpkg"]["Essential"] == "yes"
    assert set(stanzas) == {"libc6", "dpkg"}


def test_glibc_minor_reads_debian_versions_and_refuses_others() -> None:
    assert make_root.glibc_minor("2.36-9+deb12u14") == 36
    assert make_root.glibc_minor("1:2.31-13") == 31
    with pytest.raises(make_root.BuildError, match="cannot read the glibc version"):
        make_root.glibc_minor("garbage")


def test_manylinux_platforms_cover_every_tag_the_glibc_accepts() -> None:
    tags = make_root.manylinux_platforms(28)
    assert tags[0] == "manylinux_2_28_aarch64"
    assert "manylinux_2_27_aarch64" in tags  # onnxruntime 1.17.3's aarch64 wheel
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert len(tags) == 28 - 17 + 2
    with pytest.raises(make_root.BuildError, match="older than any aarch64 manylinux"):
        make_root.manylinux_platforms(12)


def test_deb_filename_encodes_the_epoch_as_apt_get_download_does() -> None:
    assert make_root.deb_filename("libc6", "2.36-9", "arm64") == "libc6_2.36-9_arm64.deb"
    assert make_root.deb_filename("x", "1:2.0-1", "arm64") == "x_1%3a2.0-1_arm64.deb"


def test_root_wheels_ask_for_what_pyproject_asks_for_except_the_emulation_pins() -> None:
    """Only onnxruntime and what it needs (numpy 1.x, onnx < 1.17) are pinned for QEMU (see
    make_root.WHEELS); the rest must not drift from the ranges the package declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    lines = [*project["dependencies"], *(line for extra in extras for line in extra)]
    declared = {}
    for line in lines:
        requirement = Requirement(line)
        declared[requirement.name.lower()] = requirement.specifier
    for line in make_root.WHEELS:
        requirement = Requirement(line)
        if requirement.name in ("onnxruntime", "numpy", "onnx"):
            continue
        assert declared[requirement.name.lower()] == requirement.specifier, requirement.name


def test_root_holds_every_package_a_worker_only_install_pulls() -> None:
    """pyproject.toml's core dependencies are the worker (no torch); the aarch64 root must
    hold each of them, or the emulated worker is not the one a Pi installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(line).name.lower() for line in project["dependencies"]}
    wheels = {Requirement(line).name.lower() for line in make_root.WHEELS}
    assert core - wheels == set()
