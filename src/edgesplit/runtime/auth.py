"""Token auth on every call, and optional mutual TLS.

Every client call carries ``authorization: Bearer <token>`` metadata (added by
:class:`TokenClientInterceptor`); every server checks it with :class:`TokenServerInterceptor`
in constant time and aborts with ``UNAUTHENTICATED`` before the request is even parsed.
mTLS is layered underneath from :class:`~edgesplit.config.TlsSpec` PEM files.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from edgesplit.config import TlsSpec
from edgesplit.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_HEADER = "authorization"
_PREFIX = "Bearer "
REJECT_LOG_INTERVAL_S = 60.0
"""Rejected calls are logged once per peer per interval, with how many there were."""
MAX_LOGGED_PEERS = 1024
"""Peers the rejection log remembers (the oldest are forgotten first)."""


def _peer_host(peer: str) -> str:
    """``ipv4:10.0.0.5:41234`` -> ``ipv4:10.0.0.5``: one entry per host, not per connection."""
    return peer.rpartition(":")[0] or peer


class RejectLog:
    """One WARNING line per peer per :data:`REJECT_LOG_INTERVAL_S` for calls refused for
    their token, counting the ones not logged (a flood of bad calls must not flood the log)."""

    def __init__(self, interval_s: float = REJECT_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._peers: dict[str, tuple[float, int]] = {}
        """peer -> (when its last line was logged, calls since then)."""

    def rejected(self, peer: str, method: str) -> bool:
        """Count a rejected call from ``peer``; True when it was logged."""
        host = _peer_host(peer)[:100]
        now = time.monotonic()
        with self._lock:
            logged_at, count = self._peers.pop(host, (-float("inf"), 0))
            count += 1
            due = now - logged_at >= self.interval_s
            self._peers[host] = (now, 0) if due else (logged_at, count)
            while len(self._peers) > MAX_LOGGED_PEERS:
                self._peers.pop(next(iter(self._peers)))
        if due:
            log.warning(
                "rejected %d call(s) from %s with a bad or missing token (last: %s); "
                "at most one line per %.0f s per peer",
                count, host, method[:100], self.interval_s,
            )  # fmt: skip
        return due


class TokenServerInterceptor(grpc.ServerInterceptor):
    """Reject every call whose token is not one of ``tokens``."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        if not self._tokens:
            raise ConfigError("token auth needs at least one non-empty token")
        self.rejects = RejectLog()

    def _deny(
        self, method: str, bidi: bool = False, client_stream: bool = False
    ) -> grpc.RpcMethodHandler:
        def deny(_request: object, context: grpc.ServicerContext) -> None:
            self.rejects.rejected(context.peer(), method)
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or wrong token: expected '{TOKEN_HEADER}: {_PREFIX}<token>' metadata "
                "with the cluster token",
            )

        # No deserializer: a rejected request's bytes are never parsed. A link stream is
        # refused as one, before its first frame is read.
        if bidi:
            return grpc.stream_stream_rpc_method_handler(deny)
        if client_stream:  # PutModel, ProbeStream: refused before a chunk is read
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)

    def _accepts(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key != TOKEN_HEADER:
                continue
            raw = value.encode() if isinstance(value, str) else value
            if not raw.startswith(_PREFIX.encode()):
                return False
            given = raw[len(_PREFIX) :]
            # Compare against every token without early exit so timing reveals nothing.
            ok = False
            for token in self._tokens:
                ok |= hmac.compare_digest(given, token)
            return ok
        return False

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if self._accepts(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        streaming = handler is not None and handler.request_streaming
        bidi = streaming and handler is not None and handler.response_streaming
        return self._deny(handler_call_details.method, bool(bidi), bool(streaming and not bidi))


class TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Add the token to every unary, client-streaming and bidirectional call made through the
    channel."""

    def __init__(self, token: str) -> None:
        self._header = (TOKEN_HEADER, _PREFIX + token)

    def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request: Any,
    ) -> Any:
        metadata = [*(client_call_details.metadata or ()), self._header]
        details = client_call_details._replace(metadata=metadata)
        return continuation(details, request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request_iterator: Any,
    ) -> Any:
        metadata = [*(client_call_details.metadata or ()), self._header]
        details = client_call_details._replace(metadata=metadata)
        return continuation(details, request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request_iterator: Any,
    ) -> Any:
        metadata = [*(client_call_details.metadata or ()), self._header]
        details = client_call_details._replace(metadata=metadata)
        return continuation(details, request_iterator)


def _read_pem(path: Path, what: str) -> bytes:
    path = Path(path).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS {what} {path}: {exc.strerror}") from exc


def server_credentials(tls: TlsSpec) -> grpc.ServerCredentials:
    """mTLS server credentials: our cert/key, and clients must present a cert from ``tls.ca``."""
    return grpc.ssl_server_credentials(
        [(_read_pem(tls.key, "key"), _read_pem(tls.cert, "certificate"))],
        root_certificates=_read_pem(tls.ca, "CA"),
        require_client_auth=True,
    )


def channel_credentials(tls: TlsSpec) -> grpc.ChannelCredentials:
    """mTLS client credentials: trust ``tls.ca`` and present our own cert/key."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls.ca, "CA"),
        private_key=_read_pem(tls.key, "key"),
        certificate_chain=_read_pem(tls.cert, "certificate"),
    )
