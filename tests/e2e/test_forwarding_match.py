"""Forwarded calls matched without leaning on ForwardedFrom (docs/CALLS.md, "Matching a
forwarded call"), through a running server and its simulator.

The carrier of the simulator always says which line forwarded; carriers that do not,
or that name the server number, are played with `POST /simulator/calls`: a call
straight to the server number, `forwarded_from` absent or whatever that carrier sends.
Every household of the session's `ring_server` shares its one server number, as lines
do once the pool is used up.
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.support import SERVER_NUMBER, eventually
from tests.e2e.test_ring_flow import (
    App,
    answer,
    assert_no_provider_errors,
    events,
    household,
    legs_to,
    ok,
    phone_number,
    provider_call,
    sim,
)

pytestmark = pytest.mark.e2e


def _caller_calls(server, caller: str, forwarded_from: str | None) -> dict:
    body = {"from": caller, "to": SERVER_NUMBER}
    if forwarded_from is not None:
        body["forwarded_from"] = forwarded_from
    return sim(server, "POST", "/calls", 201, json=body)


def _ended(server, sid: str) -> dict:
    record = provider_call(server, sid)
    assert record["ended_at"], record["status"]
    return record


@pytest.mark.parametrize("forwarded_from", ["absent", "the_server_number", "an_unknown_number"])
def test_a_call_forwarded_without_its_line_in_forwarded_from_is_connected(ring_server, forwarded_from):
    home = household(ring_server)
    tablet = home.tablet()
    client = f"client:{home.addresses[tablet.id]}"
    caller = phone_number()
    with App(ring_server, tablet) as tablet_app:
        call_id = home.report(str(uuid.uuid4()), caller=caller, caller_name="Ada", status=201)["call"]["id"]
        tablet_app.wait_for("call.ringing", call_id)
        assert ok(answer(ring_server, tablet, call_id))["state"] == "answering"
        leg = _caller_calls(ring_server, caller, {"absent": None, "the_server_number": SERVER_NUMBER,
                                                  "an_unknown_number": phone_number()}[forwarded_from])
        connected = home.wait_state(call_id, "connected")
        assert connected["answered_by"] == tablet.id
        assert [device_leg["parent_call_sid"] for device_leg in legs_to(ring_server, client)] in ([None], [leg["sid"]])
        assert [room["friendly_name"] for room in provider_call(ring_server, leg["sid"])["conferences"]] == \
            [f"callpull-{call_id}"]
        sim(ring_server, "POST", f"/calls/{leg['sid']}/hangup", 202, json={"party": "caller"})
        final = home.wait_state(call_id, "completed")
        assert tablet_app.wait_for("call.ended", call_id)["reason"] == "completed"
    assert_no_provider_errors(provider_call(ring_server, leg["sid"]))
    assert "forwarded_call_arrived" in events(final["timeline"])


@pytest.mark.parametrize("fallback", [True, False], ids=["shared_fallback", "no_fallback"])
def test_two_users_pending_calls_from_one_caller_go_to_neither(ring_server, fallback):
    caller = phone_number()
    homes = [household(ring_server), household(ring_server)]
    voicemail = phone_number()
    if fallback:
        for home in homes:
            home.update_line(fallback_number=voicemail)
    rings = [home.ring(caller=caller) for home in homes]
    leg = _caller_calls(ring_server, caller, None)  # a carrier that does not say which line forwarded
    if fallback:
        eventually(lambda: _assert_dialled(ring_server, voicemail))
        sim(ring_server, "POST", f"/calls/{leg['sid']}/hangup", 202, json={"party": "caller"})
    record = eventually(lambda: _ended(ring_server, leg["sid"]))
    assert_no_provider_errors(record)
    assert record["conferences"] == [], record["conferences"]  # never in either call's conference
    if not fallback:
        assert record["said"] and record["said"][-1].startswith("Sorry"), record["said"]
    # Neither call was taken: each goes on, and ends as its own rules say.
    for home, ring in zip(homes, rings, strict=True):
        current = home.get_call(ring.id)
        assert current["state"] == "ringing", events(current["timeline"])
        assert "forwarded_call_arrived" not in events(current["timeline"])
        home.carrier(ring.carrier_id, "hangup")
        assert ok(home.handset_event(ring.id, "caller_hung_up"))["state"] == "missed"


def _assert_dialled(server, number: str) -> list[dict]:
    found = legs_to(server, number)
    assert found, f"nothing dialled to {number}"
    return found
