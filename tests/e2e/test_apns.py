"""APNs end to end: a running server (real uvicorn, the embedded provider simulator, the
real notifications.apns over HTTP/2) and the local APNs server (simulators.apns) in this
process, which checks the provider token's ES256 signature and age and the topic against
the push type, as Apple does.

- An iPad (platform ios, kind tablet) that only has APNs tokens, set with PATCH on `me`,
  rings with a PushKit VoIP push carrying Apple's headers.
- When another device answers, the iPad hears `call.answered_elsewhere` as an alert push to
  its alert token, never a VoIP push.
- A PushKit token APNs calls Unregistered is gone after one ring, and the timeline shows it.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.support import Servers, call, devices_by_id, eventually
from tests.e2e.test_ring_flow import answer, describe, find, household, ok

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def apns_server(environment, ring_settings, fake_apns):
    owner = Servers(environment, "apns")
    try:
        yield owner.start(name="apns", **{**ring_settings, **fake_apns.settings()})
    finally:
        owner.close()


def ipad(home, voip: str, alert: str):
    device = home.account.register("tablet", name="iPad", platform="ios")
    body = ok(call(home.server, "PATCH", "/api/v1/devices/me", token=device.token,
                   json={"apns_voip_token": voip, "apns_token": alert}))
    assert (body["apns_voip_registered"], body["apns_registered"]) == (True, True), body
    assert "apns_voip_token" not in body and "apns_token" not in body  # never echoed
    return device


def found(value):
    assert value, "not yet"
    return value


def token(byte: int) -> str:
    return f"{byte:02x}" * 16 + f"{time.time_ns():048x}"[-48:]


def test_an_ipad_rings_with_a_voip_push_and_hears_answered_elsewhere_as_an_alert(apns_server, fake_apns):
    home = household(apns_server)
    voip, alert = token(0xA1), token(0xA2)
    pad = ipad(home, voip, alert)
    tablet = home.tablet()

    ring = home.ring()
    call_id = ring.call["id"]

    [ringing] = eventually(lambda: found(fake_apns.accepted(voip)))
    headers = ringing.headers
    assert headers["apns-push-type"] == "voip"
    assert headers["apns-topic"] == fake_apns.bundle_id + ".voip"
    assert headers["apns-priority"] == "10"
    assert headers["apns-collapse-id"] == call_id
    assert headers[":path"] == f"/3/device/{voip}"
    expires = int(headers["apns-expiration"])
    assert time.time() < expires <= time.time() + 120
    assert ringing.payload["type"] == "call.ringing" and ringing.payload["call_id"] == call_id
    assert ringing.payload["caller"] == ring.caller

    assert answer(apns_server, tablet, call_id).status_code == 200

    alerts = eventually(lambda: found(fake_apns.accepted(alert)))
    assert [(a.payload["type"], a.headers["apns-push-type"], a.headers["apns-topic"]) for a in alerts][0] == \
        ("call.answered_elsewhere", "alert", fake_apns.bundle_id)
    assert "call.answered_elsewhere" not in [r.payload.get("type") for r in fake_apns.requests(voip) if r.payload]
    assert all(r.headers["apns-push-type"] == "voip" for r in fake_apns.requests(voip))
    assert all(r.headers["apns-push-type"] == "alert" for r in fake_apns.requests(alert))

    def timeline_shows_apns():
        timeline = home.get_call(call_id)["timeline"]
        assert find(timeline, "notification_sent", device=pad.id, transport="apns", type="call.ringing"), \
            describe(timeline)
        return timeline
    eventually(timeline_shows_apns)


def test_an_unregistered_voip_token_is_gone_after_one_ring(apns_server, fake_apns):
    home = household(apns_server)
    voip, alert = token(0xB1), token(0xB2)
    pad = ipad(home, voip, alert)
    fake_apns.fail("Unregistered", token=voip)

    ring = home.ring()
    call_id = ring.call["id"]

    eventually(lambda: found(fake_apns.requests(voip)))
    eventually(lambda: found(not devices_by_id(apns_server, pad.token)[pad.id]["apns_voip_registered"]))
    listed = devices_by_id(apns_server, pad.token)[pad.id]
    assert listed["apns_registered"] is True  # the alert token is another token: kept

    def failed_on_timeline():
        timeline = home.get_call(call_id)["timeline"]
        assert find(timeline, "notification_failed", device=pad.id, transport="apns", error="Unregistered"), \
            describe(timeline)
    eventually(failed_on_timeline)
    assert len(fake_apns.requests(voip)) == 1

    # The next ring does not try the dead token again.
    home.ring()
    time.sleep(0.5)
    assert len(fake_apns.requests(voip)) == 1


def test_a_hanging_apns_never_holds_up_the_ring_report(apns_server, fake_apns):
    """The ring report is answered while APNs has not answered the iPad's push yet: the
    fake records a request only once it answers, and this one hangs until the sender gives
    up at its timeout."""
    home = household(apns_server)
    voip, alert = token(0xC1), token(0xC2)
    ipad(home, voip, alert)
    fake_apns.fail("timeout", token=voip)

    ring = home.ring()

    assert ring.instruction == {"action": "keep_ringing", "reason": "policy_on_answer"}  # the iPad counts as reachable
    assert fake_apns.requests(voip) == []  # still hanging when the report was answered
    assert home.get_call(ring.call["id"])["state"] == "ringing"
