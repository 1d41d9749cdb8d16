"""Moving a live call, end to end: pull, approved switch, dial-in pull and
transfer, through a running server and its simulator (conference anchor,
Participants API, Gather). Nothing is mocked.

In every move the simulator's record of the caller's leg must show it never
ended and never left the call's conference while devices came and went.
"""

from __future__ import annotations

import pytest

from tests.e2e.support import SERVER_NUMBER, call, eventually, sign_up
from tests.e2e.test_ring_flow import (
    App,
    answer,
    household,
    legs_to,
    ok,
    phone_number,
    provider_call,
    sim,
)

pytestmark = pytest.mark.e2e


def connected_call(home, tablet):
    """A call answered on `tablet`, forwarded by the carrier and connected."""
    ring = home.ring()
    ok(answer(home.server, tablet, ring.id))
    rejected = home.carrier(ring.carrier_id, "reject")
    home.wait_state(ring.id, "connected")
    return ring, rejected["provider_call_sid"]


def caller_stayed(server, caller_sid: str, conference: str) -> None:
    """The remote party's leg is up and has been in the call's conference throughout."""
    leg = provider_call(server, caller_sid)
    assert leg["ended_at"] is None, leg["status"]
    stays = [stay for stay in leg["conferences"] if stay.get("friendly_name", conference) == conference] \
        or leg["conferences"]
    assert len(stays) == 1 and stays[0]["left_at"] is None, stays


def pull(server, device, call_id):
    return call(server, "POST", f"/api/v1/calls/{call_id}/pull", token=device.token)


def pull_state(server, device, pull_id):
    return ok(call(server, "GET", f"/api/v1/pulls/{pull_id}", token=device.token))["pull"]


def wait_pull(server, device, pull_id, state, *, timeout=8.0):
    def check():
        current = pull_state(server, device, pull_id)
        assert current["state"] == state, current
        return current
    return eventually(check, timeout=timeout)


def settings(home, **fields):
    """PATCH /account as Ana on her handset, with her password (a new PIN or allow-list needs it)."""
    return ok(call(home.server, "PATCH", "/api/v1/account", token=home.handset.token,
                   json={"password": home.account.password, **fields}))


def test_pull_moves_the_call_to_another_device_and_the_caller_never_leaves(ring_server):
    home = household(ring_server)
    tablet, desk = home.tablet("Tablet"), home.tablet("Desk")
    with App(ring_server, tablet) as tablet_app, App(ring_server, desk) as desk_app:
        ring, caller_sid = connected_call(home, tablet)
        body = ok(pull(ring_server, desk, ring.id), 202)["pull"]
        assert body["state"] == "approved" and body["from_device"] == tablet.id
        wait_pull(ring_server, desk, body["id"], "completed")
        desk_app.wait_for("pull.completed", ring.id)
        tablet_app.wait_for("pull.completed", ring.id)
    desk_leg, = legs_to(ring_server, f"client:{home.addresses[desk.id]}")
    tablet_leg, = legs_to(ring_server, f"client:{home.addresses[tablet.id]}")
    assert desk_leg["ended_at"] is None  # the new device carries the call
    eventually(lambda: provider_call(ring_server, tablet_leg["sid"])["ended_at"] is not None or
               pytest.fail("the old device was not dropped"), timeout=5)
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    timeline = home.get_call(ring.id)["timeline"]
    names = [entry["event"] for entry in timeline]
    assert names.index("connected") < names.index("pull_requested") < names.index("pull_completed")
    assert home.get_call(ring.id)["state"] == "connected"
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_pull_waits_for_the_holders_decision(ring_server, decision):
    home = household(ring_server)
    tablet, desk = home.tablet("Tablet"), home.tablet("Desk")
    settings(home, pull_requires_approval=True)
    with App(ring_server, tablet) as tablet_app, App(ring_server, desk):
        ring, caller_sid = connected_call(home, tablet)
        body = ok(pull(ring_server, desk, ring.id), 202)["pull"]
        assert body["state"] == "awaiting_approval"
        asked = tablet_app.wait_for("pull.requested", ring.id)
        assert asked["pull"]["id"] == body["id"]
        assert legs_to(ring_server, f"client:{home.addresses[desk.id]}") == []  # nobody dialled yet
        refused = call(ring_server, "POST", f"/api/v1/pulls/{body['id']}/{decision}", token=desk.token)
        assert refused.status_code == 403  # only the holder decides
        ok(call(ring_server, "POST", f"/api/v1/pulls/{body['id']}/{decision}", token=tablet.token))
        if decision == "approve":
            wait_pull(ring_server, desk, body["id"], "completed")
        else:
            assert pull_state(ring_server, desk, body["id"])["state"] == "denied"
            assert legs_to(ring_server, f"client:{home.addresses[desk.id]}") == []
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    home.carrier(ring.carrier_id, "hangup")


