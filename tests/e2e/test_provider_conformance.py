"""Every Twilio REST request callpull makes, walked end to end against the bundled
simulator, which refuses what Twilio's API description refuses.

One running server (nothing mocked) goes through each move that talks to the
provider: a pull, a monitor after a switch, an approved pull, the holder hanging
up, a revoked holder (caller on hold, then taken off hold), a dial-in behind the
PIN, a transfer to a screened number, a release to the fallback when nobody
answers, and reconciliation of a quiet call. Then the simulator's record of the
REST requests it received (`GET /simulator/rest-log`) must show:

- every request answered 2xx (a request Twilio would refuse fails here);
- every participant fetch, update and delete naming its conference by SID
  (`CF` + 32 hex): Twilio accepts a conference's friendly name only when a
  participant is created, and answers 404 otherwise;
- each kind of request the moves need was made at least once;
- no call's timeline says a provider action failed.
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.e2e.support import call, eventually
from tests.e2e.test_moves import PIN, connected_call, dial_in, enter_pin, pull, settings, transfer, wait_pull
from tests.e2e.test_ring_flow import App, answer, household, legs_to, ok, phone_number, provider_call, sim

pytestmark = pytest.mark.e2e

API = r"/2010-04-01/Accounts/AC[0-9a-fA-F]{32}"
PARTICIPANT = re.compile(rf"{API}/Conferences/(?P<conference>[^/]+)/Participants/[^/]+\.json")
CONFERENCE_SID = re.compile(r"CF[0-9a-fA-F]{32}")
# What each move needs of the provider (method, path pattern).
NEEDED = {
    "add a participant": ("POST", re.compile(rf"{API}/Conferences/[^/]+/Participants\.json")),
    "update a participant (mute, hold)": ("POST", PARTICIPANT),
    "remove a participant": ("DELETE", PARTICIPANT),
    "update a call (redirect, hang up)": ("POST", re.compile(rf"{API}/Calls/CA[0-9a-fA-F]{{32}}\.json")),
    "fetch a call (reconciliation)": ("GET", re.compile(rf"{API}/Calls/CA[0-9a-fA-F]{{32}}\.json")),
}


def client_device(home, kind: str, name: str):
    address = f"{kind[:3]}-{uuid.uuid4().hex[:12]}"
    device = home.account.register(kind, name=name, platform="other" if kind == "desktop" else "android",
                                   connect={"type": "client", "address": address})
    home.addresses[device.id] = address
    return device


def leg_of(server, home, device) -> dict:
    """The latest leg the provider placed to `device`'s client."""
    return legs_to(server, f"client:{home.addresses[device.id]}")[-1]


def ended(server, sid: str, *, timeout: float = 8.0) -> dict:
    def check():
        record = provider_call(server, sid)
        assert record["ended_at"] is not None, record["status"]
        return record
    return eventually(check, timeout=timeout)


def stay(server, call_id: str, call_sid: str) -> dict:
    room = sim(server, "GET", f"/conferences/callpull-{call_id}")
    stays = [entry for entry in room["participants"] if entry["call_sid"] == call_sid]
    assert stays, f"{call_sid} never was in the conference: {room['participants']}"
    return stays[-1]


def until_stay(server, call_id: str, call_sid: str, **expected) -> None:
    def check():
        current = stay(server, call_id, call_sid)
        assert {key: current[key] for key in expected} == expected, current
    eventually(check, timeout=8)


def until(found, message: str, *, timeout: float = 8.0):
    """`found()`'s first truthy answer, waiting up to `timeout` seconds."""
    def check():
        value = found()
        assert value, message
        return value
    return eventually(check, timeout=timeout)


def hang_up(home, ring) -> None:
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")


