"""Calls the network forwards with no ring report (issue 18; docs/CALLS.md,
"Network-forwarded calls"), through a running server and its simulator.

The carrier is played with the simulator's generic `POST /simulator/calls`: a call straight
to the server number with `forwarded_from` the line (what a carrier forwarding on no answer,
unreachable or always sends), or without it. The simulator's own carrier forwarding (its
timer, the handset off, simultaneous ring) is tests/e2e/test_carrier_forwarding.py. Every
household of this module's server shares its one server number, as lines do once the pool
is used up: only ForwardedFrom names the line.
"""

from __future__ import annotations

import threading
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


@pytest.fixture(scope="module")
def network_server(environment, ring_settings):
    owner = Servers(environment, "netfwd")
    try:
        yield owner.start(name="netfwd", CALL_RING_SECONDS=RING_SECONDS, **ring_settings)
    finally:
        owner.close()


def network_household(server, kind: str = "no_answer", *, fallback: str | None = None) -> Household:
    """A user whose handset reported `kind` active (and busy too: the app may run as well)."""
    home = household(server)
    body = {"kind": kind, "state": "active", "target": SERVER_NUMBER}
    if kind == "no_answer":
        body["timer"] = 15
    line = ok(http(server, "POST", f"/api/v1/lines/{home.line['id']}/forwarding", token=home.handset.token,
                   json=body))
    assert line["forwarding_kinds"][kind]["state"] == "active", line["forwarding_kinds"]
    home.line = line
    if fallback:
        home.update_line(fallback_number=fallback)
    return home


def forwarded(server, caller: str, forwarded_from: str | None) -> dict:
    body = {"from": caller, "to": SERVER_NUMBER}
    if forwarded_from is not None:
        body["forwarded_from"] = forwarded_from
    return sim(server, "POST", "/calls", 201, json=body)


def calls_of(home: Household, caller: str) -> list[dict]:
    found = ok(http(home.server, "GET", "/api/v1/calls", token=home.handset.token))
    return [call for call in found if call["caller"] == caller]


def _ended(server, sid: str) -> dict:
    record = provider_call(server, sid)
    assert record["ended_at"], record["status"]
    return record


def _dialled(server, number: str) -> list[dict]:
    found = legs_to(server, number)
    assert found, f"nothing dialled to {number}"
    return found


def test_a_network_forwarded_call_rings_the_devices_and_connects_the_one_that_answers(network_server):
    server = network_server
    home = network_household(server, "always")
    tablet, other = home.tablet(), home.tablet("Second tablet")
    client = f"client:{home.addresses[tablet.id]}"
    caller = phone_number()
    with App(server, tablet) as tablet_app, App(server, other) as other_app:
        leg = forwarded(server, caller, home.number)
        ringing = tablet_app.wait_for("call.ringing")
        call_id = ringing["call"]["id"]
        assert other_app.wait_for("call.ringing", call_id)
        current = home.get_call(call_id)
        assert (current["state"], current["reported_by"], current["forwarding_kind"]) == (
            "forwarded", None, "always"), current
        assert events(current["timeline"])[:2] == ["forwarded_by_network", "caller_held"]
        assert [room["friendly_name"] for room in provider_call(server, leg["sid"])["conferences"]] == \
            [f"callpull-{call_id}"]
        assert ok(answer(server, tablet, call_id))["answered_by"] == tablet.id
        connected = home.wait_state(call_id, "connected")
        assert connected["answered_by"] == tablet.id
        assert other_app.wait_for("call.answered_elsewhere", call_id)
        assert len(legs_to(server, client)) == 1
        sim(server, "POST", f"/calls/{leg['sid']}/hangup", 202, json={"party": "caller"})
        home.wait_state(call_id, "completed")
        assert tablet_app.wait_for("call.ended", call_id)["reason"] == "completed"
    assert_no_provider_errors(eventually(lambda: _ended(server, leg["sid"])))
    assert len(calls_of(home, caller)) == 1


def test_a_network_forwarded_call_nobody_answers_goes_to_the_fallback(network_server):
    server = network_server
    voicemail = phone_number()
    home = network_household(server, "no_answer", fallback=voicemail)
    tablet = home.tablet()
    with App(server, tablet) as tablet_app:
        leg = forwarded(server, phone_number(), home.number)
        call_id = tablet_app.wait_for("call.ringing")["call"]["id"]
        assert tablet_app.wait_for("call.ended", call_id, timeout=RING_SECONDS + 10)["reason"] == "no_answer"
        eventually(lambda: _dialled(server, voicemail))
        final = home.get_call(call_id)
        assert (final["state"], final["answered_by"], final["forwarding_kind"]) == ("missed", None, "no_answer")
        assert "sent_to_fallback" in events(final["timeline"])
        assert not legs_to(server, f"client:{home.addresses[tablet.id]}")
        sim(server, "POST", f"/calls/{leg['sid']}/hangup", 202, json={"party": "caller"})
    assert_no_provider_errors(eventually(lambda: _ended(server, leg["sid"])))


