"""A stolen device outlives its revocation on no call: deleting a device takes its
legs out of every conference at once; a call it held waits on hold for another
device of the user, then ends politely.

End to end: a running server, the bundled simulator as carrier and provider,
real HTTP and WebSockets, nothing mocked. (The same rules with the provider's
REST side faked: tests/callpull/test_holder_revoked.py.)
"""

import uuid

import pytest

from tests.e2e.support import Device, call, eventually
from tests.e2e.test_moves import caller_stayed, connected_call, pull, settings, wait_pull
from tests.e2e.test_ring_flow import App, household, legs_to, ok, phone_number, provider_call, sim

pytestmark = pytest.mark.e2e


def client_device(home, kind: str, name: str) -> Device:
    """A device the provider reaches as a soft-phone client (`client:<identity>`)."""
    address = f"{kind[:3]}-{uuid.uuid4().hex[:12]}"
    device = home.account.register(kind, name=name, platform="other" if kind == "desktop" else "android",
                                   connect={"type": "client", "address": address})
    home.addresses[device.id] = address
    return device


def delete(server, device: Device, *, by: Device) -> None:
    response = call(server, "DELETE", f"/api/v1/devices/{device.id}", token=by.token)
    assert response.status_code == 204, response.text


def participant(server, call_id: str, call_sid: str) -> dict:
    """The simulator's record of `call_sid`'s (latest) stay in the call's conference."""
    room = sim(server, "GET", f"/conferences/callpull-{call_id}")
    stays = [entry for entry in room["participants"] if entry["call_sid"] == call_sid]
    assert stays, f"{call_sid} was never in the conference: {room['participants']}"
    return stays[-1]


def removed(server, call_id: str, call_sid: str) -> dict:
    """`call_sid` was taken out of the conference through the Participants API."""
    def check():
        stay = participant(server, call_id, call_sid)
        assert stay["left_at"] is not None and stay["reason_left"] == "participant_updated_via_api", stay
        return stay
    return eventually(check, timeout=5)


def on_hold(server, call_id: str, caller_sid: str, hold: bool) -> None:
    def check():
        stay = participant(server, call_id, caller_sid)
        assert stay["left_at"] is None and stay["hold"] is hold, stay
    eventually(check, timeout=5)


def until(found, message: str, *, timeout: float = 5.0):
    """`found()`'s first truthy answer, waiting up to `timeout` seconds."""
    def check():
        value = found()
        assert value, message
        return value
    return eventually(check, timeout=timeout)


def ended(server, sid: str, *, timeout: float = 5.0) -> dict:
    """The provider's record of call `sid` once it ended."""
    return until(lambda: (record := provider_call(server, sid))["ended_at"] is not None and record,
                 f"the provider's call {sid} goes on", timeout=timeout)


def events(timeline: list[dict]) -> list[str]:
    return [entry["event"] for entry in timeline]


def test_a_revoked_holder_leaves_the_call_at_once_and_the_desktop_takes_the_caller_off_hold(
        ring_server):
    server = ring_server
    home = household(server)
    tablet = client_device(home, "tablet", "Ana's tablet")
    desktop = client_device(home, "desktop", "Ana's desktop")
    settings(home, pull_requires_approval=True)  # nobody is left to approve: the pull goes ahead
    with App(server, tablet), App(server, desktop) as desktop_app:
        ring, caller_sid = connected_call(home, tablet)
        tablet_leg, = legs_to(server, f"client:{home.addresses[tablet.id]}")
        on_hold(server, ring.id, caller_sid, False)

        delete(server, tablet, by=desktop)  # the tablet was stolen: Ana deletes it from her desktop

        removed(server, ring.id, tablet_leg["sid"])
        ended(server, tablet_leg["sid"])
        on_hold(server, ring.id, caller_sid, True)  # the caller stays, hearing hold music
        lost = desktop_app.wait_for("call.holder_lost", ring.id)
        assert lost["device"]["id"] == tablet.id and lost["call"]["held_by"] is None
        waiting = home.get_call(ring.id)
        assert (waiting["state"], waiting["held_by"]) == ("connected", None)
        assert waiting["expires_at"] == lost["call"]["expires_at"] is not None

        body = ok(pull(server, desktop, ring.id), 202)["pull"]
        assert (body["state"], body["from_device"]) == ("approved", None)
        wait_pull(server, desktop, body["id"], "completed")
        desktop_app.wait_for("pull.completed", ring.id)
        on_hold(server, ring.id, caller_sid, False)  # talking to the desktop now

    desktop_leg, = legs_to(server, f"client:{home.addresses[desktop.id]}")
    stay = participant(server, ring.id, desktop_leg["sid"])
    assert stay["left_at"] is None and stay["joined_at"] is not None
    caller_stayed(server, caller_sid, f"callpull-{ring.id}")
    taken = home.get_call(ring.id)
    assert (taken["state"], taken["held_by"], taken["expires_at"]) == ("connected", desktop.id, None)
    names = events(taken["timeline"])
    assert names.index("holder_revoked") < names.index("pull_completed") < names.index("caller_unheld")
    assert "leg_removed" in names
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")


