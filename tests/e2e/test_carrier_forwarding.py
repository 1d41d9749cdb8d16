"""Calls the carrier forwards with no app on the handset (issue 18), through a running server and
the simulator's carrier: no ring report is ever made; the handset is only a phone.

For each way the network forwards (no answer after the line's timer, unreachable, always,
simultaneous ring): the user's tablet rings (WebSocket frames), the device that answers is
connected (the provider's legs), and with nobody answering the caller reaches the line's
fallback number.

The lines are set up as a user would: the code the API gives for a kind (`codes`) is dialled on
the simulated carrier, the carrier is interrogated with the API's interrogation code, and the
answer is reported with `POST /lines/{id}/forwarding {kind, state, target, timer}`.

Timing: the module's server rings for CALL_RING_SECONDS=5 and the carrier's no-reply timer is
the real one, T=5 s (the shortest 3GPP allows): about 100 s for the module.
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.support import SERVER_NUMBER, Servers, eventually
from tests.e2e.support import call as http
from tests.e2e.test_ring_flow import (
    App,
    Household,
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

RING_SECONDS = 5
TIMER = 5  # T, seconds: 3GPP TS 22.030 / 22.082 allow 5 to 30 in steps of 5


@pytest.fixture(scope="module")
def carrier_server(environment, ring_settings):
    owner = Servers(environment, "carrier")
    try:
        yield owner.start(name="carrier", CALL_RING_SECONDS=RING_SECONDS, **ring_settings)
    finally:
        owner.close()


# Setting a line up, as the user and the handset do ------------------------------------

def report(home: Household, **body) -> dict:
    home.line = ok(http(home.server, "POST", f"/api/v1/lines/{home.line['id']}/forwarding",
                        token=home.handset.token, json=body))
    return home.line


def register(home: Household, kind: str) -> dict:
    """Dial the API's code for `kind` on the carrier, interrogate it, report what it said."""
    codes = home.line["codes"][kind]
    assert codes is not None, home.line["codes"]
    dialled = sim(home.server, "POST", "/carrier/mmi", json={"line": home.number, "code": codes["register"]})
    assert (dialled["active"], dialled["target"]) == (True, SERVER_NUMBER), dialled
    status = sim(home.server, "POST", "/carrier/mmi", json={"line": home.number, "code": codes["interrogate"]})
    body = {"kind": kind, "state": "active" if status["active"] else "inactive", "target": status["target"]}
    if kind == "no_answer":
        body["timer"] = status["timer"]
    line = report(home, **body)
    assert line["forwarding_kinds"][kind]["state"] == "active", line["forwarding_kinds"]
    return line


def network_household(server, kind: str, *, fallback: str | None = None) -> Household:
    """A user whose handset has no app running: only `kind` forwards (busy is not set)."""
    home = household(server, forwarding=False)
    if kind == "no_answer":
        # The user picks the shortest timer; the app records it and shows the code with it.
        line = report(home, kind="no_answer", state="inactive", timer=TIMER)
        assert line["codes"]["no_answer"]["register"] == f"**61*{SERVER_NUMBER}**{TIMER}#", line["codes"]
    register(home, "unreachable" if kind == "simultaneous_ring" else kind)
    if kind == "simultaneous_ring":  # a carrier feature, set with the carrier, not an MMI code
        shown = sim(server, "PATCH", f"/carrier/lines/{home.number}", json={"simultaneous_ring": SERVER_NUMBER})
        assert shown["simultaneous_ring"] == SERVER_NUMBER
    if kind == "unreachable":
        assert sim(server, "POST", f"/carrier/lines/{home.number}/handset", json={"state": "off"})["handset"] == "off"
    if fallback:
        home.update_line(fallback_number=fallback)
    return home


def carrier_call(server, carrier_id: str) -> dict:
    return sim(server, "GET", f"/carrier/calls/{carrier_id}")


def place(home: Household, caller: str) -> dict:
    return sim(home.server, "POST", "/carrier/calls", 201,
               json={"line": home.number, "caller": caller, "caller_name": "Ada Lovelace"})


def wait_forwarded(server, carrier_id: str, because: str, *, timeout: float = 5.0) -> dict:
    def check():
        current = carrier_call(server, carrier_id)
        assert (current["state"], current["forwarded_because"]) == ("forwarded", because), \
            (current["state"], current["events"])
        assert current["provider_call_sid"], current
        return current
    return eventually(check, timeout=timeout)


