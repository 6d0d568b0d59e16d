"""A running server inside this process: what :func:`edgesplit.serve` returns.

The session (cluster, plan, run loop) and uvicorn run on background threads; :meth:`Server.close`
(or the end of a ``with`` block) stops the HTTP server, answers what waits, and stops the
cluster it started."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgesplit.config import ClusterSpec
from edgesplit.errors import ConfigError, RequestError
from edgesplit.serve.session import ServeConfig, Session
from edgesplit.shared.timeouts import TIMEOUTS

START_TIMEOUT_S = TIMEOUTS.serve_start_s
"""How long uvicorn may take to accept connections once the pipeline is ready."""


class Server:
    """``edgesplit serve`` in this process: ``.url``, ``.classify(images)``, ``.cluster()``."""

    def __init__(
        self,
        config: ServeConfig,
        cluster: ClusterSpec | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        import uvicorn

        from edgesplit.serve.app import create_app

        try:
            self._sock = socket.create_server((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
        try:
            self.session = Session(config, cluster).open()
        except BaseException:
            self._sock.close()
            raise
        bound = self._sock.getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        app = create_app(self.session)
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise ConfigError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.02)

    def classify(
        self, images: Sequence[str | Path | bytes], top_k: int = 5, timeout_s: float = 120.0
    ) -> list[dict[str, Any]]:
        """Classify images (paths or JPEG/PNG bytes) in one request; per image its ``class``,
        ``label`` and ``top`` (class names with probabilities). :class:`RequestError` (with
        the HTTP status) when the server refuses.

        Example::

            >>> with edgesplit.serve(partition="equal") as server:
            ...     server.classify(["boot.png"])[0]["class"]
            'Ankle boot'
        """
        import httpx

        blobs = [i if isinstance(i, bytes) else Path(i).read_bytes() for i in images]
        kind = "application/octet-stream"
        files = [("image", (f"{n}", blob, kind)) for n, blob in enumerate(blobs)]
        response = httpx.post(
            f"{self.url}/v1/classify", files=files, params={"top_k": top_k}, timeout=timeout_s
        )
        body = response.json()
        if response.status_code != 200:
            raise RequestError(str(body.get("error")), status=response.status_code)
        results: list[dict[str, Any]] = body["results"]
        return results

    def cluster(self) -> dict[str, Any]:
        """The plan, the devices with their health and live readings, and the load (as
        ``GET /v1/cluster``)."""
        return self.session.describe()

    def close(self) -> None:
        """Stop the HTTP server, answer what waits (503), and stop the cluster it started."""
        self._uvicorn.should_exit = True
        self._thread.join(timeout=30)
        self.session.close()
        self._sock.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<edgesplit Server {self.url}>"
