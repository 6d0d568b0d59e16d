"""``edgesplit serve`` in a child process, for tests and benchmarks that talk to a real server.

Up once it prints its ``serving on http://...`` line (``--port 0`` lets it choose the port);
:meth:`ServeProcess.stop` sends Ctrl-C, as a user would, and kills it only if it does not exit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from edgesplit.errors import RunError

STOP_GRACE_S = 60.0


class ServeProcess:
    """``python -m edgesplit serve --port 0 *args`` with ``env`` added to this environment;
    :class:`RunError` with its stderr when it exits or is not up within ``timeout_s``."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 300.0
    ) -> None:
        argv = [sys.executable, "-m", "edgesplit", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.err: list[str] = []
        assert self.proc.stderr is not None
        stream = self.proc.stderr
        threading.Thread(target=lambda: self.err.extend(stream), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        self.url = ""
        while not self.url:
            found = re.search(r"serving on (http://\S+?)/? ", self.stderr)
            if found:
                self.url = found.group(1).rstrip("/")
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RunError(
                    f"edgesplit serve did not start (exit {self.proc.poll()}):\n{self.stderr}"
                )
            else:
                time.sleep(0.1)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def cluster(self) -> dict[str, Any]:
        """``GET /v1/cluster``."""
        import httpx

        answer: dict[str, Any] = httpx.get(f"{self.url}/v1/cluster", timeout=30).json()
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