def expect_forwarding(home: Household, carrier: dict, kind: str) -> dict:
    """The carrier's side of the call just placed, once it reached the provider."""
    if kind == "always":
        assert (carrier["state"], carrier["handset_ringing"]) == ("forwarded", False), carrier
        assert "ringing" not in [event["event"] for event in carrier["events"]], "the handset never rings"
        return carrier
    if kind == "unreachable":
        assert (carrier["state"], carrier["forwarded_because"]) == ("forwarded", "unreachable"), carrier
        return carrier
    if kind == "no_answer":
        # The handset rings alone until T passes; nothing reaches the provider before.
        assert (carrier["state"], carrier["handset_ringing"], carrier["provider_call_sid"]) == \
               ("ringing", True, None), carrier
        forwarded = wait_forwarded(home.server, carrier["id"], "no_answer", timeout=TIMER + 10)
        assert forwarded["handset_ringing"] is False
        return forwarded
    # Simultaneous ring: the server number is called at once while the handset rings. The
    # server answers it (the caller waits in the conference hearing ringback), which is an
    # answer for the carrier: the handset stops ringing, as with a real carrier and Twilio.
    assert (carrier["state"], carrier["handset_ringing"], carrier["simultaneous_ring_to"]) == \
           ("ringing", True, SERVER_NUMBER), carrier
    assert carrier["provider_call_sid"], carrier
    forwarded = wait_forwarded(home.server, carrier["id"], "simultaneous_ring")
    assert forwarded["handset_ringing"] is False
    return forwarded


def expected_kind(kind: str) -> str:
    return "unreachable" if kind == "simultaneous_ring" else kind


KINDS = ["no_answer", "unreachable", "always", "simultaneous_ring"]


# The tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_network_forwarded_call_rings_the_devices_and_connects_the_one_that_answers(carrier_server, kind):
    server = carrier_server
    home = network_household(server, kind)
    tablet = home.tablet()
    client = f"client:{home.addresses[tablet.id]}"
    caller = phone_number()
    with App(server, tablet) as tablet_app:
        carrier = expect_forwarding(home, place(home, caller), kind)
        caller_sid = carrier["provider_call_sid"]

        ringing = tablet_app.wait_for("call.ringing", timeout=10)
        call_id = ringing["call"]["id"]
        assert (ringing["call"]["caller"], ringing["call"]["line"]) == (caller, home.number), ringing
        current = home.get_call(call_id)
        assert current.get("reported_by") is None, current  # no ring report: none is shown
        assert current["forwarding_kind"] == expected_kind(kind), current
        assert events(current["timeline"])[0] == "forwarded_by_network", events(current["timeline"])
        assert not legs_to(server, client), "no device is dialled before one answers"

        assert ok(answer(server, tablet, call_id))["answered_by"] == tablet.id
        connected = home.wait_state(call_id, "connected")
        assert connected["answered_by"] == tablet.id
        assert tablet_app.wait_for("call.connected", call_id)["call"]["state"] == "connected"
        device_legs = eventually(lambda: _answered(legs_to(server, client)))
        assert len(device_legs) == 1, device_legs
        caller_leg = provider_call(server, caller_sid)
        assert (caller_leg["from"], caller_leg["to"], caller_leg["forwarded_from"]) == \
               (caller, SERVER_NUMBER, home.number)
        assert [room["friendly_name"] for room in caller_leg["conferences"]] == [f"callpull-{call_id}"]
        assert caller_leg["ended_at"] is None

        assert sim(server, "POST", f"/carrier/calls/{carrier['id']}/hangup")["state"] == "completed"
        final = home.wait_state(call_id, "completed")
        assert tablet_app.wait_for("call.ended", call_id)["reason"] == "completed"
    for leg in eventually(lambda: _all_ended(server, caller_sid, client)):
        assert_no_provider_errors(leg)
    assert final["answered_by"] == tablet.id


@pytest.mark.parametrize("kind", KINDS)
def test_a_network_forwarded_call_nobody_answers_reaches_the_lines_fallback(carrier_server, kind):
    server = carrier_server
    voicemail = phone_number()
    home = network_household(server, kind, fallback=voicemail)
    tablet = home.tablet()
    caller = phone_number()
    with App(server, tablet) as tablet_app:
        carrier = expect_forwarding(home, place(home, caller), kind)
        call_id = tablet_app.wait_for("call.ringing", timeout=10)["call"]["id"]
        # Nobody answers: after the ring window the call ends and the caller goes to voicemail.
        ended = tablet_app.wait_for("call.ended", call_id, timeout=RING_SECONDS + 10)
        assert ended["reason"] == "no_answer", ended
        fallback_legs = eventually(lambda: _dialled(server, voicemail))
        caller_leg = provider_call(server, carrier["provider_call_sid"])
        assert caller_leg["ended_at"] is None, "the caller is with the fallback, not hung up"
        assert [leg["parent_call_sid"] for leg in fallback_legs] in ([caller_leg["sid"]], [None])
        final = home.get_call(call_id)
        assert (final["end_reason"], final["answered_by"]) == ("no_answer", None), final
        assert not legs_to(server, f"client:{home.addresses[tablet.id]}"), "the tablet was never dialled"
        sim(server, "POST", f"/carrier/calls/{carrier['id']}/hangup")
    record = eventually(lambda: _ended(provider_call(server, carrier["provider_call_sid"])))
    assert_no_provider_errors(record)


