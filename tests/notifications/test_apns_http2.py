"""notifications.http2 (the HTTP/2 client notifications.apns sends with) against the local
APNs server (simulators.apns), in-process, over h2c and over TLS (ALPN h2): the server's
SETTINGS_MAX_CONCURRENT_STREAMS honoured as it changes, flow control, GOAWAY and a dropped
connection in the middle of a burst, a stream reset by the server, a cancelled request;
then the same failures through notifications.apns, whose retries must deliver every push."""

import asyncio
import random
import time
import uuid

import hpack
import jwt
import pytest

from notifications import apns, http2
from simulators.apns import FakeAPNs
from tests.notifications.conftest import Results


@pytest.fixture(params=["h2c", "tls"])
def server(request, tmp_path):
    fake = FakeAPNs(latency_ms=30, tls=request.param == "tls", ca_file=tmp_path / "ca.pem",
                    first_max_streams=1, max_streams=8)
    fake.write_key(tmp_path / "AuthKey.p8")
    fake.start()
    yield fake
    fake.stop()


def token(i: int) -> str:
    return f"{i:064x}"


def headers(fake: FakeAPNs, client: http2.Client, device_token: str) -> list[tuple[bytes, bytes]]:
    bearer = jwt.encode({"iss": fake.team_id, "iat": int(time.time())}, fake.key_file.read_text(),
                        algorithm="ES256", headers={"kid": fake.key_id})
    return [(b":method", b"POST"), (b":scheme", client.scheme), (b":authority", client.authority),
            (b":path", f"/3/device/{device_token}".encode()), (b"authorization", f"bearer {bearer}".encode()),
            (b"apns-push-type", b"voip"), (b"apns-topic", f"{fake.bundle_id}.voip".encode())]


def warm(fake: FakeAPNs):
    """One push before the burst: the server's stream limit is raised (past first_max_streams)."""
    async def before(client):
        await client.request(headers(fake, client, token(999)), b"{}")
    return before


def burst(fake: FakeAPNs, n: int, body: bytes = b'{"type":"call.ringing"}', before=None):
    """n requests at once on one client; [(token, status or the exception)], the client."""
    async def go():
        client = http2.Client(fake.url, ca_file=str(fake.ca_file) if fake.tls else None)
        try:
            if before is not None:
                await before(client)
            answers = await asyncio.gather(
                *(client.request(headers(fake, client, token(i)), body) for i in range(n)), return_exceptions=True)
            return [(token(i), a.status if isinstance(a, http2.Response) else a) for i, a in enumerate(answers)], \
                client.connections_made
        finally:
            await client.close()
    return asyncio.run(go())


def test_the_servers_stream_limit_is_honoured_as_it_rises(server):
    answers, connections = burst(server, 40)

    assert [status for _, status in answers] == [200] * 40 and connections == 1
    # One stream until the first push is accepted (first_max_streams=1), then up to 8: never more.
    assert 1 < server.peak_streams <= 8


def test_bodies_wait_for_the_flow_control_window(server):
    body = b'{"blob":"' + b"x" * 5000 + b'"}'  # 40 x 5 KB: more than the 64 KB initial window

    answers, _ = burst(server, 40, body)

    assert [status for _, status in answers] == [200] * 40
    assert all(len(r.payload["blob"]) == 5000 for r in server.accepted())


def test_goaway_mid_burst_sends_the_unprocessed_streams_again_on_a_new_connection(server):
    server.max_streams = 50
    server.fail("goaway", token=token(10), times=1)

    answers, connections = burst(server, 20, before=warm(server))

    # GOAWAY names the stream before token 10's as the last processed: tokens 10 and later
    # went out again on a second connection and were answered; the earlier ones were in
    # progress (30 ms latency) and fail as on any lost connection (notifications.apns retries them).
    assert connections == 2
    assert [status for _, status in answers[10:]] == [200] * 10
    assert all(isinstance(status, http2.ConnectionLost) for _, status in answers[:10])


def test_a_connection_dropped_mid_burst_fails_what_was_in_flight_and_the_next_request_reconnects(server):
    server.max_streams = 50
    server.fail("drop", token=token(3), times=1)
    answers, connections = burst(server, 10, before=warm(server))

    # All ten were in flight when the server dropped the connection at token 3's request.
    assert all(isinstance(status, http2.ConnectionLost) for _, status in answers) and connections == 1

    again, _ = burst(server, 5)
    assert [status for _, status in again] == [200] * 5


def test_a_stream_reset_by_the_server_fails_that_request_only_and_refused_is_sent_again(server):
    server.max_streams = 50
    server.fail("reset", token=token(2), times=1)
    server.fail("refused", token=token(4), times=1)

    answers, connections = burst(server, 6, before=warm(server))

    statuses = dict(answers)
    assert isinstance(statuses.pop(token(2)), http2.StreamReset)
    assert list(statuses.values()) == [200] * 5 and connections == 1  # token 4 refused, then sent again