@pytest.mark.parametrize("fallback", [False, True], ids=["goodbye", "fallback"])
def test_nobody_takes_the_call_on_hold_in_time_the_caller_is_let_go_politely(servers, ring_settings,
                                                                             fallback):
    server = servers.start(HOLDER_LOST_HOLD_SECONDS=5, **ring_settings)
    home = household(server)
    fallback_number = phone_number()
    if fallback:
        home.update_line(fallback_number=fallback_number)
    tablet = client_device(home, "tablet", "Ana's tablet")
    desktop = client_device(home, "desktop", "Ana's desktop")
    with App(server, tablet), App(server, desktop) as desktop_app:
        ring, caller_sid = connected_call(home, tablet)
        delete(server, tablet, by=desktop)
        desktop_app.wait_for("call.holder_lost", ring.id)
        on_hold(server, ring.id, caller_sid, True)
        announced = desktop_app.wait_for("call.ended", ring.id, timeout=12)  # nobody pulls it
    assert announced["reason"] == "holder_revoked"
    final = home.get_call(ring.id)
    assert (final["state"], final["end_reason"]) == ("completed", "holder_revoked")
    if fallback:
        assert "sent_to_fallback" in events(final["timeline"])
        forwarded = until(lambda: legs_to(server, fallback_number), "the fallback was not dialled",
                          timeout=10)  # generous: a loaded machine
        assert forwarded[0]["parent_call_sid"] == caller_sid
    else:
        record = ended(server, caller_sid, timeout=10)  # generous: a loaded machine
        assert record["said"] and "Goodbye" in record["said"][-1]


def test_a_revoked_monitor_and_a_revoked_dialling_device_are_removed_an_idle_one_touches_nothing(
        ring_server):
    server = ring_server
    home = household(server)
    tablet = client_device(home, "tablet", "Ana's tablet")
    desktop = client_device(home, "desktop", "Ana's desktop")
    laptop = client_device(home, "web", "Ana's laptop")
    spare = home.account.register("tablet", name="Spare tablet")  # on no call
    # The laptop's soft-phone rings a long time before it answers.
    sim(server, "POST", "/devices", json={"address": f"client:{home.addresses[laptop.id]}", "behaviour": "answer",
                                          "answer_after": 30})
    settings(home, monitor_after_switch=True)
    with App(server, tablet), App(server, desktop) as desktop_app:
        ring, caller_sid = connected_call(home, tablet)
        moved = ok(pull(server, desktop, ring.id), 202)["pull"]
        wait_pull(server, desktop, moved["id"], "completed")
        tablet_leg, = legs_to(server, f"client:{home.addresses[tablet.id]}")
        assert participant(server, ring.id, tablet_leg["sid"])["muted"] is True  # the tablet listens

        # A revoked monitor stops listening; the desktop keeps the call, the caller is not held.
        delete(server, tablet, by=desktop)
        removed(server, ring.id, tablet_leg["sid"])
        on_hold(server, ring.id, caller_sid, False)
        assert home.get_call(ring.id)["held_by"] == desktop.id

        # A device being dialled for a pull is revoked: its leg is cancelled, its pull fails.
        dialling = ok(pull(server, laptop, ring.id), 202)["pull"]
        laptop_leg, = until(lambda: legs_to(server, f"client:{home.addresses[laptop.id]}"),
                            "the laptop was not dialled")
        delete(server, laptop, by=desktop)
        failed = wait_pull(server, desktop, dialling["id"], "failed")
        assert failed["reason"] == "device_revoked"
        ended(server, laptop_leg["sid"])  # it rang no more
        assert participant(server, ring.id, laptop_leg["sid"])["joined_at"] is None

        # A device on no call: nothing changes for the call.
        before = home.get_call(ring.id)
        delete(server, spare, by=desktop)
        after = home.get_call(ring.id)
        assert {key: after[key] for key in ("state", "held_by", "expires_at", "end_reason")} == \
               {key: before[key] for key in ("state", "held_by", "expires_at", "end_reason")}
        assert events(after["timeline"]).count("leg_removed") == 2
        assert "holder_revoked" not in events(after["timeline"])
        desktop_leg, = legs_to(server, f"client:{home.addresses[desktop.id]}")
        assert participant(server, ring.id, desktop_leg["sid"])["left_at"] is None
        assert not desktop_app.of("call.holder_lost", ring.id)
    caller_stayed(server, caller_sid, f"callpull-{ring.id}")
    home.carrier(ring.carrier_id, "hangup")