def test_a_shared_number_without_forwarded_from_rings_nobody(network_server):
    """Every line of this server shares its number: a forwarded call that does not say which
    line it is for is nobody's (here the lines have no common fallback: a goodbye)."""
    server = network_server
    homes = [network_household(server, "always"), network_household(server, "unreachable")]
    tablets = [home.tablet() for home in homes]
    with App(server, tablets[0]) as first, App(server, tablets[1]) as second:
        leg = forwarded(server, "anonymous", None)
        record = eventually(lambda: _ended(server, leg["sid"]))
        assert record["conferences"] == [], record["conferences"]
        assert record["said"] and record["said"][-1].startswith("Sorry"), record["said"]
        known = forwarded(server, phone_number(), None)  # a known caller id may be a user dialling in
        assert eventually(lambda: _said(server, known["sid"], "Enter your PIN"))
        sim(server, "POST", f"/calls/{known['sid']}/hangup", 202, json={"party": "caller"})
        assert first.of("call.ringing") == [] and second.of("call.ringing") == []
    for home in homes:
        assert ok(http(server, "GET", "/api/v1/calls", token=home.handset.token)) == []


def _said(server, sid: str, words: str) -> bool:
    said = provider_call(server, sid)["said"]
    assert any(words in each for each in said), said
    return True


def test_a_report_first_then_the_forwarded_call_make_one_call(network_server):
    server = network_server
    home = network_household(server)
    caller = phone_number()
    call_id = home.report(str(uuid.uuid4()), caller=caller, caller_name="Ada", status=201)["call"]["id"]
    leg = forwarded(server, caller, home.number)
    current = home.wait_state(call_id, "forwarded")
    assert current["forwarding_kind"] == "busy" and current["reported_by"] == home.handset.id
    assert [room["friendly_name"] for room in provider_call(server, leg["sid"])["conferences"]] == \
        [f"callpull-{call_id}"]
    assert [call["id"] for call in calls_of(home, caller)] == [call_id]
    sim(server, "POST", f"/calls/{leg['sid']}/hangup", 202, json={"party": "caller"})
    home.wait_state(call_id, "missed")


def test_the_forwarded_call_first_then_a_report_make_one_call(network_server):
    server = network_server
    home = network_household(server)
    tablet = home.tablet()
    caller = phone_number()
    with App(server, tablet) as tablet_app:
        leg = forwarded(server, caller, home.number)
        call_id = tablet_app.wait_for("call.ringing")["call"]["id"]
        report_id = str(uuid.uuid4())
        joined = home.report(report_id, caller=caller, caller_name="Ada", status=200)
        assert joined["call"]["id"] == call_id
        assert joined["instruction"] == {"action": "keep_ringing", "reason": "forwarded_by_network"}
        again = home.report(report_id, caller=caller, caller_name="Ada", status=200)  # a retried report
        assert again["call"]["id"] == call_id
        assert len(tablet_app.of("call.ringing", call_id)) == 1
    current = home.get_call(call_id)
    assert (current["forwarding_kind"], current["reported_by"]) == ("no_answer", home.handset.id)
    steps = [event for event in events(current["timeline"]) if not event.startswith("notification_")]
    assert steps[:3] == ["forwarded_by_network", "caller_held", "reported"], steps
    assert [call["id"] for call in calls_of(home, caller)] == [call_id]
    sim(server, "POST", f"/calls/{leg['sid']}/hangup", 202, json={"party": "caller"})
    home.wait_state(call_id, "missed")


def test_a_report_and_the_forwarded_call_at_once_make_one_call_every_time(network_server):
    """Both at the same moment from two threads, over HTTP, ten times: one call each time."""
    server = network_server
    home = network_household(server)
    for round_ in range(10):
        caller = phone_number()
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def send_report(caller=caller, barrier=barrier, results=results):
            barrier.wait()
            results["report"] = http(server, "POST", "/api/v1/calls", token=home.handset.token, json={
                "report_id": str(uuid.uuid4()), "line": home.number, "caller": caller, "caller_name": "Ada"})

        def send_forwarded(caller=caller, barrier=barrier, results=results):
            barrier.wait()
            results["leg"] = forwarded(server, caller, home.number)

        threads = [threading.Thread(target=send_report), threading.Thread(target=send_forwarded)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        report = results["report"]
        assert report.status_code in (200, 201), (round_, report.text)
        call_id = report.json()["call"]["id"]
        leg = results["leg"]
        current = home.wait_state(call_id, "forwarded")
        assert (report.status_code, current["forwarding_kind"]) in {(201, "busy"), (200, "no_answer")}, round_
        assert [call["id"] for call in calls_of(home, caller)] == [call_id], round_
        assert [room["friendly_name"] for room in provider_call(server, leg["sid"])["conferences"]] == \
            [f"callpull-{call_id}"], round_
        sim(server, "POST", f"/calls/{leg['sid']}/hangup", 202, json={"party": "caller"})
        home.wait_state(call_id, "missed")
