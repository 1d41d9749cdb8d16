"""The README's walk-through for a new user, against a running server."""

import pytest

from tests.e2e.support import (
    SERVER_NUMBER,
    assert_online,
    call,
    error_code,
    eventually,
    hello,
    sign_up,
    ws_connect,
)

pytestmark = pytest.mark.e2e


def test_a_new_user_sets_up_a_handset_a_line_and_a_tablet_that_goes_online_and_offline(server):
    # Sign up and register the handset with the password.
    account = sign_up(server, "walker")
    handset = account.register("handset", name="Pixel")

    # Register the handset's line: it gets the server number and the MMI codes.
    response = call(server, "POST", "/api/v1/lines", token=handset.token, json={"number": "+15551234567"})
    assert response.status_code == 201, response.text
    line = response.json()
    assert line["number"] == "+15551234567"
    assert line["server_number"] == SERVER_NUMBER
    assert line["forwarding"]["state"] == "unverified"
    assert line["mmi"] == {"register": f"**67*{SERVER_NUMBER}#", "interrogate": "*#67#", "erase": "##67#"}

    # The handset's *#67# says calls forward to the server number: active.
    response = call(server, "POST", f"/api/v1/lines/{line['id']}/forwarding", token=handset.token,
                    json={"state": "active", "target": SERVER_NUMBER})
    assert response.status_code == 200, response.text
    assert response.json()["forwarding"]["state"] == "active"
    assert response.json()["forwarding"]["target"] == SERVER_NUMBER
    assert response.json()["forwarding"]["verified_at"]

    # Forwarding to some other number is not ours: mismatch.
    response = call(server, "POST", f"/api/v1/lines/{line['id']}/forwarding", token=handset.token,
                    json={"state": "active", "target": "+15559876543"})
    assert response.status_code == 200, response.text
    assert response.json()["forwarding"]["state"] == "mismatch"

    # The handset shows a pairing code; the tablet joins with it, without the password.
    response = call(server, "POST", "/api/v1/pairing-codes", token=handset.token)
    assert response.status_code == 201, response.text
    code = response.json()["code"]
    assert response.json()["expires_at"]
    tablet_device = {"name": "Kitchen tablet", "kind": "tablet", "platform": "android"}
    response = call(server, "POST", "/api/v1/devices", json={"pairing_code": code, "device": tablet_device})
    assert response.status_code == 201, response.text
    tablet = response.json()["device"]
    tablet_token = response.json()["token"]
    assert tablet["kind"] == "tablet"
    assert tablet["online"] is False

    # The code was single use.
    response = call(server, "POST", "/api/v1/devices",
                    json={"pairing_code": code, "device": {**tablet_device, "name": "Second tablet"}})
    assert response.status_code == 400, response.text
    assert error_code(response) == "invalid_pairing_code"

    # Both devices belong to the same user.
    response = call(server, "GET", "/api/v1/devices", token=handset.token)
    assert response.status_code == 200, response.text
    assert {device["id"] for device in response.json()} == {handset.id, tablet["id"]}

    # The tablet opens its socket: hello, and it is online for the user's devices.
    with ws_connect(server, tablet_token) as ws:
        frame = hello(ws)
        assert frame["device"]["id"] == tablet["id"]
        assert_online(server, handset.token, tablet["id"], True)
        assert_online(server, handset.token, handset.id, False)

    # The socket is gone: offline again, shortly.
    eventually(lambda: assert_online(server, handset.token, tablet["id"], False))