def test_an_unanswered_approval_counts_as_denied(servers, ring_settings):
    server = servers.start(PULL_APPROVAL_SECONDS=2, **ring_settings)
    home = household(server)
    tablet, desk = home.tablet("Tablet"), home.tablet("Desk")
    settings(home, pull_requires_approval=True)
    with App(server, tablet), App(server, desk) as desk_app:
        ring, caller_sid = connected_call(home, tablet)
        body = ok(pull(server, desk, ring.id), 202)["pull"]
        denied = wait_pull(server, desk, body["id"], "denied", timeout=6)
        assert denied["reason"] == "timeout"
        desk_app.wait_for("pull.denied", ring.id)
    caller_stayed(server, caller_sid, f"callpull-{ring.id}")
    assert home.get_call(ring.id)["state"] == "connected"


def test_pulls_by_another_users_device_are_404_and_by_a_deleted_device_401(ring_server):
    home = household(ring_server)
    tablet, desk = home.tablet("Tablet"), home.tablet("Desk")
    with App(ring_server, tablet):
        ring, caller_sid = connected_call(home, tablet)
        mallory = sign_up(ring_server, "mallory").register(
            "tablet", connect={"type": "client", "address": "mallory-" + phone_number()[-6:]})
        response = pull(ring_server, mallory, ring.id)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert call(ring_server, "DELETE", "/api/v1/devices/me", token=desk.token).status_code == 204
        assert pull(ring_server, desk, ring.id).status_code == 401
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    assert home.get_call(ring.id)["state"] == "connected"


# The account's PIN, which a caller dialling in must enter (the transfer PIN).
PIN = "97531864"
PIN_PROMPT = "Enter your PIN, then press hash."


def set_pin(home, pin=PIN):
    return settings(home, transfer_pin=pin, password=home.account.password)


def dial_in(server, caller):
    return sim(server, "POST", "/calls", 201, json={"from": caller, "to": SERVER_NUMBER})


def wait_gathering(server, sid, count=1):
    """The dialled-in call listens for keys in its `count`th <Gather>."""
    def check():
        record = provider_call(server, sid)
        gathers = [entry for entry in record["events"] if entry["event"] == "gather"]
        assert record["activity"] == "gathering" and len(gathers) == count, (record["activity"], record["said"])
        return record
    return eventually(check, timeout=5)


def enter_pin(server, sid, pin=PIN, *, attempt=1):
    """At the `attempt`th PIN prompt, key `pin` and hash."""
    record = wait_gathering(server, sid, attempt)
    assert record["said"][-1].endswith(PIN_PROMPT), record["said"]
    sim(server, "POST", f"/calls/{sid}/digits", 202, json={"digits": pin + "#"})


def hung_up(server, sid):
    def check():
        record = provider_call(server, sid)
        assert record["ended_at"] is not None, record["status"]
        return record
    return eventually(check, timeout=5)


@pytest.mark.parametrize("approval", [False, True], ids=["at_once", "approved"])
def test_dial_in_from_a_registered_number_takes_the_call_after_the_pin(ring_server, approval):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    car_number = phone_number()
    car = home.account.register("desktop", name="Car", platform="other", phone_number=car_number)
    set_pin(home)
    if approval:
        settings(home, pull_requires_approval=True)
    with App(ring_server, tablet) as tablet_app:
        ring, caller_sid = connected_call(home, tablet)
        dialled = dial_in(ring_server, car_number)
        enter_pin(ring_server, dialled["sid"])
        if approval:
            asked = tablet_app.wait_for("pull.requested", ring.id, timeout=8)
            assert asked["dial_in_from"] == car_number and asked["pull"]["method"] == "dial_in"
            ok(call(ring_server, "POST", f"/api/v1/pulls/{asked['pull']['id']}/approve", token=tablet.token))
        tablet_app.wait_for("pull.completed", ring.id, timeout=8)
    pulls = [entry for entry in home.get_call(ring.id)["timeline"] if entry["event"] == "pull_completed"]
    assert pulls and pulls[0]["device"] == car.id
    record = provider_call(ring_server, dialled["sid"])
    assert record["ended_at"] is None  # the car phone has the call
    assert record["said"] == [PIN_PROMPT]
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    home.carrier(ring.carrier_id, "hangup")


