"""A lean HTTP/2 client for APNs, written on the `h2` state machine over an asyncio Protocol:
the one module of the project that imports h2 (notifications.apns is its only user).

What it does (RFC 9113; Apple's "Sending notification requests to APNs" asks for HTTP/2 and
one long-lived connection reused for many requests):

- One connection at a time: TLS with ALPN `h2` for `https://` (verified against `ca_file`
  when given, else the system's CAs; a server that does not select `h2` is refused), or
  h2c with prior knowledge for `http://` (the local server of simulators.apns). Requests
  wait for the server's first SETTINGS frame, then go out as streams. A lost connection is
  replaced by the next request (reconnect on demand).
- The server's SETTINGS_MAX_CONCURRENT_STREAMS is honoured, whenever it changes (APNs
  starts low and raises it): requests beyond it wait in order for a stream to end.
- Flow control: a body goes out as the connection's and the stream's windows allow; a
  stream whose body does not fit waits for the server's WINDOW_UPDATE.
- Many requests started in one loop iteration are written together: h2's `data_to_send`
  once per iteration (or per FLUSH_EVERY_STREAMS streams), not once per stream.
- GOAWAY: requests on streams above its last_stream_id (the server never processed them)
  and requests not yet sent go out again on a new connection; those at or below it fail
  with `ConnectionLost` (h2 takes no frame after a GOAWAY; the caller retries). A stream the
  server resets with REFUSED_STREAM (not processed either) is retried the same way; any
  other reset fails that request with `StreamReset`.
- A request cancelled by its caller (a timeout) resets its stream (CANCEL).

The caller builds the header list (bytes, lower-case, pseudo-headers first): h2 neither
normalizes nor validates it (the local server of simulators.apns validates what arrives, as
any HTTP/2 server does), nor validates the answers' headers (only `:status` and the few
the caller asks for by name are read).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import NeverIndexedHeaderTuple

log = logging.getLogger(__name__)

# Streams started before their frames are written even within one loop iteration, so the
# server starts on the first requests of a large burst while the rest are being built.
FLUSH_EVERY_STREAMS = 8


def unindexed(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """A header whose value differs on every request (`:path`): HPACK literal never indexed
    (RFC 7541 §6.2.3), so it does not push the shared ones out of the dynamic table."""
    return NeverIndexedHeaderTuple(name, value)


class HTTP2Error(Exception):
    """The request got no answer (base class)."""


class ConnectionLost(HTTP2Error):
    """The connection could not be made, or ended before the answer."""


class StreamReset(HTTP2Error):
    """The server reset the request's stream."""


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Request:
    __slots__ = ("headers", "body", "future", "connection", "stream_id", "sent", "status", "response_headers",
                 "data")

    def __init__(self, headers: list[tuple[bytes, bytes]], body: bytes, future: asyncio.Future):
        self.headers, self.body, self.future = headers, body, future
        self.connection: Connection | None = None
        self.stream_id: int | None = None
        self.sent = 0  # bytes of the body sent
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.data: list[bytes] = []


