"""A lean HTTP/2 client for APNs: the one module of the project that speaks HTTP/2
(notifications.apns is its only user). Its frames (RFC 9113) and its header compression
(HPACK, RFC 7541) are written here, over an asyncio Protocol: a request costs a few
dictionary lookups and two frames, where the `h2` state machine this module used before
spent most of the sender's CPU per push (event objects, per-stream state transitions,
HPACK in pure Python, header validation) on work a client of one known server does not need.

What it does (RFC 9113; Apple's "Sending notification requests to APNs" asks for HTTP/2 and
one long-lived connection reused for many requests):

- One connection at a time: TLS with ALPN `h2` for `https://` (verified against `ca_file`
  when given, else the system's CAs; a server that does not select `h2` is refused), or
  h2c with prior knowledge for `http://` (the local server of simulators.apns). Requests
  wait for the server's first SETTINGS frame, then go out as streams. A lost connection is
  replaced by the next request (reconnect on demand).
- The server's SETTINGS are applied whenever they change: SETTINGS_MAX_CONCURRENT_STREAMS
  (APNs starts low and raises it; requests beyond it, or beyond the client's own
  `max_streams`, wait in order for a stream to end), SETTINGS_INITIAL_WINDOW_SIZE (every
  open stream's window moves with it), SETTINGS_MAX_FRAME_SIZE and
  SETTINGS_HEADER_TABLE_SIZE (the HPACK table shrinks, announced by a size update).
- Flow control: a body goes out as the connection's and the stream's windows allow; a
  stream whose body does not fit waits for the server's WINDOW_UPDATE. The server may send
  us 16 MiB on the connection and 1 MiB per stream before we open more (WINDOW_UPDATE as
  they are used): APNs' answers are a few bytes.
- Requests started in one loop iteration are written together, in writes of
  FLUSH_EVERY_STREAMS streams, so the server starts on the first requests of a large burst
  while the rest are being built (the first stream on an idle connection goes at once).
- HPACK: the headers a burst shares (method, scheme, authority, authorization, the apns-*
  headers) go into the server's dynamic table on first use and are then one-byte indexes;
  a header marked `unindexed` (`:path`: the device token) is a literal never indexed
  (RFC 7541 §6.2.3), so it does not push the shared ones out of the table. Literals are
  sent without Huffman coding (optional, §5.2); Huffman-coded answers are decoded.
- GOAWAY: requests on streams above its last_stream_id (the server never processed them)
  and requests not yet sent go out again on a new connection; those at or below it are
  still answered if the server answers them before it closes, else they fail with
  `ConnectionLost` (the caller retries). A stream the server resets with REFUSED_STREAM
  (not processed either) is sent again the same way; any other reset fails that request
  with `StreamReset`.
- A request its caller gives up on (a timeout) resets its stream (CANCEL).
- PING is answered; a server push is refused (SETTINGS_ENABLE_PUSH 0); a frame that breaks
  the protocol ends the connection with GOAWAY and the error's code.

The caller builds the header list (bytes, lower-case, pseudo-headers first): it is neither
normalized nor validated here (the local server of simulators.apns validates what arrives,
as any HTTP/2 server does), nor are the answers' headers (only `:status` and the few the
caller asks for by name are read).

Two ways in: `await Client.request(headers, body)`, or, without a task or future per
request, `Client.submit(Request(headers, body, on_done))` with `on_done(request)` called on
the loop once `request.response` or `request.error` is set (`Client.cancel` to give up).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

from h2.errors import ErrorCodes  # the names of RFC 9113's error codes, for messages
from hpack import NeverIndexedHeaderTuple

log = logging.getLogger(__name__)

# Streams started before their frames are written even within one loop iteration, so the
# server starts on the first requests of a large burst while the rest are being built.
FLUSH_EVERY_STREAMS = 8

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x7, 0x8, 0x9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384  # the largest frame we accept (we never raise SETTINGS_MAX_FRAME_SIZE)
CONNECTION_WINDOW = 1 << 24  # what the server may send on the connection before our WINDOW_UPDATE
STREAM_WINDOW = 1 << 20      # our SETTINGS_INITIAL_WINDOW_SIZE
MAX_HEADER_LIST = 1 << 16    # decoded header fields of one answer, RFC 7541's 32-byte overhead each included
HEADER_TABLE_SIZE = 4096     # our encoder's dynamic table, at most (the server's setting may lower it)

_FRAME = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, R + stream id
_CODE = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def error_name(code: int) -> str:
    try:
        return f"{ErrorCodes(code).name} ({code})"
    except ValueError:
        return f"error code {code}"


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


class HPACKError(Exception):
    """A header block that cannot be decoded (a COMPRESSION_ERROR of the connection)."""


class _ProtocolViolation(Exception):
    """The server broke RFC 9113: the connection ends with GOAWAY and this code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# --- HPACK (RFC 7541) -----------------------------------------------------------------------

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = tuple((name.encode(), value.encode()) for name, value in (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", "")))
_STATIC_FULL = {entry: index for index, entry in reversed(list(enumerate(STATIC_TABLE, 1)))}
_STATIC_NAME = {name: index for index, (name, _) in reversed(list(enumerate(STATIC_TABLE, 1)))}

# RFC 7541 Appendix B: the Huffman code's length in bits for each symbol 0-255 and EOS (256),
# as chr(48 + bits). The code is canonical (codes in order of length, then of symbol), so
# the lengths define it.
HUFFMAN_BITS = (
    "=GLLLLLLLHNLLNLLLLLLLLNLLLLLLLLL6::<=68;::8;8666555666666678?6<:=67777777777777777777777878=C=>6?5656566"
    "6577666567655677777?;>=LDFDDFFFGFGGGGGHGHHFGHGGGGEFGFGGHFEDFFGGEGFFHEFGGEEFEGFGGDFFFGFFGJJDCFGFIJJJKKJH"
    "ICEJKKJKHEEJJLKKKDHDEFEEGFFIIHHJGJKJJKKKKKLKKKKKJN")
_huffman: tuple[list, list[bool]] | None = None


def _huffman_tables() -> tuple[list, list[bool]]:
    """The decoder as a state machine read 4 bits at a time (built on first use): for each
    (state, nibble), (next state, bytes decoded) or None (EOS decoded: an error); and
    whether ending in a state is valid padding (RFC 7541 §5.2: fewer than 8 bits, all 1s)."""
    global _huffman
    if _huffman is not None:
        return _huffman
    lengths = [ord(c) - 48 for c in HUFFMAN_BITS]
    children: list[list[int]] = [[0, 0]]  # internal nodes; a child >= 0 is a node, ~symbol a leaf
    ones = [0]  # the node's depth if its path is all 1s, else -1
    code, previous = 0, None
    for symbol in sorted(range(257), key=lambda s: (lengths[s], s)):
        if previous is not None:
            code = (code + 1) << (lengths[symbol] - previous)
        previous = lengths[symbol]
        node = 0
        for shift in range(lengths[symbol] - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                children[node][bit] = ~symbol
            else:
                if not children[node][bit]:
                    children.append([0, 0])
                    ones.append(ones[node] + 1 if bit and ones[node] >= 0 else -1)
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    table: list = []
    for node in range(len(children)):
        for nibble in range(16):
            state, out, step = node, bytearray(), None
            for shift in (3, 2, 1, 0):
                child = children[state][(nibble >> shift) & 1]
                if child < 0:
                    if ~child == 256:
                        break
                    out.append(~child)
                    state = 0
                else:
                    state = child
            else:
                step = (state, bytes(out))
            table.append(step)
    _huffman = (table, [0 <= depth <= 7 for depth in ones])
    return _huffman


def huffman_decode(data: bytes) -> bytes:
    table, final = _huffman_tables()
    state, out = 0, []
    for byte in data:
        step = table[(state << 4) | (byte >> 4)]
        if step is None:
            raise HPACKError("EOS inside a Huffman-coded string")
        state, emitted = step
        if emitted:
            out.append(emitted)
        step = table[(state << 4) | (byte & 0x0F)]
        if step is None:
            raise HPACKError("EOS inside a Huffman-coded string")
        state, emitted = step
        if emitted:
            out.append(emitted)
    if not final[state]:
        raise HPACKError("bad padding of a Huffman-coded string")
    return b"".join(out)


def encode_integer(value: int, bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1: `value` on a `bits`-bit prefix of a first byte carrying `flags`."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_integer(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    limit = (1 << bits) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise HPACKError("truncated or oversized integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HPACKError("truncated header block")
    first = data[pos]
    if first < 0x7F:  # not Huffman-coded, its length in the one byte: the usual case
        end = pos + 1 + first
        if end > len(data):
            raise HPACKError("truncated string literal")
        return data[pos + 1:end], end
    huffman = first & 0x80
    length, pos = _decode_integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HPACKError("truncated string literal")
    raw = data[pos:end]
    return (huffman_decode(raw) if huffman else raw), end


def _literal(flags: int, bits: int, name_index: int, name: bytes, value: bytes) -> bytes:
    """A literal field (RFC 7541 §6.2): the name by index when it has one, raw strings."""
    if name_index:
        head = encode_integer(name_index, bits, flags)
    else:
        head = bytes((flags,)) + encode_integer(len(name), 7, 0) + name
    return head + encode_integer(len(value), 7, 0) + value


class Encoder:
    """HPACK for our requests: a header already in the static or dynamic table is an index;
    a new one is added to the dynamic table (literal with incremental indexing) unless it is
    marked never indexed. A header's representation is kept until the table changes (every
    push of a fan-out encodes its shared headers with one dictionary lookup each)."""

    def __init__(self, max_size: int = HEADER_TABLE_SIZE):
        self.max_size = max_size
        self.size = 0
        self.entries: collections.deque[tuple[bytes, bytes, int]] = collections.deque()  # newest first
        self.where: dict[tuple[bytes, bytes], int] = {}  # entry → its insertion number
        self.inserted = 0
        self.cache: dict[tuple[bytes, bytes], bytes] = {}  # representations valid for the current table
        self.size_update: int | None = None  # to announce at the start of the next block

    def resize(self, setting: int) -> None:
        """The server's SETTINGS_HEADER_TABLE_SIZE: our table stays within it."""
        size = min(setting, HEADER_TABLE_SIZE)
        if size != self.max_size:
            self.max_size = size
            self._evict(0)
            self.size_update = size
            self.cache.clear()

    def encode(self, headers) -> bytes:
        cache = self.cache
        parts = []
        if self.size_update is not None:
            parts.append(encode_integer(self.size_update, 5, 0x20))
            self.size_update = None
        for header in headers:
            representation = cache.get(header) if header.__class__ is tuple else None
            parts.append(representation if representation is not None else self._field(header))
        return b"".join(parts)

    def _field(self, header) -> bytes:
        name, value = header
        if isinstance(header, NeverIndexedHeaderTuple):
            name_index = _STATIC_NAME.get(name, 0)
            if 0 < name_index < 0x0F and len(value) < 0x7F:  # `:path`, the usual case
                return bytes((0x10 | name_index, len(value))) + value
            return _literal(0x10, 4, name_index, name, value)
        key = (name, value)
        index = _STATIC_FULL.get(key)
        if index is None:
            number = self.where.get(key)
            if number is not None:
                index = 62 + self.inserted - 1 - number
        if index is not None:
            representation = encode_integer(index, 7, 0x80)
            if header.__class__ is tuple:
                self.cache[key] = representation
            return representation
        size = len(name) + len(value) + 32
        name_index = _STATIC_NAME.get(name, 0)
        if size > self.max_size:  # would empty the table: sent as is, not indexed
            return _literal(0x00, 4, name_index, name, value)
        representation = _literal(0x40, 6, name_index, name, value)
        self._evict(size)
        self.entries.appendleft((name, value, size))
        self.where[key] = self.inserted
        self.inserted += 1
        self.size += size
        self.cache.clear()  # every dynamic index moved by one
        return representation

    def _evict(self, room: int) -> None:
        while self.entries and self.size + room > self.max_size:
            name, value, size = self.entries.pop()
            self.size -= size
            number = self.inserted - 1 - (len(self.entries))  # the evicted entry's insertion number
            if self.where.get((name, value)) == number:
                del self.where[(name, value)]
            self.cache.clear()


class Decoder:
    """HPACK for the answers: indexed fields, literals (raw or Huffman-coded), the dynamic
    table within our SETTINGS_HEADER_TABLE_SIZE (the default, 4096) and size updates."""

    def __init__(self, max_size: int = 4096, max_list: int = MAX_HEADER_LIST):
        self.limit = self.max_size = max_size
        self.max_list = max_list
        self.entries: collections.deque[tuple[bytes, bytes]] = collections.deque()  # newest first
        self.size = 0

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        pos, end, total = 0, len(data), 0
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed (§6.1)
                if byte != 0xFF:
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = _decode_integer(data, pos, 7)
                header = self._get(index)
            elif byte & 0x40:  # literal with incremental indexing (§6.2.1)
                index, pos = _decode_integer(data, pos, 6)
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = _decode_string(data, pos)
                value, pos = _decode_string(data, pos)
                header = (name, value)
                self._add(name, value)
            elif byte & 0x20:  # dynamic table size update (§6.3): only before the first field
                if headers:
                    raise HPACKError("a table size update after a header field")
                size, pos = _decode_integer(data, pos, 5)
                if size > self.limit:
                    raise HPACKError(f"table size update to {size}, over our {self.limit}")
                self.max_size = size
                self._fit(0)
                continue
            else:  # literal without indexing or never indexed (§6.2.2, §6.2.3)
                index = byte & 0x0F
                if index == 0x0F:
                    index, pos = _decode_integer(data, pos, 4)
                else:
                    pos += 1
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = _decode_string(data, pos)
                value, pos = _decode_string(data, pos)
                header = (name, value)
            total += len(header[0]) + len(header[1]) + 32
            if total > self.max_list:
                raise HPACKError("header list over its limit")
            headers.append(header)
        return headers

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= 61:
            return STATIC_TABLE[index - 1]
        if 61 < index <= 61 + len(self.entries):
            return self.entries[index - 62]
        raise HPACKError(f"no table entry {index}")

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        if size > self.max_size:
            self.entries.clear()
            self.size = 0
            return
        self._fit(size)
        self.entries.appendleft((name, value))
        self.size += size

    def _fit(self, room: int) -> None:
        while self.entries and self.size + room > self.max_size:
            name, value = self.entries.pop()
            self.size -= len(name) + len(value) + 32


# --- requests and answers -------------------------------------------------------------------


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
    """One request: `on_done(self)` once, on the loop, when `response` or `error` is set
    (unless its caller cancelled it). `done` is set before."""

    __slots__ = ("headers", "body", "on_done", "connection", "stream_id", "sent", "window", "received",
                 "status", "response_headers", "data", "response", "error", "done")

    def __init__(self, headers: list[tuple[bytes, bytes]], body: bytes, on_done: Callable[[Request], None]):
        self.headers, self.body, self.on_done = headers, body, on_done
        self.response: Response | None = None
        self.error: HTTP2Error | None = None
        self.done = False
        self.reset()

    def reset(self) -> None:
        """Not on a stream (yet, or again)."""
        self.connection: Connection | None = None
        self.stream_id: int | None = None
        self.sent = 0       # bytes of the body sent
        self.window = 0     # what the stream may still send
        self.received = 0   # body bytes received since our last WINDOW_UPDATE for the stream
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] | tuple = ()
        self.data: list[bytes] | None = None  # the answer's body, once it has one

    def finish(self, response: Response | None = None, error: HTTP2Error | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.response, self.error = response, error
        try:
            self.on_done(self)
        except Exception:
            log.exception("http2 request callback failed")


class Client:
    """Requests to one origin over one HTTP/2 connection (module docstring). Lives on one
    asyncio loop; `request` is all a user needs, `close` at the end. `max_streams`: the
    most streams open at once, whatever the server allows."""

    def __init__(self, url: str, *, ca_file: str | None = None, connect_timeout: float = 10.0,
                 max_streams: int = 1000):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"http:// or https:// only, not {url}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.scheme = parts.scheme.encode()
        self.authority = parts.netloc.encode()
        self.connect_timeout = connect_timeout
        self.max_streams = max_streams
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
        future = asyncio.get_running_loop().create_future()

        def done(request: Request) -> None:
            if not future.done():
                if request.error is not None:
                    future.set_exception(request.error)
                else:
                    future.set_result(request.response)
        request = Request(headers, body, done)
        self.submit(request)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(request)
            raise

    def submit(self, request: Request) -> None:
        """Start `request`; its `on_done` follows on the loop (at once if the client is closed)."""
        if self.closed:
            request.finish(error=ConnectionLost("client closed"))
            return
        connection = self.connection
        if connection is not None and connection.usable:
            connection.add(request)
            return
        self.waiting.append(request)
        if self.connecting is None:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    def cancel(self, request: Request) -> None:
        """The caller gave up (a timeout): no `on_done`; its stream, if it has one, is reset."""
        request.done = True
        if request.connection is not None:
            request.connection.cancel(request)
        # Not on a stream: skipped where it waits (it is done).

    def resubmit(self, requests) -> None:
        """Requests a connection could not send (GOAWAY, refused, lost before sending): again."""
        for request in requests:
            if not request.done:
                request.reset()
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
                request.finish(error=error)
            return
        self.connecting = None
        self.connection = connection
        self.connections_made += 1
        waiting, self.waiting = self.waiting, collections.deque()
        for request in waiting:
            if not request.done:
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
    """One HTTP/2 connection: frames in and out, the streams open on it."""

    def __init__(self, client: Client):
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future = self.loop.create_future()  # the server's first SETTINGS came
        self.gone: asyncio.Future = self.loop.create_future()  # the transport is closed
        self.encoder, self.decoder = Encoder(), Decoder()
        self.pending: collections.deque[Request] = collections.deque()  # for a stream
        self.streams: dict[int, Request] = {}  # open streams
        self.blocked: dict[int, Request] = {}  # streams with body left, waiting for the window
        self.next_stream_id = 1
        self.remote_max_streams = MAX_STREAM_ID  # unlimited until the server's SETTINGS say
        self.initial_window = DEFAULT_WINDOW  # the server's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = DEFAULT_FRAME_SIZE   # the server's SETTINGS_MAX_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW     # the connection's, for our DATA
        self.received = 0  # DATA bytes on the connection since our last WINDOW_UPDATE
        self.inbox = b""   # received bytes short of a whole frame
        self.header_block: tuple[int, int, list[bytes]] | None = None  # (stream, END_STREAM, fragments)
        self.out: list[bytes] = []  # frames not written yet
        self.usable = True   # takes new requests
        self.lost = False
        self.goaway: int | None = None  # the last stream id of the server's GOAWAY
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
        settings = _SETTING.pack(SETTINGS_ENABLE_PUSH, 0) + _SETTING.pack(SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW)
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, _CODE.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))

    def data_received(self, data: bytes) -> None:
        if self.lost:
            return
        if self.inbox:
            data = self.inbox + data
        pos, end = 0, len(data)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream_id = _FRAME.unpack_from(data, pos)
                length = (high << 8) | low
                if length > DEFAULT_FRAME_SIZE:
                    raise _ProtocolViolation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                stop = pos + 9 + length
                if stop > end:
                    break
                payload = data[pos + 9:stop]
                pos = stop
                stream_id &= 0x7FFFFFFF
                if self.header_block is not None and kind != CONTINUATION:
                    raise _ProtocolViolation(PROTOCOL_ERROR, "a header block not continued")
                if kind == HEADERS:
                    self._on_headers(stream_id, flags, payload)
                elif kind == DATA:
                    self._on_data(stream_id, flags, payload)
                elif kind == WINDOW_UPDATE:
                    self._on_window_update(stream_id, payload)
                elif kind == SETTINGS:
                    self._on_settings(stream_id, flags, payload)
                elif kind == RST_STREAM:
                    self._on_rst_stream(stream_id, payload)
                elif kind == PING:
                    if stream_id or length != 8:
                        raise _ProtocolViolation(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR, "bad PING")
                    if not flags & ACK:
                        self.out.append(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    if stream_id or length < 8:
                        raise _ProtocolViolation(PROTOCOL_ERROR, "bad GOAWAY")
                    last, code = _GOAWAY.unpack_from(payload)
                    self._goaway(last & 0x7FFFFFFF, code)
                elif kind == CONTINUATION:
                    self._on_continuation(stream_id, flags, payload)
                elif kind == PUSH_PROMISE:
                    raise _ProtocolViolation(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
                # PRIORITY and unknown types: ignored (RFC 9113 §5.5, §6.3)
            self.inbox = data[pos:]
        except _ProtocolViolation as violation:
            log.warning("http2 protocol error from %s: %s", self.client.authority.decode(), violation)
            self.out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(0, violation.code)))
            self._flush()
            self.usable = False
            self.transport.close()
            return
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
            request.finish(error=error)
        pending, self.pending = self.pending, collections.deque()
        self.client.resubmit(pending)

    # --- frames in ---

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise _ProtocolViolation(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ProtocolViolation(PROTOCOL_ERROR, "bad padding")
            payload = payload[1:len(payload) - payload[0]]
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise _ProtocolViolation(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags & END_STREAM, payload)
        else:
            self.header_block = (stream_id, flags & END_STREAM, [payload])

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self.header_block is None or self.header_block[0] != stream_id:
            raise _ProtocolViolation(PROTOCOL_ERROR, "CONTINUATION out of place")
        fragments = self.header_block[2]
        fragments.append(payload)
        if sum(map(len, fragments)) > MAX_HEADER_LIST:
            raise _ProtocolViolation(PROTOCOL_ERROR, "header block too long")
        if flags & END_HEADERS:
            _, end_stream, _ = self.header_block
            self.header_block = None
            self._on_header_block(stream_id, end_stream, b"".join(fragments))

    def _on_header_block(self, stream_id: int, end_stream: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block)  # always: the table must follow the server's
        except HPACKError as exc:
            raise _ProtocolViolation(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        request = self.streams.get(stream_id)
        if request is None:
            if not stream_id & 1 or stream_id >= self.next_stream_id:
                raise _ProtocolViolation(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, never opened")
            return  # a stream we reset: its answer is of no use
        if not request.status:
            status = 0
            for name, value in headers:
                if name == b":status":
                    status = int(value) if value.isdigit() else 0
                    break
            if not 100 <= status <= 999:
                self._stream_error(stream_id, request, PROTOCOL_ERROR, "an answer without a valid :status")
                return
            if status < 200:  # informational: the final answer follows
                return
            request.status, request.response_headers = status, headers
        if end_stream:
            self._end(stream_id, request)

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise _ProtocolViolation(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)  # flow control counts the padding too
        self.received += size
        if self.received >= CONNECTION_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, _CODE.pack(self.received)))
            self.received = 0
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ProtocolViolation(PROTOCOL_ERROR, "bad padding")
            payload = payload[1:len(payload) - payload[0]]
        request = self.streams.get(stream_id)
        if request is None:
            if not stream_id & 1 or stream_id >= self.next_stream_id:
                raise _ProtocolViolation(PROTOCOL_ERROR, f"DATA on stream {stream_id}, never opened")
            return
        if not request.status:
            self._stream_error(stream_id, request, PROTOCOL_ERROR, "DATA before the answer's headers")
            return
        if payload:
            if request.data is None:
                request.data = [payload]
            else:
                request.data.append(payload)
        if flags & END_STREAM:
            self._end(stream_id, request)
            return
        request.received += size
        if request.received >= STREAM_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, stream_id, _CODE.pack(request.received)))
            request.received = 0

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolViolation(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong size")
        increment = _CODE.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise _ProtocolViolation(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ProtocolViolation(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            return
        request = self.streams.get(stream_id)
        if request is None:
            return
        request.window += increment
        if not increment or request.window > MAX_WINDOW:
            self._stream_error(stream_id, request, PROTOCOL_ERROR if not increment else FLOW_CONTROL_ERROR,
                               "bad WINDOW_UPDATE")

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise _ProtocolViolation(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        for pos in range(0, len(payload), 6):
            setting, value = _SETTING.unpack_from(payload, pos)
            if setting == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.remote_max_streams = value
            elif setting == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ProtocolViolation(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta, self.initial_window = value - self.initial_window, value
                for request in self.streams.values():
                    request.window += delta
                    if request.window > MAX_WINDOW:
                        raise _ProtocolViolation(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif setting == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise _ProtocolViolation(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.max_frame = value
            elif setting == SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.resize(value)
            elif setting == SETTINGS_ENABLE_PUSH and value > 1:
                raise _ProtocolViolation(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        self.out.append(frame(SETTINGS, ACK, 0))
        if not self.ready.done():
            self.ready.set_result(None)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolViolation(FRAME_SIZE_ERROR, "RST_STREAM of a wrong size")
        if not stream_id:
            raise _ProtocolViolation(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        code = _CODE.unpack(payload)[0]
        request = self.streams.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        if request is not None and not request.done:
            if code == REFUSED_STREAM:
                self.client.resubmit([request])
            else:
                request.finish(error=StreamReset(f"stream reset by the server: {error_name(code)}"))

    def _stream_error(self, stream_id: int, request: Request, code: int, message: str) -> None:
        """The server broke the rules on one stream: reset it, fail its request."""
        log.warning("http2 stream %s from %s: %s", stream_id, self.client.authority.decode(), message)
        self.streams.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        self.out.append(frame(RST_STREAM, 0, stream_id, _CODE.pack(code)))
        request.finish(error=StreamReset(f"{message} ({error_name(code)})"))

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
            self.out.append(frame(RST_STREAM, 0, stream_id, _CODE.pack(CANCEL)))
            self._pump()
            self._schedule_flush()
        # Not on a stream yet: `_pump` skips a request that is done.

    def close(self) -> None:
        self.usable = False
        if self.transport is not None and not self.lost:
            self.out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(0, NO_ERROR)))
            self._flush()
            self.transport.close()

    # --- inside ---

    def _pump(self) -> None:
        """Start pending requests as the stream limits and the window allow; send the bodies
        that waited for a window."""
        if self.lost or not self.ready.done():
            return
        if self.blocked:
            for stream_id, request in list(self.blocked.items()):
                if self._send_body(stream_id, request):
                    del self.blocked[stream_id]
                elif self.send_window <= 0:
                    break
        if not self.usable:
            return
        limit = min(self.remote_max_streams, self.client.max_streams)
        pending, streams, out, encode = self.pending, self.streams, self.out, self.encoder.encode
        while pending and len(streams) < limit:
            request = pending[0]
            if request.done:  # cancelled while waiting
                pending.popleft()
                continue
            body = request.body
            if body and self.send_window < len(body) and streams:
                break  # wait for a WINDOW_UPDATE rather than open a stream that cannot send
            stream_id = self.next_stream_id
            if stream_id > MAX_STREAM_ID:
                self._retire()
                return
            self.next_stream_id = stream_id + 2
            pending.popleft()
            block = encode(request.headers)
            flags = END_HEADERS if body else END_HEADERS | END_STREAM
            if len(block) <= self.max_frame:
                out.append(frame(HEADERS, flags, stream_id, block))
            else:
                self._split_headers(stream_id, flags, block)
            request.stream_id, request.window = stream_id, self.initial_window
            streams[stream_id] = request
            if body:
                if len(body) <= self.send_window and len(body) <= request.window and len(body) <= self.max_frame:
                    out.append(frame(DATA, END_STREAM, stream_id, body))  # the usual case: one frame
                    self.send_window -= len(body)
                    request.window -= len(body)
                    request.sent = len(body)
                elif not self._send_body(stream_id, request):
                    self.blocked[stream_id] = request
            self.unflushed += 1
            if self.unflushed >= FLUSH_EVERY_STREAMS or len(streams) == 1:  # an idle connection's first: at once
                self._flush()

    def _split_headers(self, stream_id: int, flags: int, block: bytes) -> None:
        size = self.max_frame
        chunks = [block[i:i + size] for i in range(0, len(block), size)]
        self.out.append(frame(HEADERS, flags & ~END_HEADERS, stream_id, chunks[0]))
        for i, chunk in enumerate(chunks[1:], 2):
            self.out.append(frame(CONTINUATION, END_HEADERS if i == len(chunks) else 0, stream_id, chunk))

    def _send_body(self, stream_id: int, request: Request) -> bool:
        """Send what the windows allow of the body; True once all of it went."""
        body, sent = request.body, request.sent
        while sent < len(body):
            size = min(self.send_window, request.window, self.max_frame, len(body) - sent)
            if size <= 0:
                request.sent = sent
                return False
            end = sent + size
            self.out.append(frame(DATA, END_STREAM if end == len(body) else 0, stream_id, body[sent:end]))
            self.send_window -= size
            request.window -= size
            sent = end
        request.sent = sent
        return True

    def _end(self, stream_id: int, request: Request) -> None:
        del self.streams[stream_id]
        self.blocked.pop(stream_id, None)
        request.finish(Response(request.status, request.response_headers,
                                b"".join(request.data) if request.data else b""))

    def _goaway(self, last_stream_id: int, code: int) -> None:
        """The server is going away: the streams above last_stream_id, never processed, and
        the requests not yet sent go out again on a new connection; those at or below it may
        still be answered here (else they fail when the connection closes)."""
        log.info("http2 GOAWAY from %s: last stream %s, %s", self.client.authority.decode(), last_stream_id,
                 error_name(code))
        self.goaway = last_stream_id if self.goaway is None else min(self.goaway, last_stream_id)
        self._retire()
        unprocessed = [stream_id for stream_id in self.streams if stream_id > last_stream_id]
        requests = [self.streams.pop(stream_id) for stream_id in unprocessed]
        for stream_id in unprocessed:
            self.blocked.pop(stream_id, None)
        self.client.resubmit(requests)

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
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            if self.transport is not None and not self.lost:
                self.transport.write(data)