def test_dial_in_with_two_live_calls_offers_the_menu_after_the_pin(ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    car_number = phone_number()
    car = home.account.register("desktop", name="Car", platform="other", phone_number=car_number)
    set_pin(home)
    with App(ring_server, tablet) as tablet_app:
        first, first_sid = connected_call(home, tablet)
        second, second_sid = connected_call(home, tablet)
        dialled = dial_in(ring_server, car_number)
        enter_pin(ring_server, dialled["sid"])
        menu = wait_gathering(ring_server, dialled["sid"], 2)
        assert menu["said"][0] == PIN_PROMPT and menu["said"][1].startswith("You have 2 calls.")
        assert " ".join(second.caller[-4:]) in menu["said"][1]
        sim(ring_server, "POST", f"/calls/{dialled['sid']}/digits", 202, json={"digits": "2"})
        tablet_app.wait_for("pull.completed", second.id, timeout=8)
    assert home.get_call(second.id)["held_by"] == car.id
    assert home.get_call(first.id)["held_by"] == tablet.id
    caller_stayed(ring_server, second_sid, f"callpull-{second.id}")
    caller_stayed(ring_server, first_sid, f"callpull-{first.id}")
    for ring in (first, second):
        home.carrier(ring.carrier_id, "hangup")


def test_dial_in_from_an_unknown_number_is_turned_away_even_with_the_accounts_pin(ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    home.account.register("desktop", name="Car", platform="other", phone_number=phone_number())
    set_pin(home)
    with App(ring_server, tablet):
        ring, caller_sid = connected_call(home, tablet)
        dialled = dial_in(ring_server, phone_number())
        for attempt in (1, 2, 3):
            enter_pin(ring_server, dialled["sid"], attempt=attempt)
        record = hung_up(ring_server, dialled["sid"])
    assert record["said"][-1] == "That PIN is not right. Goodbye."
    assert not any(entry["event"].startswith("pull_") for entry in home.get_call(ring.id)["timeline"])
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")


def test_dial_in_from_a_withheld_number_is_turned_away_at_once(ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    set_pin(home)
    with App(ring_server, tablet):
        ring, caller_sid = connected_call(home, tablet)
        record = hung_up(ring_server, dial_in(ring_server, "anonymous")["sid"])
    assert record["said"] and "Goodbye" in record["said"][-1] and PIN_PROMPT not in record["said"]
    assert not any(entry["event"].startswith("pull_") for entry in home.get_call(ring.id)["timeline"])
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")


def transfer(home, device, call_id, number, pin):
    return call(home.server, "POST", f"/api/v1/calls/{call_id}/transfer", token=device.token,
                json={"number": number, "pin": pin})


def test_transfer_to_an_allowlisted_number_behind_the_pin(ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    office = phone_number()
    # Someone at the office picks up and presses 1 (a number joins only then: tests/e2e/test_screening.py).
    sim(ring_server, "POST", "/devices", json={"address": office, "behaviour": "answer", "press": "1"})
    settings(home, transfer_allowlist=[office], transfer_pin="2468", password=home.account.password)
    with App(ring_server, tablet) as tablet_app:
        ring, caller_sid = connected_call(home, tablet)
        off_list = transfer(home, tablet, ring.id, phone_number(), "2468")
        assert off_list.status_code == 403 and off_list.json()["error"]["code"] == "number_not_allowed"
        ok(transfer(home, tablet, ring.id, office, "2468"), 202)
        tablet_app.wait_for("call.transferred", ring.id, timeout=8)
    office_leg, = legs_to(ring_server, office)
    assert office_leg["ended_at"] is None
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    names = [entry["event"] for entry in home.get_call(ring.id)["timeline"]]
    assert names.index("transfer_requested") < names.index("transferred")


def test_wrong_transfer_pins_are_refused_until_rate_limited(servers, ring_settings):
    server = servers.start(RATE_LIMIT_TRANSFER_PIN=3, **ring_settings)
    home = household(server)
    tablet = home.tablet("Tablet")
    office = phone_number()
    settings(home, transfer_allowlist=[office], transfer_pin="2468", password=home.account.password)
    with App(server, tablet):
        ring, caller_sid = connected_call(home, tablet)
        for _ in range(3):
            wrong = transfer(home, tablet, ring.id, office, "1111")
            assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "wrong_pin"
        limited = transfer(home, tablet, ring.id, office, "2468")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert legs_to(server, office) == []
    caller_stayed(server, caller_sid, f"callpull-{ring.id}")
    assert "transfer refused: wrong PIN" in server.log_tail(400)  # logged for the operator, the PIN is not
