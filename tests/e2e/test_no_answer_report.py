"""A ring the handset app reports on a line forwarded on no answer but not on busy (issue 18
follow-up), through a running server and the simulator's carrier: the tablet rings at once,
the handset is never told to reject (the caller would hear busy), and the carrier forwards
the call by itself after the line's timer T (docs/CALLS.md, "Forwarded on no answer: a
report first").

Timing: the carrier's no-reply timer is the real one, T=5 s; the app's report and the
tablet's answer take milliseconds, so both come before the forward.
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.support import Servers, eventually
from tests.e2e.support import call as http
from tests.e2e.test_carrier_forwarding import (
    RING_SECONDS,
    TIMER,
    _answered,
    _dialled,
    network_household,
    place,
    wait_forwarded,
)
from tests.e2e.test_ring_flow import App, answer, events, legs_to, ok, phone_number, sim

pytestmark = pytest.mark.e2e

REASON = {"action": "keep_ringing", "reason": "forwarded_on_no_answer"}


@pytest.fixture(scope="module")
def no_answer_server(environment, ring_settings):
    owner = Servers(environment, "no-answer-report")
    try:
        yield owner.start(name="no-answer-report", CALL_RING_SECONDS=RING_SECONDS, **ring_settings)
    finally:
        owner.close()


def test_a_device_that_answers_before_the_forward_is_connected_when_it_comes(no_answer_server):
    server = no_answer_server
    home = network_household(server, "no_answer")
    tablet = home.tablet()
    client = f"client:{home.addresses[tablet.id]}"
    caller = phone_number()
    with App(server, home.handset) as handset_app, App(server, tablet) as tablet_app:
        carrier = place(home, caller)
        reported = home.report(str(uuid.uuid4()), caller=caller, caller_name="Ada Lovelace", status=201)
        call_id = reported["call"]["id"]
        assert reported["instruction"] == REASON, reported["instruction"]
        assert reported["call"]["forwarding_kind"] == "no_answer"
        tablet_app.wait_for("call.ringing", call_id)
        assert ok(answer(server, tablet, call_id))["answered_by"] == tablet.id
        assert not legs_to(server, client), "nothing to dial before the carrier forwards"

        wait_forwarded(server, carrier["id"], "no_answer", timeout=TIMER + 10)
        connected = home.wait_state(call_id, "connected", timeout=10)
        assert connected["answered_by"] == tablet.id
        timeline = events(connected["timeline"])
        assert timeline.index("answered") < timeline.index("forwarded_call_arrived"), timeline
        assert "reject_instructed" not in timeline
        assert handset_app.of("call.reject") == [], "the handset is never told to reject"
        device_legs = eventually(lambda: _answered(legs_to(server, client)))
        assert len(device_legs) == 1, device_legs

        sim(server, "POST", f"/carrier/calls/{carrier['id']}/hangup")
        final = home.wait_state(call_id, "completed")
    assert final["answered_by"] == tablet.id
    calls = ok(http(server, "GET", "/api/v1/calls", token=home.handset.token))
    assert [found["id"] for found in calls] == [call_id]


def test_a_ring_declined_everywhere_is_forwarded_by_the_carrier_to_the_fallback(no_answer_server):
    server = no_answer_server
    voicemail = phone_number()
    home = network_household(server, "no_answer", fallback=voicemail)
    tablet = home.tablet()
    caller = phone_number()
    with App(server, home.handset) as handset_app, App(server, tablet) as tablet_app:
        carrier = place(home, caller)
        reported = home.report(str(uuid.uuid4()), caller=caller, caller_name="Ada Lovelace", status=201)
        call_id = reported["call"]["id"]
        assert reported["instruction"] == REASON, reported["instruction"]
        tablet_app.wait_for("call.ringing", call_id)
        declined = ok(http(server, "POST", f"/api/v1/calls/{call_id}/decline", token=tablet.token,
                           json={"scope": "everywhere"}))
        assert declined["state"] == "declined"

        # The handset was not told to reject: it rings until the carrier forwards after T,
        # and that forwarded call goes to the line's fallback, not to a new call.
        wait_forwarded(server, carrier["id"], "no_answer", timeout=TIMER + 10)
        eventually(lambda: _dialled(server, voicemail))
        assert handset_app.of("call.reject") == []
        calls = ok(http(server, "GET", "/api/v1/calls", token=home.handset.token))
        assert [found["id"] for found in calls] == [call_id], calls
        assert [frame["call"]["id"] for _, frame in tablet_app.of("call.ringing")] == [call_id]
        sim(server, "POST", f"/carrier/calls/{carrier['id']}/hangup")
