"""gRPC plumbing shared by the worker and the coordinator: servers, channels, handlers.

Servers register handlers built here rather than protoc's ``add_*Servicer_to_server``: the
handler receives raw bytes and parses them itself, so a garbage payload gets an
``INVALID_ARGUMENT`` status naming the expected message instead of grpc's generic
"Exception deserializing request". Handlers raise :class:`Refused` to answer with a status.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from edgesplit.config import TlsSpec
from edgesplit.errors import EdgesplitError, ListenError, Refused
from edgesplit.runtime import MAX_MESSAGE_BYTES, codec
from edgesplit.runtime.auth import (
    TokenClientInterceptor,
    TokenServerInterceptor,
    channel_credentials,
    server_credentials,
)
from edgesplit.runtime.proto import edgesplit_pb2 as pb

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)

GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keep-alives notice a dead peer on an idle persistent channel.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *GRPC_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
)


DEFAULT_LINK_STREAMS = 4
"""Link streams a server keeps open at once (see :class:`StreamSlots`)."""


class Call:
    """A running call as its handler sees it: the caller's deadline, and whether the caller
    still wants the answer. Handlers that wait or loop use :meth:`wait` and :meth:`check` so a
    cancelled call, a passed deadline or a stopping server ends them (issue #18, row 2)."""

    def __init__(self, context: grpc.ServicerContext | None = None) -> None:
        self._context = context
        self._ended = threading.Event()
        remaining = context.time_remaining() if context is not None else None
        self._deadline = None if remaining is None else time.monotonic() + remaining
        if context is not None and not context.add_callback(self._ended.set):
            self._ended.set()  # the call has ended already

    def remaining_s(self) -> float | None:
        """Seconds until the caller's deadline (None: it gave none)."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def timeout_s(self, cap_s: float) -> float:
        """A timeout for work done for this call: ``cap_s`` or what is left of the deadline."""
        remaining = self.remaining_s()
        return cap_s if remaining is None else max(0.0, min(cap_s, remaining))

    def check(self) -> None:
        """Raise :class:`Refused` when the call was cancelled or its deadline passed."""
        if self._ended.is_set():
            raise Refused(grpc.StatusCode.CANCELLED, "the call was cancelled")
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed")

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the call ends first (then raise like :meth:`check`)."""
        self.check()
        self._ended.wait(self.timeout_s(seconds))
        self.check()

    def cancel(self) -> None:
        """End the call (CANCELLED): a client stream's handler stops waiting for its next
        message. Safe from any thread."""
        self._ended.set()
        if self._context is not None:
            self._context.cancel()


Handler = tuple[type[Message], Callable[[Any], Message]]
"""(request message class, implementation taking the parsed request)."""
CallHandler = tuple[type[Message], Callable[[Any, Call], Message]]
"""(request message class, implementation taking the parsed request and its :class:`Call`)."""


def _unary(
    service: str,
    method: str,
    request_cls: type[Message],
    impl: Callable[..., Message],
    with_call: bool = False,
) -> grpc.RpcMethodHandler:
    def handle(raw: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = request_cls.FromString(raw)
        except DecodeError as exc:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method} expects a serialized {request_cls.DESCRIPTOR.full_name}: {exc}",
            )
        if with_call:
            call = Call(context)
            return _answer(service, method, context, lambda: impl(request, call))
        return _answer(service, method, context, lambda: impl(request))

    return grpc.unary_unary_rpc_method_handler(handle)


