"""What users install agrees with the project: requirements.txt (for ``pip install -r``) says
what pyproject.toml's dependencies say, and deploy/ runs the worker with options it has."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

from edgesplit.cli import main

ROOT = Path(__file__).resolve().parents[2]
EDGESPLIT = str(Path(sys.executable).with_name("edgesplit"))

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    tomllib = pytest.importorskip("tomli")


def _key(requirement: Requirement) -> tuple[str, str, str, str]:
    name = requirement.name.lower().replace("_", "-")
    extras = ",".join(sorted(requirement.extras))
    return name, extras, str(requirement.specifier), str(requirement.marker or "")


def pyproject_requirements() -> dict[str, tuple[str, str, str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {k[0]: k for k in map(_key, map(Requirement, project["dependencies"]))}


def requirements_txt() -> dict[str, tuple[str, str, str, str]]:
    found: dict[str, tuple[str, str, str, str]] = {}
    for number, raw in enumerate((ROOT / "requirements.txt").read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"requirements.txt:{number}: options belong in docs"
        key = _key(Requirement(line))
        assert key[0] not in found, f"requirements.txt:{number}: {key[0]} listed twice"
        found[key[0]] = key
    return found


def test_requirements_txt_matches_pyproject() -> None:
    ours, theirs = requirements_txt(), pyproject_requirements()
    assert sorted(ours) == sorted(theirs), "same package names"
    for name, key in theirs.items():
        assert ours[name] == key, (
            f"{name}: pyproject.toml {key[2]!r}, requirements.txt {ours[name][2]!r}"
        )


# --- deploy/: the systemd unit and its installer agree with the worker command ----------------

UNIT = ROOT / "deploy" / "systemd" / "edgesplit-worker.service"
INSTALL = ROOT / "deploy" / "install-worker.sh"


def unit_entries() -> dict[str, list[tuple[str, str]]]:
    """Every (key, value) per section, repeats kept (systemd allows them; configparser keeps the
    last), after checking that configparser reads the file as INI."""
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    entries: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            entries[section] = []
        elif line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries[section].append((key, value))
    return entries


def test_unit_has_the_needed_keys() -> None:
    entries = unit_entries()
    service = dict(entries["Service"])
    for key, value in {
        "User": "edgesplit",
        "Restart": "on-failure",
        "StandardOutput": "journal",
        "StandardError": "journal",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
    }.items():
        assert service.get(key) == value, f"[Service] {key}={service.get(key)!r}"
    assert dict(entries["Install"])["WantedBy"] == "multi-user.target"
    assert "network-online.target" in dict(entries["Unit"])["After"]


def test_unit_exec_start_uses_real_worker_options() -> None:
    exec_start = shlex.split(dict(unit_entries()["Service"])["ExecStart"])
    assert exec_start[0].endswith("/bin/edgesplit") and exec_start[1] == "worker"
    help_text = CliRunner().invoke(main, ["worker", "--help"]).output
    known = set(re.findall(r"(--[a-z][a-z-]*)", help_text))
    used = [arg for arg in exec_start if arg.startswith("--")]
    assert used and set(used) <= known, f"not options of edgesplit worker: {set(used) - known}"
    paths = {arg: exec_start[i + 1] for i, arg in enumerate(exec_start) if arg in used}
    for option in ("--token-file", "--tls-cert", "--tls-key", "--tls-ca"):
        assert paths[option].startswith("/etc/edgesplit/"), option


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists, so point it at this venv's edgesplit.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/edgesplit/venv/bin/edgesplit", EDGESPLIT))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_install_script_dry_run_changes_nothing() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)
    done = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(dry run)" in done.stdout and "edgesplit-worker" in done.stdout
    bad = subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
