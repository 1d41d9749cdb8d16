"""Voice identities and access tokens end to end (issue 16): a real server mints a Twilio
Access Token over HTTP for a tablet's own voice identity; the embedded simulator, playing
Twilio, accepts it when the tablet's voice SDK registers with it and refuses a tampered,
expired or borrowed one with Twilio's error codes; and a call the tablet answers is
dialled to that identity, the tablet having set no connect target of its own."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from django.conf import settings

from tests.e2e.support import call, error_code, sign_up
from tests.e2e.test_ring_flow import answer, household, legs_to, ok, sim

pytestmark = pytest.mark.e2e


def _token(server, device) -> dict:
    body = ok(call(server, "POST", "/api/v1/devices/me/voice-token", token=device.token))
    assert set(body) == {"token", "identity", "expires_at"}, body
    return body


def _register(server, address: str, access_token: str):
    return call(server, "POST", "/simulator/devices", json={"address": address, "access_token": access_token})


def _tampered(token: str) -> str:
    """The same token with its identity changed and the signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["grants"]["identity"] = "d" + "0" * 32
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_a_token_from_the_server_registers_the_devices_identity_in_the_simulator(ring_server):
    server = ring_server
    account = sign_up(server, "voice")
    tablet = account.register("tablet", name="Kitchen tablet")
    handset = account.register("handset", name="Pixel")
    me = ok(call(server, "GET", "/api/v1/devices/me", token=tablet.token))
    identity = me["voice_identity"]
    assert me["connect"] == {"type": "client", "address": identity, "verified": True}

    issued = _token(server, tablet)
    assert issued["identity"] == identity
    registered = _register(server, f"client:{identity}", issued["token"])
    assert registered.status_code == 200, registered.text
    assert registered.json()["access_token"]["identity"] == identity
    shown = [device for device in sim(server, "GET", "/devices") if device["address"] == f"client:{identity}"]
    assert shown and shown[0]["access_token"]["identity"] == identity

    # Refused as Twilio refuses them (https://www.twilio.com/docs/api/errors/<code>), 401:
    refusals = {
        "20107": _tampered(issued["token"]),  # a changed claim breaks the signature
        "20104": jwt.encode(  # expired, signed with the right key
            {**jwt.decode(issued["token"], options={"verify_signature": False}),
             "nbf": int(time.time()) - 120, "exp": int(time.time()) - 60},
            settings.TWILIO_API_KEY_SECRET, algorithm="HS256", headers={"cty": "twilio-fpa;v=1"}),
        "20101": "not-a-token",
    }
    for code, bad in refusals.items():
        refused = _register(server, f"client:{identity}", bad)
        assert refused.status_code == 401, (code, refused.text)
        assert error_code(refused) == code, refused.text
    # Another device's identity: the grant is not for it.
    other = account.register("web", platform="web")
    other_identity = ok(call(server, "GET", "/api/v1/devices/me", token=other.token))["voice_identity"]
    borrowed = _register(server, f"client:{other_identity}", issued["token"])
    assert borrowed.status_code == 401 and error_code(borrowed) == "20106", borrowed.text

    # A handset has no voice identity; a revoked tablet gets no more tokens.
    refused = call(server, "POST", "/api/v1/devices/me/voice-token", token=handset.token)
    assert refused.status_code == 403 and error_code(refused) == "no_voice_identity"
    assert call(server, "DELETE", "/api/v1/devices/me", token=tablet.token).status_code == 204
    revoked = call(server, "POST", "/api/v1/devices/me/voice-token", token=tablet.token)
    assert revoked.status_code == 401, revoked.text


def test_a_call_is_dialled_to_the_identity_the_token_registered(ring_server):
    server = ring_server
    home = household(server)
    tablet = home.account.register("tablet", name="Tablet without a target of its own")
    issued = _token(server, tablet)
    client = f"client:{issued['identity']}"
    assert _register(server, client, issued["token"]).status_code == 200

    ring = home.ring()
    answered = ok(answer(server, tablet, ring.id))
    assert answered["answered_by"] == tablet.id
    home.carrier(ring.carrier_id, "reject")
    ok(home.handset_event(ring.id, "rejected"))
    connected = home.wait_state(ring.id, "connected")
    assert connected["answered_by"] == tablet.id
    legs = [leg for leg in legs_to(server, client) if leg["answered_at"]]
    assert len(legs) == 1, legs_to(server, client)
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")
