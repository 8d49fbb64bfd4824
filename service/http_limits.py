"""Bounded requests: body size checked while the body streams, read timeouts, a connection cap.

* ``BodyLimit`` (ASGI middleware) refuses a declared ``Content-Length`` over the limit at once and
  counts the bytes of every body as they arrive (chunked or not), so no more than the limit is ever
  read, let alone spooled; a client that stops sending its body gets a 408 after
  ``PAS_BODY_TIMEOUT_S``.
* ``guarded_protocol`` is uvicorn's h11 protocol plus a deadline for the request line and headers
  (uvicorn only times out idle keep-alive connections), so half-sent requests cannot pile up.
* ``uvicorn_options`` is the rest: a connection cap (503 beyond it), keep-alive and header size.
"""

from __future__ import annotations

import asyncio

import h11
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.auth import reply


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes (PAS_MAX_REQUEST_BYTES)")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float):
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name.lower() == b"content-length":
                declared = value.decode("latin-1").strip()
                if not declared.isdigit() or int(declared) > self.max_bytes:
                    return await reply(send, 413, "body_too_large",
                                       f"request body over {self.max_bytes} bytes (PAS_MAX_REQUEST_BYTES)")
        received = 0
        done = False

        async def bounded_receive() -> Message:
            nonlocal received, done
            if done:  # body complete: later receives wait for a disconnect (e.g. server-sent events)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        await self.app(scope, bounded_receive, send)


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request line and headers are overdue."""

    class GuardedH11Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # a new request begins on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_overdue)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_overdue(self) -> None:
            self._header_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_options(settings) -> dict:
    return dict(
        http=guarded_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=16 * 1024,
    )


def install_body_limit(app, settings) -> None:
    """The middleware plus JSON answers for its two errors (the unread rest of the body ends the connection)."""
    from fastapi.responses import JSONResponse

    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, timeout_s=settings.body_timeout_s)

    async def _refused(_request, exc: HTTPException):
        code = "body_too_large" if isinstance(exc, BodyTooLarge) else "body_timeout"
        return JSONResponse({"detail": exc.detail, "code": code}, status_code=exc.status_code,
                            headers={"Connection": "close"})

    app.add_exception_handler(BodyTooLarge, _refused)
    app.add_exception_handler(BodyTimeout, _refused)
