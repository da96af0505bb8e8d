"""Bounded HTTP/1.1 framing: uvicorn's httptools protocol with the limits it lacks.

uvicorn's httptools protocol bounds neither a request's headers (httptools buffers a header
value until it ends, concatenating each piece that arrives: one endless header was read for
128 MiB at full CPU) nor the time a client takes to send its request (a connection that
sends a byte now and then, or nothing at all, stays open for ever). Its h11 protocol caps an
incomplete event at 16 KiB but answers 400, and times nothing out either; both close an idle
keep-alive connection only after a response. This subclass adds, per connection
(`[server]` settings):

- `max_header_bytes`: request line and headers together; past it, 431 and the connection closes;
- `header_timeout_seconds`: from a request's first byte to the end of its headers; then 408
  and the connection closes;
- `body_timeout_seconds`: from the end of the headers to the end of the body; then the
  connection closes and the request is logged with status 408 (app.api.body);
- a new connection that sends nothing closes after `keep_alive_timeout_seconds`, as uvicorn
  closes one that is idle after a response.

Timers are armed only when a read ends with a request still incomplete, so a request that
arrives in one read (the usual small one) costs a few attribute updates, not a timer nor a
clock read: a deadline counts from the end of the read in which its phase began, which is
the same loop iteration as the phase's first byte.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.body import BODY_TIMED_OUT
from app.api.exception_handlers import envelope
from app.config import ServerSettings
from app.errors import GatewayError, HeadersTooLargeError, RequestTimeoutError

logger = logging.getLogger(__name__)

_IDLE, _HEAD, _BODY = 0, 1, 2
_LINGER_SECONDS = 1.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past the limit."""


def _raw_response(error: GatewayError, phrase: str) -> bytes:
    body = envelope(error)
    head = (
        f"HTTP/1.1 {error.status_code} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes: ClassVar[int] = 16 * 1024
    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 60.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._phase = _IDLE
        self._message = 0  # messages begun on this connection
        self._began_in_read = False
        self._head_read = 0  # bytes read since the head began (an upper bound on its size)
        self._head_size = 0  # request line and complete headers, as parsed
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for = (0, _IDLE)
        self._discarding = False  # answered and closing: what still arrives is dropped

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Idle from the start: closed like a keep-alive connection if no request begins.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, plus the head-size check and the deadlines.
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        if self._phase == _HEAD:
            self._head_read += len(data)
        self._began_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._head_too_large()
                return
            raise
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._phase == _HEAD:
            if self._began_in_read:
                self._head_read = len(data)
            if self._head_read > self.max_header_bytes:
                self._head_too_large()
                return
        self._arm_deadline()

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD
        self._message += 1
        self._began_in_read = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_size > self.max_header_bytes:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()

    # -- limits ------------------------------------------------------------------------------

    def _head_too_large(self) -> None:
        logger.info("request headers over %d bytes: answered 431 and closed", self.max_header_bytes)
        error = HeadersTooLargeError(f"The request line and headers are over {self.max_header_bytes} bytes.")
        self._close_with(error, "Request Header Fields Too Large")

    def _close_with(self, error: GatewayError, phrase: str) -> None:
        """Answer, then close as nginx's lingering close does: stop sending, and read and drop
        what the client still sends for a moment, so that closing with its data unread (which
        resets the connection) does not destroy the answer before the client reads it."""
        self._cancel_deadline()
        if self.transport.is_closing():
            return
        self._discarding = True
        self.transport.write(_raw_response(error, phrase))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def _arm_deadline(self) -> None:
        if self._phase == _IDLE:  # the usual end of a read: the request is complete
            if self._deadline is not None:
                self._cancel_deadline()
            return
        wanted = (self._message, self._phase)
        if wanted == self._deadline_for:
            return
        self._cancel_deadline()
        self._deadline_for = wanted
        if self._phase == _HEAD:
            self._deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)
        else:
            self._deadline = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = (0, _IDLE)

    def _head_timed_out(self) -> None:
        self._deadline = None
        logger.info("request headers not complete after %gs: answered 408 and closed", self.header_timeout)
        self._close_with(RequestTimeoutError("The request headers were not sent in time."), "Request Timeout")

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.scope["state"][BODY_TIMED_OUT] = True
        if not self.transport.is_closing():
            self.transport.close()  # the app sees a disconnect and logs it as 408


def bounded_protocol(server: ServerSettings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with `server`'s limits, for uvicorn's `http=`."""

    class Configured(BoundedHttpToolsProtocol):
        max_header_bytes = server.max_header_bytes
        header_timeout = server.header_timeout_seconds
        body_timeout = server.body_timeout_seconds

    return Configured


def uvicorn_options(server: ServerSettings) -> dict[str, object]:
    """What uvicorn.run / uvicorn.Config take for these limits."""
    return {"http": bounded_protocol(server), "timeout_keep_alive": server.keep_alive_timeout_seconds}