def test_the_caller_giving_up_while_the_devices_ring_ends_the_call_everywhere(carrier_server):
    """Simultaneous ring: the caller hangs up at the carrier, the provider's leg ends, and the
    devices are told the call ended."""
    server = carrier_server
    home = network_household(server, "simultaneous_ring")
    tablet = home.tablet()
    with App(server, tablet) as tablet_app:
        carrier = expect_forwarding(home, place(home, phone_number()), "simultaneous_ring")
        call_id = tablet_app.wait_for("call.ringing", timeout=10)["call"]["id"]
        assert sim(server, "POST", f"/carrier/calls/{carrier['id']}/hangup")["state"] == "completed"
        assert tablet_app.wait_for("call.ended", call_id, timeout=10)["reason"] == "caller_hung_up"
    record = eventually(lambda: _ended(provider_call(server, carrier["provider_call_sid"])))
    assert record["hung_up_by"] == "caller"
    assert home.get_call(call_id)["answered_by"] is None


def test_a_busy_only_line_is_not_rung_by_a_call_the_network_forwards_on_no_answer(carrier_server):
    """Without a network kind reported active, the server does not take the forwarded call as
    the line's (today's app flow): the carrier's no-reply forwarding alone rings no device."""
    server = carrier_server
    voicemail = phone_number()
    home = household(server)  # busy registered and reported, as the app does
    home.update_line(fallback_number=voicemail)
    sim(server, "POST", "/carrier/mmi", json={"line": home.number, "code": f"**61*{SERVER_NUMBER}**{TIMER}#"})
    tablet = home.tablet()
    with App(server, tablet) as tablet_app:
        carrier = place(home, phone_number())
        wait_forwarded(server, carrier["id"], "no_answer", timeout=TIMER + 10)
        eventually(lambda: _dialled(server, voicemail))
        assert tablet_app.of("call.ringing") == []


@pytest.mark.parametrize("kind", ["no_answer", "simultaneous_ring"])
def test_the_handset_app_reporting_the_same_ring_makes_no_second_call(carrier_server, kind):
    """An app that does run on the handset sees the ring too: its report and the carrier's
    forwarded call are one call, whichever reaches the server first (no answer: the report,
    T seconds before the carrier forwards; simultaneous ring: the carrier's call, at once).
    On no answer (busy forwarding off) the report rings the tablet at once and the handset is
    told to keep ringing, never to reject (the caller would hear busy)."""
    server = carrier_server
    home = network_household(server, kind)
    tablet = home.tablet()
    caller = phone_number()
    with App(server, tablet) as tablet_app:
        carrier = place(home, caller)
        if kind == "simultaneous_ring":
            call_id = tablet_app.wait_for("call.ringing", timeout=10)["call"]["id"]
            joined = home.report(str(uuid.uuid4()), caller=caller, caller_name="Ada Lovelace", status=200)
            assert joined["call"]["id"] == call_id, joined
        else:
            reported = home.report(str(uuid.uuid4()), caller=caller, caller_name="Ada Lovelace", status=201)
            call_id = reported["call"]["id"]
            assert reported["instruction"] == {"action": "keep_ringing", "reason": "forwarded_on_no_answer"}
            wait_forwarded(server, carrier["id"], "no_answer", timeout=TIMER + 10)
            timeline = eventually(lambda: _has(home.get_call(call_id)["timeline"], "forwarded_call_arrived"),
                                  timeout=10)
            assert tablet_app.wait_for("call.ringing", call_id)["call"]["id"] == call_id
            # The tablet was rung by the report, before the carrier's forward arrived.
            assert events(timeline).index("notification_sent") < events(timeline).index("forwarded_call_arrived")
            assert "reject_instructed" not in events(timeline)
        calls = ok(http(server, "GET", "/api/v1/calls", token=home.handset.token))
        assert [found["id"] for found in calls] == [call_id], calls
        assert {frame["call"]["id"] for _, frame in tablet_app.of("call.ringing")} == {call_id}
        assert ok(answer(server, tablet, call_id))["answered_by"] == tablet.id
        home.wait_state(call_id, "connected")
        sim(server, "POST", f"/carrier/calls/{carrier['id']}/hangup")
        home.wait_state(call_id, "completed")


def _has(timeline: list[dict], event: str) -> list[dict]:
    assert event in events(timeline), events(timeline)
    return timeline


def _answered(legs: list[dict]) -> list[dict]:
    assert legs and all(leg["answered_at"] for leg in legs), legs
    return legs


def _dialled(server, number: str) -> list[dict]:
    found = legs_to(server, number)
    assert found, f"nothing dialled to {number}"
    return found


def _ended(record: dict) -> dict:
    assert record["ended_at"], record["status"]
    return record


def _all_ended(server, caller_sid: str, client: str) -> list[dict]:
    caller_leg = _ended(provider_call(server, caller_sid))
    return [caller_leg, *[_ended(leg) for leg in legs_to(server, client)]]
