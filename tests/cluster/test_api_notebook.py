"""docs/notebooks/quickstart.ipynb runs top to bottom on a local kernel (so it cannot rot), and
its outputs include the per-device table and a timeline plot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "notebooks" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_shows_the_table_and_the_timeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the runs' folders, under the test's tmp dir
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel is this interpreter's ipykernel (the venv's), whatever kernels are installed.
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.kernel_manager_class = _local_kernel_manager()
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, errors
    html = [out.data["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert any("compute_ms_per_batch" in h and "pi1" in h for h in html), "no per-device table"
    pngs = [out for out in outputs if "image/png" in out.get("data", {})]
    timeline = [c for c in nb.cells if c.cell_type == "code" and "plot.timeline()" in c.source]
    assert timeline and any("image/png" in o.get("data", {}) for o in timeline[0].outputs)
    assert pngs
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "worker processes started: 3" in text


def _local_kernel_manager() -> type:
    """A kernel manager that starts ``sys.executable -m ipykernel_launcher``."""
    from jupyter_client.manager import KernelManager

    class Local(KernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            return [part.replace("{connection_file}", self.connection_file) for part in cmd]

    return Local
