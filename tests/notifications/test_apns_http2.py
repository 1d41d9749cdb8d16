"""notifications.http2 (the HTTP/2 client notifications.apns sends with) against the local
APNs server (simulators.apns), in-process, over h2c and over TLS (ALPN h2): the server's
SETTINGS_MAX_CONCURRENT_STREAMS honoured as it changes, flow control, GOAWAY and a dropped
connection in the middle of a burst, a stream reset by the server, a cancelled request;
then the same failures through notifications.apns, whose retries must deliver every push."""

import asyncio
import time
import uuid

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
