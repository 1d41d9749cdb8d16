"""Web Push end to end: a running server (real uvicorn, the embedded default: a VAPID key it
generated itself, the local push service of simulators.webpush mounted at
/simulator/webpush/, the real notifications.webpush with pywebpush) and nothing patched.

- A browser device (tab closed: no socket) whose subscription comes from the local push
  service, set with PATCH on `me`, rings: the push service holds the decrypted
  `call.ringing` with the call's id, a TTL within the ring window, Urgency high, VAPID for
  the server's public key.
- When another device answers, `call.answered_elsewhere` arrives the same way (the page's
  service worker closes its notification on it).
- A subscription the push service calls gone (410) is dropped after one ring, and the
  timeline shows it.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.support import Servers, call, devices_by_id, eventually
from tests.e2e.test_ring_flow import answer, describe, find, household, ok, when

pytestmark = pytest.mark.e2e
PUSH = "/simulator/webpush"


@pytest.fixture(scope="module")
def webpush_server(environment, ring_settings):
    owner = Servers(environment, "webpush")
    try:
        yield owner.start(name="webpush", **ring_settings)
    finally:
        owner.close()


def subscribe(server) -> dict:
    """What `pushManager.subscribe` gives a page, from the local push service."""
    return ok(call(server, "POST", PUSH + "/subscriptions"), 201)


def browser(home, subscription: dict):
    device = home.account.register("web", name="Browser", platform="web")
    body = ok(call(home.server, "PATCH", "/api/v1/devices/me", token=device.token,
                   json={"webpush_subscription": {"endpoint": subscription["endpoint"],
                                                  "keys": subscription["keys"]}}))
    assert body["webpush"] is True, body
    assert "webpush_subscription" not in body and subscription["keys"]["auth"] not in str(body)  # never echoed
    return device


def messages(server, subscription: dict) -> list[dict]:
    return ok(call(server, "GET", f"{PUSH}/subscriptions/{subscription['id']}/messages"))


def of_type(server, subscription: dict, event_type: str) -> list[dict]:
    found = [m for m in messages(server, subscription) if m["payload"].get("type") == event_type]
    assert found, f"no {event_type} yet: {[m['payload'].get('type') for m in messages(server, subscription)]}"
    return found


def test_a_browser_rings_by_web_push_and_hears_answered_elsewhere(webpush_server):
    home = household(webpush_server)
    subscription = subscribe(webpush_server)
    web = browser(home, subscription)
    tablet = home.tablet()
    public_key = ok(call(webpush_server, "GET", "/api/v1/push/vapid-public-key"))["public_key"]

    ring = home.ring()
    call_id = ring.call["id"]

    [ringing] = eventually(lambda: of_type(webpush_server, subscription, "call.ringing"))
    assert ringing["payload"]["call_id"] == call_id
    assert ringing["payload"]["caller"] == ring.caller
    assert ringing["urgency"] == "high"
    window = when(ring.call["expires_at"]).timestamp() - ringing["received_at"]
    assert 0 <= ringing["ttl"] <= window + 1, (ringing["ttl"], window)
    assert ringing["vapid"]["k"] == public_key
    assert ringing["vapid"]["aud"] == webpush_server.base_url
    assert ringing["vapid"]["exp"] <= time.time() + 24 * 3600

    assert answer(webpush_server, tablet, call_id).status_code == 200

    [answered] = eventually(lambda: of_type(webpush_server, subscription, "call.answered_elsewhere"))
    assert answered["payload"]["call_id"] == call_id
    assert answered["topic"] == ringing["topic"]  # it replaces the ring if still undelivered

    def timeline_shows_webpush():
        timeline = home.get_call(call_id)["timeline"]
        assert find(timeline, "notification_sent", device=web.id, transport="webpush", type="call.ringing"), \
            describe(timeline)
    eventually(timeline_shows_webpush)


def test_a_subscription_the_push_service_calls_gone_is_dropped_after_one_ring(webpush_server):
    home = household(webpush_server)
    subscription = subscribe(webpush_server)
    web = browser(home, subscription)
    ok(call(webpush_server, "POST", PUSH + "/rules", json={"fail": 410, "id": subscription["id"]}), 201)

    ring = home.ring()
    call_id = ring.call["id"]

    def dropped():
        assert devices_by_id(webpush_server, web.token)[web.id]["webpush"] is False
    eventually(dropped)

    def failed_on_timeline():
        timeline = home.get_call(call_id)["timeline"]
        assert find(timeline, "notification_failed", device=web.id, transport="webpush", error="gone"), \
            describe(timeline)
    eventually(failed_on_timeline)
    requests = ok(call(webpush_server, "GET", f"{PUSH}/subscriptions/{subscription['id']}/requests"))
    assert [r["status"] for r in requests] == [410]

    home.ring()  # the next ring does not try it again
    time.sleep(0.5)
    assert len(ok(call(webpush_server, "GET", f"{PUSH}/subscriptions/{subscription['id']}/requests"))) == 1
