"""The local APNs server's HTTP/2 (simulators.apns speaks it without the h2 library): frames
written by hand here, with hpack (h2's codec) for the header blocks, over h2c: a stream over
SETTINGS_MAX_CONCURRENT_STREAMS is refused and never processed, a malformed request is reset
and the connection goes on, PING is answered, a header block may come in CONTINUATION frames,
Huffman-coded and indexed fields decode as hpack encodes them; `connect_latency_ms` holds a
new connection's first flight back."""

import socket
import struct
import time

import hpack
import jwt
import pytest

from simulators.apns import FakeAPNs, RequestDecoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4
TOKEN = "ab" * 32


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


class Peer:
    """A raw h2c connection to the fake: frames out, frames and decoded answers in."""

    def __init__(self, fake: FakeAPNs):
        self.sock = socket.create_connection((fake.host, fake.port), timeout=5)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.fake = fake

    def close(self):
        self.sock.close()

    def request(self, stream, fields, body=b"", *, split=None, end=True):
        """HEADERS (+ CONTINUATION after `split` bytes), then the body in one DATA frame,
        which ends the stream unless `end` is False (the request stays open)."""
        block = self.encoder.encode(fields)
        if split:
            self.sock.sendall(frame(HEADERS, 0, stream, block[:split])
                              + frame(CONTINUATION, END_HEADERS, stream, block[split:]))
        else:
            self.sock.sendall(frame(HEADERS, END_HEADERS, stream, block))
        self.sock.sendall(frame(DATA, END_STREAM if end else 0, stream, body))

    def push_fields(self, token=TOKEN, **extra):
        bearer = jwt.encode({"iss": self.fake.team_id, "iat": int(time.time())}, self.fake.key_file.read_text(),
                            algorithm="ES256", headers={"kid": self.fake.key_id})
        return [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
                (":path", f"/3/device/{token}"), ("authorization", f"bearer {bearer}"),
                ("apns-push-type", "voip"), ("apns-topic", f"{self.fake.bundle_id}.voip"), *extra.items()]

    def frames(self, until):
        """Frames until `until(frames)` holds: (type, flags, stream, payload); HEADERS decoded."""
        found = []
        while not until(found):
            while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
                data = self.sock.recv(65536)
                assert data, f"the server closed the connection after {found}"
                self.buffer += data
            length = int.from_bytes(self.buffer[:3], "big")
            kind, flags = self.buffer[3], self.buffer[4]
            stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload, self.buffer = self.buffer[9:9 + length], self.buffer[9 + length:]
            if kind == HEADERS:
                payload = dict(self.decoder.decode(payload, raw=True))
            found.append((kind, flags, stream, payload))
        return found


def answered(stream):
    return lambda frames: any(kind == HEADERS and s == stream for kind, _, s, _ in frames)


@pytest.fixture
def fake(tmp_path):
    server = FakeAPNs(first_max_streams=1, max_streams=4)
    server.write_key(tmp_path / "AuthKey.p8")
    with server:
        yield server


def test_a_stream_over_the_concurrent_limit_is_refused_and_never_processed(fake):
    peer = Peer(fake)
    try:
        peer.request(1, peer.push_fields(), b'{"aps"', end=False)  # open: its body goes on
        peer.request(3, peer.push_fields("cd" * 32), b'{"aps": {}}')  # a second stream: over the limit of 1
        frames = peer.frames(lambda found: any(kind == RST_STREAM for kind, *_ in found))
        assert (RST_STREAM, 0, 3, (7).to_bytes(4, "big")) in frames  # REFUSED_STREAM
        peer.sock.sendall(frame(DATA, END_STREAM, 1, b': {}}'))
        assert [payload for kind, _, stream, payload in peer.frames(answered(1))
                if kind == HEADERS][0][b":status"] == b"200"
        assert [r.token for r in fake.requests()] == [TOKEN]  # the refused one never processed
    finally:
        peer.close()


def test_a_malformed_request_is_reset_and_the_connection_goes_on(fake):
    peer = Peer(fake)
    try:
        peer.request(1, [*peer.push_fields(), ("X-Upper", "no")], b'{"aps": {}}')  # field names are lower-case
        peer.request(3, [field for field in peer.push_fields() if field[0] != ":path"], b'{"aps": {}}')
        peer.request(5, peer.push_fields(), b'{"aps": {}}')
        frames = peer.frames(answered(5))
        resets = [(stream, int.from_bytes(payload, "big")) for kind, _, stream, payload in frames if kind == RST_STREAM]
        # PROTOCOL_ERROR (1) for each, then STREAM_CLOSED (5) for the DATA that followed on it
        assert resets == [(1, 1), (1, 5), (3, 1), (3, 5)]
        assert [payload for kind, _, stream, payload in frames if kind == HEADERS][0][b":status"] == b"200"
        assert [r.token for r in fake.requests()] == [TOKEN]
    finally:
        peer.close()


def test_ping_is_answered_and_a_header_block_may_come_in_continuation_frames(fake):
    peer = Peer(fake)
    try:
        peer.sock.sendall(frame(PING, 0, 0, b"pingpong"))
        peer.request(1, peer.push_fields(**{"apns-collapse-id": "call-9"}), b'{"aps": {}}', split=20)
        frames = peer.frames(answered(1))
        assert (PING, 1, 0, b"pingpong") in frames
        [received] = fake.accepted(TOKEN)
        assert received.headers["apns-collapse-id"] == "call-9"
    finally:
        peer.close()


def test_the_request_decoder_reads_what_hpack_encodes_huffman_and_indexed_with_size_updates():
    encoder, decoder = hpack.Encoder(), RequestDecoder()
    for i in range(300):
        fields = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/3/device/%064x" % i),
                  (b"authorization", b"bearer " + b"t%d." % (i // 50) * 40), (b"x-any", bytes(range(i % 256)))]
        if i == 120:
            encoder.header_table_size = 100
        assert decoder.decode(encoder.encode(fields, huffman=bool(i % 3))) == fields


def test_connect_latency_holds_the_servers_first_flight_back(tmp_path):
    with FakeAPNs(connect_latency_ms=300) as held, FakeAPNs() as prompt:
        for server in (held, prompt):
            server.write_key(tmp_path / "AuthKey.p8")
        waited = {}
        for name, server in (("held", held), ("prompt", prompt)):  # the same steps without the latency
            started = time.monotonic()
            peer = Peer(server)
            try:
                peer.frames(lambda found: any(kind == SETTINGS for kind, *_ in found))
                waited[name] = time.monotonic() - started
            finally:
                peer.close()
    assert waited["held"] >= 0.3  # never sooner than the latency (a lower bound only: load makes it later)