def test_every_provider_request_of_every_move_is_one_twilio_accepts(servers, ring_settings):
    server = servers.start(CALL_RECONCILE_SECONDS=5, DIAL_TIMEOUT_SECONDS=5, **ring_settings)
    home = household(server)
    tablet, desk = client_device(home, "tablet", "Tablet"), client_device(home, "desktop", "Desk")
    spare = client_device(home, "tablet", "Spare")
    car_number, office, fallback = phone_number(), phone_number(), phone_number()
    car = home.account.register("desktop", name="Car", platform="other", phone_number=car_number)
    settings(home, transfer_pin=PIN, transfer_allowlist=[office])
    calls = []

    with App(server, tablet), App(server, desk), App(server, spare):
        # A pull: the desk takes the call, the tablet's leg is removed.
        ring, caller = connected_call(home, tablet)
        calls.append(ring.id)
        tablet_leg = leg_of(server, home, tablet)
        moved = ok(pull(server, desk, ring.id), 202)["pull"]
        wait_pull(server, desk, moved["id"], "completed")
        ended(server, tablet_leg["sid"])

        # Monitor after a switch: the tablet takes it back, the desk stays muted.
        settings(home, monitor_after_switch=True)
        desk_leg = leg_of(server, home, desk)
        moved = ok(pull(server, tablet, ring.id), 202)["pull"]
        wait_pull(server, tablet, moved["id"], "completed")
        until_stay(server, ring.id, desk_leg["sid"], muted=True, left_at=None)
        settings(home, monitor_after_switch=False)
        hang_up(home, ring)

        # An approved pull, then its new holder hangs up: the caller is hung up by REST.
        settings(home, pull_requires_approval=True)
        ring, caller = connected_call(home, tablet)
        calls.append(ring.id)
        asked = ok(pull(server, desk, ring.id), 202)["pull"]
        assert asked["state"] == "awaiting_approval"
        ok(call(server, "POST", f"/api/v1/pulls/{asked['id']}/approve", token=tablet.token))
        wait_pull(server, desk, asked["id"], "completed")
        settings(home, pull_requires_approval=False)
        sim(server, "POST", f"/calls/{leg_of(server, home, desk)['sid']}/hangup", 202, json={"party": "device"})
        home.wait_state(ring.id, "completed")
        ended(server, caller)

        # A revoked holder: its leg is removed, the caller is held, the desk takes it off hold.
        ring, caller = connected_call(home, spare)
        calls.append(ring.id)
        spare_leg = leg_of(server, home, spare)
        assert call(server, "DELETE", f"/api/v1/devices/{spare.id}", token=desk.token).status_code == 204
        ended(server, spare_leg["sid"])
        until_stay(server, ring.id, caller, hold=True)
        moved = ok(pull(server, desk, ring.id), 202)["pull"]
        wait_pull(server, desk, moved["id"], "completed")
        until_stay(server, ring.id, caller, hold=False)

        # A dial-in behind the PIN: the car takes the call, the desk's leg is removed.
        desk_leg = leg_of(server, home, desk)
        dialled = dial_in(server, car_number)
        enter_pin(server, dialled["sid"])
        until(lambda: home.get_call(ring.id)["held_by"] == car.id, "the car did not take the call")
        ended(server, desk_leg["sid"])

        # A transfer to a screened number (a person presses 1): the car's leg is removed.
        sim(server, "POST", "/devices", json={"address": office, "behaviour": "answer", "press": "1"})
        ok(transfer(home, car, ring.id, office, PIN), 202)
        until(lambda: home.get_call(ring.id)["transferred_to"] == office, "not transferred", timeout=20)
        ended(server, dialled["sid"])
        hang_up(home, ring)

        # Release: the device that answered never picks up; the caller goes to the fallback.
        home.update_line(fallback_number=fallback)
        address = f"client:{home.addresses[tablet.id]}"
        sim(server, "POST", "/devices", json={"address": address, "behaviour": "no-answer"})
        ring = home.ring()
        calls.append(ring.id)
        ok(answer(server, tablet, ring.id))
        home.carrier(ring.carrier_id, "reject")
        until(lambda: legs_to(server, fallback), "the fallback was not dialled", timeout=15)
        sim(server, "POST", "/devices", json={"address": address, "behaviour": "answer"})
        home.carrier(ring.carrier_id, "hangup")

        # Reconciliation: a quiet connected call is fetched from the provider.
        ring, caller = connected_call(home, tablet)
        calls.append(ring.id)

        def fetched():
            log = sim(server, "GET", "/rest-log")
            assert any(entry["method"] == "GET" and entry["path"].endswith(f"/Calls/{caller}.json")
                       for entry in log), "the quiet call was not reconciled"
        eventually(fetched, timeout=15, interval=0.5)
        hang_up(home, ring)

    log = sim(server, "GET", "/rest-log")
    refused = [entry for entry in log if not 200 <= entry["status"] < 300]
    assert not refused, f"requests the provider refused: {refused}"
    by_name = [entry for entry in log if (found := PARTICIPANT.fullmatch(entry["path"]))
               and not CONFERENCE_SID.fullmatch(found["conference"])]
    assert not by_name, f"participants addressed by a conference's friendly name: {by_name}"
    missing = [need for need, (method, path) in NEEDED.items()
               if not any(entry["method"] == method and path.fullmatch(entry["path"]) for entry in log)]
    assert not missing, f"the walk made no request to {missing}: {[(e['method'], e['path']) for e in log]}"
    for call_id in calls:
        names = [entry["event"] for entry in home.get_call(call_id)["timeline"]]
        assert "provider_action_failed" not in names, (call_id, names)