def test_a_cancelled_request_resets_its_stream_and_the_connection_goes_on(server):
    server.fail("timeout", token=token(1))

    async def go():
        client = http2.Client(server.url, ca_file=str(server.ca_file) if server.tls else None)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.request(headers(server, client, token(1)), b"{}"), 0.3)
            answer = await client.request(headers(server, client, token(2)), b"{}")
            return answer.status, client.connections_made
        finally:
            await client.close()

    assert asyncio.run(go()) == (200, 1)


def test_an_https_server_without_our_ca_is_refused(tmp_path):
    server = FakeAPNs(tls=True, ca_file=tmp_path / "ca.pem")
    server.write_key(tmp_path / "AuthKey.p8")

    async def go():
        client = http2.Client(server.url)  # the system's CAs do not know the local server's
        try:
            await client.request(headers(server, client, token(1)), b"{}")
        finally:
            await client.close()

    with server, pytest.raises(http2.ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(go())


# --- the same failures through notifications.apns: every push delivered ---------------------


@pytest.fixture
def sender(server, settings):
    for name, value in server.settings().items():
        setattr(settings, name, value)
    settings.APNS_HTTP_TIMEOUT_SECONDS = 2.0
    yield server
    apns.shutdown()


def send(n: int, deadline: float = 5.0):
    results = Results()
    pushes = [apns.Push(device_id=str(uuid.uuid4()), token=token(i), payload={"type": "call.ringing"},
                        collapse_key="call-1", deadline=time.time() + deadline, voip=True) for i in range(n)]
    apns.send_many(pushes, results)
    return {r.push.token: r for r in results.wait(n, 15.0)}


@pytest.mark.parametrize("failure", ["goaway", "drop", "reset", "refused"])
def test_apns_delivers_every_push_of_a_burst_through_a_transport_failure(sender, failure):
    sender.max_streams = 50
    send(1)  # the connection is up and the limit raised
    sender.fail(failure, token=token(5), times=1)

    results = send(20)

    assert all(r.ok for r in results.values()), {t: r.error for t, r in results.items() if not r.ok}
    assert len({r.token for r in sender.accepted()}) == 20
    if failure == "refused":
        assert results[token(5)].attempts == 1  # sent again by the client, not a retry
    if failure == "reset":
        assert results[token(5)].attempts == 2
    if failure in ("goaway", "drop"):
        assert sender.connections == 2


# --- HPACK, checked against hpack (the codec h2, httpx and aioapns use) ------------------------


def test_our_header_blocks_decode_with_hpack_to_what_was_sent_as_the_table_fills_and_shrinks():
    encoder, reference = http2.Encoder(), hpack.Decoder()
    for i in range(300):
        sent = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.push.apple.com"),
                http2.unindexed(b":path", f"/3/device/{i:064x}".encode()),
                (b"authorization", b"bearer " + f"token-{i // 100}.".encode() * 20),
                (b"apns-expiration", str(1_700_000_000 + i // 7).encode()),
                (b"apns-collapse-id", f"call-{i % 13}".encode()), (b"content-type", b"application/json")]
        if i == 150:
            encoder.resize(256)  # the server's SETTINGS_HEADER_TABLE_SIZE went down
        received = reference.decode(encoder.encode(sent), raw=True)
        assert received == sent
        assert isinstance(received[3], hpack.NeverIndexedHeaderTuple)  # :path never indexed
        if i == 100:  # once in the table, the shared headers are one byte each; :path a literal
            again = encoder.encode(sent)
            assert len(again) == 7 + 2 + len(sent[3][1]) and reference.decode(again, raw=True) == sent


def test_we_decode_what_hpack_encodes_huffman_literals_indexing_and_size_updates():
    rng = random.Random(17)
    reference, decoder = hpack.Encoder(), http2.Decoder()
    for i in range(400):
        sent = [(b":status", rng.choice([b"200", b"400", b"410", b"503"])),
                (b"apns-id", str(uuid.UUID(int=rng.getrandbits(128))).upper().encode()),
                (b"content-type", b"application/json"),
                (b"x-any-byte", bytes(rng.randrange(256) for _ in range(rng.randrange(60))))]
        if i % 50 == 7:
            sent.append(hpack.NeverIndexedHeaderTuple(b"x-secret", b"s%d" % i))
        if i == 200:
            reference.header_table_size = 64  # a size update at the start of the next block
        block = reference.encode(sent, huffman=bool(i % 2))
        assert decoder.decode(block) == [tuple(field) for field in sent]


def test_huffman_strings_decode_every_byte_and_bad_padding_or_eos_is_a_compression_error():
    every_byte = bytes(range(256)) * 2
    block = hpack.Encoder().encode([(b"x", every_byte)], huffman=True)
    assert http2.Decoder().decode(block) == [(b"x", every_byte)]
    for bad in (b"\x18",          # 'a' (00011) padded with 0s, not 1s
                b"\xff",          # 8 bits of padding: more than 7
                b"\xff\xff\xff\xfc"):  # EOS (30 1s) inside the string
        with pytest.raises(http2.HPACKError):
            http2.huffman_decode(bad)


# --- frames the client must handle, on a wire of our own ----------------------------------------


class Wire:
    """A transport that keeps what the client writes."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False

    def write(self, data):
        self.data += data

    def close(self):
        self.closed = True

    def get_extra_info(self, name):
        return None

    def frames(self):
        """(type, flags, stream, payload) of everything written after the client's preface."""
        data, found = bytes(self.data), []
        pos = len(http2.PREFACE) if data.startswith(http2.PREFACE) else 0
        while pos < len(data):
            length = int.from_bytes(data[pos:pos + 3], "big")
            kind, flags = data[pos + 3], data[pos + 4]
            stream = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            found.append((kind, flags, stream, data[pos + 9:pos + 9 + length]))
            pos += 9 + length
        self.data.clear()
        return found


def on_wire(go):
    """Run go(connection, wire, finished) on a loop: a connection to http://127.0.0.1:9 whose
    first SETTINGS came (the server's), on a Wire; `finished` collects the requests done."""
    async def run():
        client = http2.Client("http://127.0.0.1:9", connect_timeout=0.5)
        connection, wire = http2.Connection(client), Wire()
        connection.connection_made(wire)
        connection.data_received(http2.frame(http2.SETTINGS, 0, 0))
        client.connection = connection
        wire.frames()
        finished = []
        try:
            return await go(connection, wire, finished)
        finally:
            await client.close(0.1)
    return asyncio.run(run())


def post(finished, body=b"{}"):
    return http2.Request([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:9"),
                          http2.unindexed(b":path", b"/3/device/" + b"ab" * 32)], body, finished.append)


def answer(stream_id, status=b"200"):
    block = http2.Encoder().encode([(b":status", status), (b"apns-id", b"ID-%d" % stream_id)])
    return http2.frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, stream_id, block)


def test_the_client_answers_ping_follows_the_window_the_server_sets_and_sends_the_rest_on_window_update():
    async def go(connection, wire, finished):
        connection.data_received(http2.frame(http2.PING, 0, 0, b"12345678")
                                 + http2.frame(http2.SETTINGS, 0, 0, bytes.fromhex("0004 0000000a")))  # window 10
        request = post(finished, b"x" * 25)
        connection.client.submit(request)
        await asyncio.sleep(0)
        first = wire.frames()
        connection.data_received(http2.frame(http2.WINDOW_UPDATE, 0, 1, (100).to_bytes(4, "big")))
        rest = wire.frames()
        connection.data_received(answer(1))
        return first, rest, finished

    first, rest, finished = on_wire(go)
    assert (http2.PING, http2.ACK, 0, b"12345678") in first and (http2.SETTINGS, http2.ACK, 0, b"") in first
    data = [(flags, payload) for kind, flags, stream, payload in first + rest if kind == http2.DATA]
    assert data == [(0, b"x" * 10), (http2.END_STREAM, b"x" * 15)]  # 10 bytes, then the rest after the update
    assert [r.response.status for r in finished] == [200]


def test_after_goaway_the_streams_it_names_are_still_answered_and_the_later_ones_go_out_again():
    async def go(connection, wire, finished):
        requests = [post(finished) for _ in range(3)]
        for request in requests:
            connection.client.submit(request)
        await asyncio.sleep(0)
        assert [stream for kind, _, stream, _ in wire.frames() if kind == http2.HEADERS] == [1, 3, 5]
        connection.data_received(http2.frame(http2.GOAWAY, 0, 0, (3).to_bytes(4, "big") + bytes(4)))
        again = list(connection.client.waiting)  # for a new connection
        connection.data_received(answer(1) + answer(3))
        return requests, again, finished, wire.closed

    requests, again, finished, closed = on_wire(go)
    assert again == [requests[2]] and [r.response.status for r in finished[:2]] == [200, 200]
    assert closed  # its last stream answered, the connection that went away is closed


def test_a_frame_that_breaks_the_protocol_ends_the_connection_with_goaway_and_its_code():
    async def go(connection, wire, finished):
        connection.client.submit(post(finished))
        await asyncio.sleep(0)
        wire.frames()
        connection.data_received(http2.frame(http2.HEADERS, http2.END_HEADERS, 1, b"\xbf"))  # no entry 63
        return wire.frames(), wire.closed

    frames, closed = on_wire(go)
    assert frames == [(http2.GOAWAY, 0, 0, bytes(4) + http2.COMPRESSION_ERROR.to_bytes(4, "big"))] and closed


def test_a_header_block_longer_than_a_frame_goes_in_continuation_frames_and_the_server_reads_it(server):
    big = (b"x-padding", b"p" * 40_000)  # over the 16 KB frame: HEADERS + CONTINUATION + CONTINUATION

    async def go():
        client = http2.Client(server.url, ca_file=str(server.ca_file) if server.tls else None)
        try:
            return (await client.request(headers(server, client, token(7)) + [big], b"{}")).status
        finally:
            await client.close()

    assert asyncio.run(go()) == 200
    assert server.accepted(token(7))[0].headers["x-padding"] == "p" * 40_000
