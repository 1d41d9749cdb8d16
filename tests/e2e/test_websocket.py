"""The device WebSocket, /ws/v1/, against a running server."""

import time
import uuid
from datetime import datetime

import pytest

from tests.e2e.support import (
    assert_online,
    call,
    close_code,
    devices_by_id,
    error_code,
    hello,
    next_frame,
    presence_of,
    reply,
    sign_up,
    wait_for_frame,
    ws_connect,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def account(server):
    return sign_up(server, "ws")


@pytest.fixture
def tablet(account):
    return account.register("tablet")


def ws_ticket(server, device):
    response = call(server, "POST", "/api/v1/ws-tickets", token=device.token)
    assert response.status_code == 201, response.text
    return response.json()


# Authentication ---------------------------------------------------------------

def test_a_bearer_header_is_greeted_with_hello(server, tablet):
    with ws_connect(server, tablet.token) as ws:
        frame = hello(ws)
    assert frame["device"] == {"id": tablet.id, "name": tablet.name, "kind": "tablet"}
    uuid.UUID(frame["id"])
    assert datetime.fromisoformat(frame["at"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert isinstance(frame["heartbeat"], int)


def test_a_ticket_in_the_query_string_is_greeted_with_hello(server, tablet):
    ticket = ws_ticket(server, tablet)
    assert ticket["expires_in"] > 0
    with ws_connect(server, ticket=ticket["ticket"]) as ws:
        assert hello(ws)["device"]["id"] == tablet.id


def test_reused_ticket_is_closed_with_4401(server, tablet):
    ticket = ws_ticket(server, tablet)["ticket"]
    with ws_connect(server, ticket=ticket) as ws:
        hello(ws)
    with ws_connect(server, ticket=ticket) as ws:  # the handshake itself is accepted
        assert close_code(ws) == (4401, [])


def test_a_socket_without_credentials_is_closed_with_4401(server):
    with ws_connect(server) as ws:
        assert close_code(ws) == (4401, [])


def test_a_wrong_token_is_closed_with_4401(server):
    with ws_connect(server, "not-a-real-device-token") as ws:
        assert close_code(ws) == (4401, [])


def test_a_bogus_ticket_is_closed_with_4401(server):
    with ws_connect(server, ticket="no-such-ticket") as ws:
        assert close_code(ws) == (4401, [])


def test_an_expired_ticket_is_closed_with_4401(server, servers):
    # A second server on the same database, with the shortest ticket life the settings allow.
    short = servers.start(server.database_url, WS_TICKET_TTL_SECONDS=5)
    device = sign_up(short, "expiry").register("web", platform="web")
    ticket = ws_ticket(short, device)
    assert ticket["expires_in"] == 5
    time.sleep(ticket["expires_in"] + 0.5)
    with ws_connect(short, ticket=ticket["ticket"]) as ws:
        assert close_code(ws) == (4401, [])


# Origin -----------------------------------------------------------------------

def test_a_browser_from_a_foreign_origin_is_closed_with_4403(server, tablet):
    with ws_connect(server, tablet.token, origin="https://evil.example") as ws:
        assert close_code(ws) == (4403, [])


def test_a_browser_from_the_same_origin_is_allowed(server, tablet):
    with ws_connect(server, tablet.token, origin=server.base_url) as ws:
        assert hello(ws)["device"]["id"] == tablet.id


# Frames from the client ---------------------------------------------------------

def test_ping_is_answered_with_pong(server, tablet):
    with ws_connect(server, tablet.token) as ws:
        hello(ws)
        ws.send('{"type": "ping"}')
        assert reply(ws)["type"] == "pong"


def test_an_ack_of_an_event_id_is_accepted_silently(server, tablet):
    with ws_connect(server, tablet.token) as ws:
        event_id = hello(ws)["id"]
        ws.send(f'{{"type": "ack", "id": "{event_id}"}}')
        ws.send(f'{{"type": "ack", "id": "{uuid.uuid4()}"}}')
        ws.send('{"type": "ping"}')
        # Nothing in answer to the acks: the next frame is the pong.
        assert reply(ws) == {"type": "pong"}


def test_an_ack_without_a_valid_id_gets_an_error_frame(server, tablet):
    with ws_connect(server, tablet.token) as ws:
        hello(ws)
        ws.send('{"type": "ack", "id": "not-a-uuid"}')
        frame = reply(ws)
        assert frame["type"] == "error"
        assert frame["error"]["code"] == "invalid_ack"
        ws.send('{"type": "ack"}')
        assert reply(ws)["error"]["code"] == "invalid_ack"
        ws.send('{"type": "ping"}')  # still open
        assert reply(ws)["type"] == "pong"


def test_an_unknown_frame_type_gets_an_error_frame_and_the_socket_stays_open(server, tablet):
    with ws_connect(server, tablet.token) as ws:
        hello(ws)
        ws.send('{"type": "subscribe"}')
        frame = reply(ws)
        assert frame["type"] == "error"
        assert frame["error"]["code"] == "unknown_type"
        assert frame["error"]["message"]
        ws.send("this is not json")
        assert reply(ws)["error"]["code"] == "malformed_frame"
        ws.send('{"type": "ping"}')
        assert reply(ws)["type"] == "pong"


# Presence and revocation ----------------------------------------------------------

def test_the_users_other_devices_hear_a_tablet_come_online_and_go_offline(server, account, tablet):
    desktop = account.register("desktop", platform="other")
    stranger = sign_up(server, "stranger").register("desktop", platform="other")
    with ws_connect(server, desktop.token) as desktop_ws, ws_connect(server, stranger.token) as stranger_ws:
        hello(desktop_ws)
        hello(stranger_ws)
        with ws_connect(server, tablet.token) as tablet_ws:
            hello(tablet_ws)
            frame = wait_for_frame(desktop_ws, presence_of(tablet, True))
            assert frame["device"] == {"id": tablet.id, "name": tablet.name, "kind": "tablet"}
            uuid.UUID(frame["id"])
        wait_for_frame(desktop_ws, presence_of(tablet, False))
        assert_online(server, desktop.token, tablet.id, False)
        # Another user's socket heard nothing of it.
        stranger_ws.send('{"type": "ping"}')
        frames = [next_frame(stranger_ws)]
        while frames[-1]["type"] != "pong":
            frames.append(next_frame(stranger_ws))
        assert all(f["type"] != "device.presence" or f["device"]["id"] == stranger.id for f in frames), frames


def test_a_device_that_hangs_up_right_after_hello_is_offline_at_once(server, account, tablet):
    # The server is still sending to the socket (the tablet's own presence) when
    # the client leaves; that must not skip the clean-up that marks it offline.
    handset = account.register("handset")
    with ws_connect(server, handset.token) as handset_ws:
        hello(handset_ws)
        for _ in range(10):
            with ws_connect(server, tablet.token) as ws:
                hello(ws)
            wait_for_frame(handset_ws, presence_of(tablet, False))
            assert_online(server, handset.token, tablet.id, False)


def test_deleting_a_device_closes_its_socket_with_4401_and_its_token_stops_working(server, account, tablet):
    handset = account.register("handset")
    with ws_connect(server, tablet.token) as ws:
        hello(ws)
        assert_online(server, handset.token, tablet.id, True)
        response = call(server, "DELETE", f"/api/v1/devices/{tablet.id}", token=handset.token)
        assert response.status_code == 204, response.text
        code, _frames = close_code(ws)
        assert code == 4401
    response = call(server, "GET", "/api/v1/devices/me", token=tablet.token)
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    assert tablet.id not in devices_by_id(server, handset.token)
    # A revoked device cannot open a socket again either.
    with ws_connect(server, tablet.token) as ws:
        assert close_code(ws) == (4401, [])