class Client:
    """Requests to one origin over one HTTP/2 connection (module docstring). Lives on one
    asyncio loop; `request` is the only call a user needs, `close` at the end."""

    def __init__(self, url: str, *, ca_file: str | None = None, connect_timeout: float = 10.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"http:// or https:// only, not {url}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.scheme = parts.scheme.encode()
        self.authority = parts.netloc.encode()
        self.connect_timeout = connect_timeout
        self.ssl: ssl.SSLContext | None = None
        if self.tls:
            self.ssl = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
            self.ssl.set_alpn_protocols(["h2"])
        self.connection: Connection | None = None  # the connection new requests go to
        self.connecting: asyncio.Task | None = None
        self.waiting: collections.deque[Request] = collections.deque()  # until a connection is ready
        self.connections_made = 0
        self.closed = False

    async def request(self, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Response:
        """Send one request (`headers` complete, pseudo-headers first) and wait for its answer.
        Raises ConnectionLost or StreamReset when there is none."""
        request = Request(headers, body, asyncio.get_running_loop().create_future())
        self.submit(request)
        try:
            return await request.future
        except asyncio.CancelledError:
            if request.connection is not None:
                request.connection.cancel(request)
            raise

    def submit(self, request: Request) -> None:
        if self.closed:
            request.future.set_exception(ConnectionLost("client closed"))
            return
        connection = self.connection
        if connection is not None and connection.usable:
            connection.add(request)
            return
        self.waiting.append(request)
        if self.connecting is None:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    def resubmit(self, requests) -> None:
        """Requests a connection could not send (GOAWAY, refused, lost before sending): again."""
        for request in requests:
            if not request.future.done():
                request.connection, request.stream_id, request.sent = None, None, 0
                request.status, request.response_headers, request.data = 0, [], []
                self.submit(request)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        connection: Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.tls else None)
                await connection.ready
            if not connection.usable:
                raise ConnectionLost("connection closed before the first request")
        except (OSError, TimeoutError, HTTP2Error, ssl.SSLError) as exc:
            self.connecting = None
            if connection is not None and connection.transport is not None:
                connection.transport.close()  # no SETTINGS in time: give up on it
            waiting, self.waiting = self.waiting, collections.deque()
            error = exc if isinstance(exc, HTTP2Error) else ConnectionLost(f"{type(exc).__name__}: {exc}")
            log.warning("http2 connect to %s:%s failed: %s", self.host, self.port, error)
            for request in waiting:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        self.connecting = None
        self.connection = connection
        self.connections_made += 1
        waiting, self.waiting = self.waiting, collections.deque()
        for request in waiting:
            if not request.future.done():
                connection.add(request)

    def retired(self, connection: Connection) -> None:
        """`connection` takes no new requests any more (GOAWAY, lost, out of stream ids)."""
        if self.connection is connection:
            self.connection = None

    async def close(self, timeout: float = 1.0) -> None:
        """Close the connection (GOAWAY) and wait, up to `timeout`, until its socket is closed."""
        self.closed = True
        if self.connecting is not None:
            self.connecting.cancel()
            await asyncio.gather(self.connecting, return_exceptions=True)
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(connection.gone)
            except TimeoutError:
                pass


class Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2's state machine fed by the transport."""

    def __init__(self, client: Client):
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, split_outbound_cookies=False, validate_inbound_headers=False))
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future = self.loop.create_future()  # the server's first SETTINGS came
        self.gone: asyncio.Future = self.loop.create_future()  # the transport is closed
        self.pending: collections.deque[Request] = collections.deque()  # for a stream
        self.streams: dict[int, Request] = {}  # open streams
        self.blocked: dict[int, Request] = {}  # streams with body left, waiting for the window
        self.usable = True   # takes new requests
        self.lost = False
        self.goaway = False  # the server sent GOAWAY: h2 takes no more frames
        self.flush_scheduled = False
        self.unflushed = 0  # streams started since the last write

    # --- asyncio.Protocol ---

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.client.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if protocol != "h2":
                self._fail_ready(ConnectionLost(f"the server did not negotiate h2 by ALPN ({protocol})"))
                transport.close()
                return
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        if self.goaway:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("http2 protocol error from %s: %s", self.client.authority.decode(), exc)
            self._flush()
            self.transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.ResponseReceived:
                request = self.streams.get(event.stream_id)
                if request is not None:
                    request.response_headers = event.headers
                    for name, value in event.headers:
                        if name == b":status":
                            request.status = int(value)
                            break
            elif kind is h2.events.DataReceived:
                request = self.streams.get(event.stream_id)
                if request is not None:
                    request.data.append(event.data)
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is h2.events.StreamEnded:
                request = self.streams.pop(event.stream_id, None)
                self.blocked.pop(event.stream_id, None)
                if request is not None and not request.future.done():
                    request.future.set_result(Response(request.status, request.response_headers,
                                                       b"".join(request.data)))
            elif kind is h2.events.StreamReset:
                request = self.streams.pop(event.stream_id, None)
                self.blocked.pop(event.stream_id, None)
                if request is not None and not request.future.done():
                    if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                        self.client.resubmit([request])
                    else:
                        request.future.set_exception(StreamReset(f"stream reset by the server: {event.error_code!r}"))
            elif kind is h2.events.RemoteSettingsChanged:
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind is h2.events.ConnectionTerminated:
                self._goaway(event.last_stream_id, event.error_code)
                break
        self._pump()
        self._flush()
        if not self.usable and not self.streams and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.lost, self.usable = True, False
        if not self.gone.done():
            self.gone.set_result(None)
        self.client.retired(self)
        error = ConnectionLost(f"connection lost: {exc}" if exc else "connection closed")
        self._fail_ready(error)
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        for request in streams.values():
            if not request.future.done():
                request.future.set_exception(error)
        pending, self.pending = self.pending, collections.deque()
        self.client.resubmit(pending)

    # --- requests ---

    def add(self, request: Request) -> None:
        request.connection = self
        self.pending.append(request)
        if self.ready.done():
            self._pump()
            self._schedule_flush()

    def cancel(self, request: Request) -> None:
        """The caller gave up (timeout): reset its stream, if it has one."""
        stream_id = request.stream_id
        if stream_id is not None and self.streams.pop(stream_id, None) is not None and not self.lost:
            self.blocked.pop(stream_id, None)
            try:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.H2Error:
                pass  # already closed
            self._pump()
            self._schedule_flush()
        # Not on a stream yet: `_pump` skips a request whose future is done.

    def close(self) -> None:
        self.usable = False
        if self.transport is not None and not self.lost:
            self.h2.close_connection()
            self._flush()
            self.transport.close()

    # --- inside ---

    def _pump(self) -> None:
        """Start pending requests as the server's stream limit and the window allow; send
        the bodies that waited for a window."""
        if self.lost or not self.ready.done():
            return
        h2conn = self.h2
        if self.blocked:
            for stream_id, request in list(self.blocked.items()):
                if self._send_body(stream_id, request):
                    del self.blocked[stream_id]
                elif h2conn.outbound_flow_control_window <= 0:
                    break
        if not self.usable:
            return
        limit = h2conn.remote_settings.max_concurrent_streams
        pending, streams = self.pending, self.streams
        while pending and len(streams) < limit:
            request = pending[0]
            if request.future.done():  # cancelled while waiting
                pending.popleft()
                continue
            if request.body and h2conn.outbound_flow_control_window < len(request.body) and streams:
                break  # wait for a WINDOW_UPDATE rather than open a stream that cannot send
            try:
                stream_id = h2conn.get_next_available_stream_id()
            except h2.exceptions.NoAvailableStreamIDError:
                self._retire()
                return
            try:
                h2conn.send_headers(stream_id, request.headers, end_stream=not request.body)
            except h2.exceptions.TooManyStreamsError:
                break  # h2 still counts a stream we no longer wait on (its body unfinished)
            pending.popleft()
            request.stream_id = stream_id
            streams[stream_id] = request
            if request.body and not self._send_body(stream_id, request):
                self.blocked[stream_id] = request
            self.unflushed += 1
            if self.unflushed >= FLUSH_EVERY_STREAMS:
                self._flush()

    def _send_body(self, stream_id: int, request: Request) -> bool:
        """Send what the windows allow of the body; True once all of it went."""
        h2conn, body = self.h2, request.body
        while request.sent < len(body):
            size = min(h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size,
                       len(body) - request.sent)
            if size <= 0:
                return False
            end = request.sent + size
            h2conn.send_data(stream_id, body[request.sent:end], end_stream=end == len(body))
            request.sent = end
        return True

    def _goaway(self, last_stream_id: int | None, error_code) -> None:
        """The server is going away. h2 takes no frame after a GOAWAY, so the streams it may
        still answer (at or below last_stream_id) fail (ConnectionLost, as with any lost
        connection: the caller retries); those above it, never processed, go out again."""
        log.info("http2 GOAWAY from %s: last stream %s, %r", self.client.authority.decode(), last_stream_id,
                 error_code)
        self.goaway = True
        self._retire()
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        unprocessed = []
        error = ConnectionLost(f"GOAWAY ({error_code!r}) before the answer")
        for stream_id, request in streams.items():
            if last_stream_id is not None and stream_id > last_stream_id:
                unprocessed.append(request)
            elif not request.future.done():
                request.future.set_exception(error)
        self.client.resubmit(unprocessed)

    def _retire(self) -> None:
        """No new streams here: the requests not yet sent go to a new connection."""
        self.usable = False
        self.client.retired(self)
        pending, self.pending = self.pending, collections.deque()
        self.client.resubmit(pending)

    def _fail_ready(self, error: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the connecting task may be gone

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        self.unflushed = 0
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.lost:
            self.transport.write(data)
