"""Every command block of README.md, docs/USAGE.md and docs/SETUP.md runs as written (issue #20).

The blocks are read from the documents themselves, so the documents cannot drift from what
edgesplit does. Every fenced ``bash`` block runs, in document order, in one working folder per
document (so a block may use what an earlier one made, as a reader would), with ``edgesplit``
and ``.venv/bin/edgesplit`` this checkout's, and must exit 0. A ``run`` that injects faults must
name its ``--out`` folder, and every injection must have fired (its ``summary.json``).

Two markers, an HTML comment on the line before a block's opening fence (invisible when the
document is rendered, explicit in its source):

* ``<!-- docs-test: skip REASON -->``: the block cannot run here (a real Pi, root, hours); the
  test is reported as skipped with the reason;
* ``<!-- docs-test: background -->``: the block's ``edgesplit emulate`` and ``edgesplit serve``
  lines stay up (as the text says, "until Ctrl-C") in the background once their ``--out`` file
  is written (emulate) or their port answers (serve), for the lines and blocks after them; they
  are stopped when the document is done. A line with ``--hosts`` needs root (skipped without).

Commands may not hide in blocks that are not ``bash`` (checked below).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/USAGE.md", "docs/SETUP.md")
MARKER = re.compile(r"^<!-- docs-test: (skip|background)\b\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
COMMAND = re.compile(r"^\s*(\.venv/bin/)?edgesplit\s")
LINKED = (".venv", "bench", "deploy", "scripts", "checkpoints")
"""What the documents' relative paths reach in the checkout, linked into each working folder."""
BLOCK_TIMEOUT_S = 1500.0
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    """1-based line of the opening fence."""
    lang: str
    text: str
    marker: str | None = None
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def read_blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent, lang = i, m.group(1), m.group(2)
        i += 1
        body = []
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent) :])
            i += 1
        i += 1
        before = lines[start - 1].strip() if start > 0 else ""
        mark = MARKER.match(before)
        blocks.append(
            Block(
                doc,
                start + 1,
                lang,
                "\n".join(body),
                mark.group(1) if mark else None,
                mark.group(2) if mark else "",
            )
        )
    return blocks


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined; heredocs kept whole."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            end = heredoc.group(1)
            while i + 1 < len(lines) and lines[i].strip() != end:
                i += 1
                line += "\n" + lines[i]
        out.append(line)
        i += 1
    return out


BASH_BLOCKS = [b for doc in DOCS for b in read_blocks(doc) if b.lang == "bash"]


def test_commands_live_only_in_bash_blocks() -> None:
    """A command in a plain or output block would escape the test below."""
    hidden = [
        f"{b.id}: {line.strip()}"
        for doc in DOCS
        for b in read_blocks(doc)
        if b.lang != "bash"
        for line in b.text.splitlines()
        if COMMAND.match(line)
    ]
    assert hidden == [], "mark these blocks ```bash so they are run:\n" + "\n".join(hidden)


def test_every_skip_marker_gives_a_reason() -> None:
    assert BASH_BLOCKS
    assert [b.id for b in BASH_BLOCKS if b.marker == "skip" and not b.reason] == []


class Workspace:
    """One working folder per document, and the background processes of its blocks."""

    def __init__(self, base: Path, cache: Path) -> None:
        self.base = base
        self.env = {
            **os.environ,
            "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "EDGESPLIT_CACHE_DIR": str(cache),
            "COLUMNS": "120",
        }
        self.doc: str | None = None
        self.background: list[subprocess.Popen[bytes]] = []

    def folder(self, doc: str) -> Path:
        if doc != self.doc:
            self.stop()
            self.doc = doc
        folder = self.base / doc.replace("/", "_")
        if not folder.exists():
            folder.mkdir(parents=True)
            for name in LINKED:
                (folder / name).symlink_to(ROOT / name)
        return folder

    def start_background(self, line: str, cwd: Path) -> None:
        if re.search(r"\bedgesplit serve\b", line):
            self.start_server(line, cwd)
            return
        out = re.search(r"--out\s+(\S+)", line)
        assert out, f"a background line needs --out FILE to wait for: {line}"
        ready = cwd / out.group(1)
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen(
            ["bash", "-c", line], cwd=cwd, env=self.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.background.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (ready.exists() and ready.stat().st_size > 0):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{line!r} exited with {proc.returncode}:\n{err}")
            assert time.monotonic() < deadline, f"{line!r}: no {ready} after {READY_TIMEOUT_S} s"
            time.sleep(0.2)
        time.sleep(1.0)  # the cluster file is written once every worker is up

    def start_server(self, line: str, cwd: Path) -> None:
        """``edgesplit serve``: up once its /v1/cluster answers on its --host/--port."""
        import urllib.request

        host = re.search(r"--host\s+(\S+)", line)
        port = re.search(r"--port\s+(\d+)", line)
        url = f"http://{host.group(1) if host else '127.0.0.1'}:{port.group(1) if port else 8000}"
        proc = subprocess.Popen(
            ["bash", "-c", line], cwd=cwd, env=self.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.background.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{line!r} exited with {proc.returncode}:\n{err}")
            try:
                with urllib.request.urlopen(f"{url}/v1/cluster", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{line!r}: {url} not up in {READY_TIMEOUT_S} s"
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.background:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.background = []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = Workspace(tmp_path_factory.mktemp("docs"), tmp_path_factory.mktemp("cache"))
    yield ws
    ws.stop()


def run_script(script: str, cwd: Path, env: dict[str, str], where: str) -> None:
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"{where}: exit {proc.returncode}\n$ {script}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}"
    )


def check_injections(line: str, cwd: Path, where: str) -> None:
    """A documented ``run --inject`` must name its folder, and every injection fired."""
    words = shlex.split(line.split("#")[0])
    specs = [words[i + 1] for i, w in enumerate(words) if w == "--inject"]
    assert "--out" in words, f"{where}: a documented run with --inject needs --out: {line}"
    summary = json.loads((cwd / words[words.index("--out") + 1] / "summary.json").read_text())
    assert summary["not_fired"] == [], f"{where}: injections that never fired: {line}"
    fired = [e["spec"] for e in summary["injected"] if not e["action"].startswith("end ")]
    assert sorted(fired) == sorted(specs), f"{where}: fired {fired}, asked {specs}"
    failed = [e for e in summary["injected"] if e.get("error")]
    assert failed == [], f"{where}: injections that failed: {failed}"


@pytest.mark.slow
@pytest.mark.parametrize("block", BASH_BLOCKS, ids=[b.id for b in BASH_BLOCKS])
def test_documented_block_runs(block: Block, workspace: Workspace) -> None:
    if block.marker == "skip":
        pytest.skip(f"marked in {block.id}: {block.reason}")
    cwd = workspace.folder(block.doc)
    pending: list[str] = []
    lines = logical_lines(block.text)
    if block.marker == "background" and "--hosts" in block.text and os.geteuid() != 0:
        pytest.skip(f"{block.id}: emulated hosts need root")
    for line in lines:
        if block.marker == "background" and re.search(r"\bedgesplit (emulate|serve)\b", line):
            if pending:
                run_script("\n".join(pending), cwd, workspace.env, block.id)
                pending = []
            workspace.start_background(line.split(" #")[0], cwd)
        else:
            pending.append(line)
    if pending:
        run_script("\n".join(pending), cwd, workspace.env, block.id)
    for line in lines:
        if re.search(r"\bedgesplit run\b", line) and "--inject" in line:
            check_injections(line, cwd, block.id)