def _answer(
    service: str, method: str, context: grpc.ServicerContext, call: Callable[[], Message]
) -> bytes:
    """``call()``'s reply serialized, its refusals and errors translated to gRPC statuses."""
    try:
        return call().SerializeToString()
    except Refused as exc:
        context.abort(exc.code, str(exc))
    except EdgesplitError as exc:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except Exception as exc:  # a bug must not take the server down
        log.exception("%s/%s failed", service, method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {type(exc).__name__}")
    raise AssertionError("unreachable: context.abort raises")


def _stream_unary(
    service: str,
    method: str,
    request_cls: type[Message],
    impl: Callable[..., Message],
    with_call: bool = False,
) -> grpc.RpcMethodHandler:
    """Like :func:`_unary` for a client stream: ``impl`` gets an iterator of parsed requests
    (and with ``with_call`` the :class:`Call`; a call that ends while the handler waits for a
    message ends the iterator with :class:`Refused`)."""

    def handle(raws: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        call = Call(context) if with_call else None

        def parsed() -> Iterator[Message]:
            try:
                for raw in raws:
                    try:
                        yield request_cls.FromString(raw)
                    except DecodeError as exc:
                        raise Refused(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"{method} expects serialized {request_cls.DESCRIPTOR.full_name}: "
                            f"{exc}",
                        ) from None
            except grpc.RpcError:  # the call was cancelled or its deadline passed
                if call is not None:
                    call.check()
                raise Refused(grpc.StatusCode.CANCELLED, f"{method}: the call ended") from None

        if call is not None:
            return _answer(service, method, context, lambda: impl(parsed(), call))
        return _answer(service, method, context, lambda: impl(parsed()))

    return grpc.stream_unary_rpc_method_handler(handle)


LinkImpl = Callable[[pb.MicroBatch, memoryview], None]
"""Takes one micro-batch of a link stream: its header and its tensor's bytes (a view of the
frame); raises :class:`Refused` (or any :class:`EdgesplitError`) to refuse it."""


class StreamSlots:
    """Bounds the link streams open on one server: each holds a handler thread for its whole
    life, so a new stream past ``limit`` ends the oldest (its sender reopens one when it next
    sends) rather than letting streams take every thread of the server."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: collections.OrderedDict[int, grpc.ServicerContext] = collections.OrderedDict()
        self._next = 0

    def enter(self, context: grpc.ServicerContext) -> int:
        with self._lock:
            key, self._next = self._next, self._next + 1
            self._open[key] = context
            evicted = []
            while len(self._open) > self.limit:
                evicted.append(self._open.popitem(last=False)[1])
        for old in evicted:
            log.warning("more than %d link streams open: ending the oldest", self.limit)
            old.cancel()
        return key

    def leave(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)

    def count(self) -> int:
        with self._lock:
            return len(self._open)


def _link_ack(method: str, raw: bytes, impl: LinkImpl) -> pb.LinkAck:
    """The acknowledgement of one link frame: accepted, or the status that refused it."""
    try:
        batch, data = codec.unpack(raw)
    except codec.CodecError as exc:
        return pb.LinkAck(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=f"{exc}")
    ack = pb.LinkAck(request_id=batch.request_id, plan_epoch=batch.plan_epoch)
    code = grpc.StatusCode.OK
    try:
        impl(batch, data)
    except Refused as exc:
        code, ack.message = exc.code, str(exc)
    except EdgesplitError as exc:
        code, ack.message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    except Exception as exc:  # a bug must not end the stream, let alone the server
        log.exception("%s failed", method)
        code, ack.message = grpc.StatusCode.INTERNAL, f"{method} failed: {type(exc).__name__}"
    ack.code = code.value[0]
    return ack


def _link(method: str, impl: LinkImpl, slots: StreamSlots) -> grpc.RpcMethodHandler:
    """A bidirectional link stream: one :class:`pb.LinkAck` per frame, in order."""

    def handle(frames: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        key = slots.enter(context)
        try:
            for raw in frames:
                yield _link_ack(method, raw, impl).SerializeToString()
        finally:
            slots.leave(key)

    return grpc.stream_stream_rpc_method_handler(handle)


def service_handler(
    service: str,
    methods: Mapping[str, Handler],
    streams: Mapping[str, Handler] | None = None,
    calls: Mapping[str, CallHandler] | None = None,
    links: Mapping[str, LinkImpl] | None = None,
    slots: StreamSlots | None = None,
    stream_calls: Mapping[str, CallHandler] | None = None,
) -> grpc.GenericRpcHandler:
    """A generic handler for ``service`` (full name, e.g. ``edgesplit.v1.Worker``): unary
    ``methods``, client-streaming ``streams`` (their implementations take an iterator) and
    ``stream_calls`` (an iterator and the :class:`Call`), unary ``calls`` whose
    implementations also take the :class:`Call` (deadline, cancellation) and
    bidirectional link streams ``links`` (bounded by ``slots``, default
    :data:`DEFAULT_LINK_STREAMS` per method)."""
    handlers = {name: _unary(service, name, cls, impl) for name, (cls, impl) in methods.items()}
    for name, (cls, call_impl) in (calls or {}).items():
        handlers[name] = _unary(service, name, cls, call_impl, with_call=True)
    for name, (cls, impl) in (streams or {}).items():
        handlers[name] = _stream_unary(service, name, cls, impl)
    for name, (cls, call_impl) in (stream_calls or {}).items():
        handlers[name] = _stream_unary(service, name, cls, call_impl, with_call=True)
    for name, link_impl in (links or {}).items():
        handlers[name] = _link(name, link_impl, slots or StreamSlots(DEFAULT_LINK_STREAMS))
    return grpc.method_handlers_generic_handler(service, handlers)


def make_server(
    handlers: Sequence[grpc.GenericRpcHandler],
    tokens: Sequence[str] | None,
    max_workers: int = 8,
) -> grpc.Server:
    """A sync gRPC server with size limits, and token auth unless ``tokens`` is None."""
    interceptors = [TokenServerInterceptor(tokens)] if tokens is not None else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        handlers=list(handlers),
        interceptors=interceptors,
        options=list(SERVER_OPTIONS),
        maximum_concurrent_rpcs=max_workers * 8,
    )
    return server


def bind(server: grpc.Server, address: str, tls: TlsSpec | None) -> int:
    """Bind ``address`` (port 0 picks a free one) and return the bound port."""
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise ListenError(f"cannot listen on {address}: the address is in use or invalid")
    return int(port)


def open_channel(
    address: str, token: str | None, tls: TlsSpec | None = None, server_name: str | None = None
) -> grpc.Channel:
    """A channel to ``address`` that sends ``token`` on every call (mTLS when ``tls``).

    ``server_name`` overrides the name checked against the server certificate (useful when
    certificates name devices rather than IP addresses).
    """
    options: list[tuple[str, Any]] = list(GRPC_OPTIONS)
    if tls is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(address, channel_credentials(tls), options=options)
    if token:
        channel = grpc.intercept_channel(channel, TokenClientInterceptor(token))
    return channel


def describe_rpc_error(exc: grpc.RpcError) -> str:
    """``CODE: details`` of a failed call, for one-line error messages."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}"
