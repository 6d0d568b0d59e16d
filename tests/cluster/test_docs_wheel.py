"""A wheel built with ``pip wheel .`` carries the shipped checkpoints (issue #20): installed into
a fresh venv, ``edgesplit eval --model mobilenet_v2`` finds the shipped checkpoint and reaches
its recorded accuracy, from a folder outside the checkout.

Nothing is downloaded: the wheel is built without build isolation (this venv's setuptools), and
the fresh venv gets edgesplit from the wheel alone while its dependencies (torch and the rest,
installed here from the local package index the Makefile uses) are reached through a ``.pth``
line to this venv's site-packages, after the fresh venv's own. That path does not process this
venv's ``.pth`` files, so the checkout's editable install stays out of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_evaluates_the_shipped_checkpoint(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(wheels), "-q"],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("edgesplit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgesplit/_shipped/MANIFEST.json" in names
    assert "edgesplit/_shipped/mobilenet_v2-fashion-mnist-32.safetensors" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
    )
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(fresh_site) / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import edgesplit, edgesplit.model.checkpoints as c; "
         "print(edgesplit.__file__); print(c.SHIPPED_DIR)"],
        check=True, capture_output=True, text=True, cwd=elsewhere, env=env,
    ).stdout.split()  # fmt: skip
    assert all(p.startswith(str(venv)) for p in where), where

    result = subprocess.run(
        [str(venv / "bin" / "edgesplit"), "eval", "--model", "mobilenet_v2", "--json"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["images"] == 10_000
    assert out["accuracy"] == pytest.approx(0.9178, abs=5e-5)
    assert out["accuracy"] == pytest.approx(out["manifest_accuracy"], abs=1e-12)
