"""Screened number legs, end to end through a running server and its simulator:
a phone number answered by voicemail (a simulated device that picks up and presses
nothing) never takes the call, one where a person presses 1 does. Nothing is mocked:
the simulator places the number's call, fetches the server's screen webhook, plays
the whisper, keys what the device was told to (`press`) and posts the <Gather>'s
action (docs/MOVING.md, "Screened number legs")."""

from __future__ import annotations

import pytest

from tests.callpull.test_verification import CONFIRM, SPOKEN_CODE, START
from tests.e2e.support import SERVER_NUMBER, call, eventually
from tests.e2e.test_moves import caller_stayed, connected_call, pull, settings, transfer, wait_pull
from tests.e2e.test_ring_flow import App, household, legs_to, ok, phone_number, provider_call, sim

pytestmark = pytest.mark.e2e

# The <Gather> waits 8 s for the key after the whisper; the placed call rings first.
SCREEN_WAIT = 20


def number_device(home, number: str):
    """A device of the household whose connect target is `number`, verified the way a
    user does it: the code the verification call reads out is sent back."""
    device = home.account.register("desktop", name="Desk phone", platform="other",
                                   connect={"type": "number", "address": number})
    ok(call(home.server, "POST", START, token=device.token), 202)

    def code_said():
        placed, = legs_to(home.server, number)
        spoken = SPOKEN_CODE.findall(" ".join(placed["said"]))
        assert spoken, placed["status"]
        return spoken[0].replace(" ", "")
    code = eventually(code_said, timeout=10)
    confirmed = ok(call(home.server, "POST", CONFIRM, token=device.token, json={"code": code}))
    assert confirmed["connect"]["verified"] is True
    return device


def phone_at(server, number: str, **behaviour) -> None:
    """The simulated phone at `number`: answers, and presses `press` in a <Gather> (or nothing)."""
    sim(server, "POST", "/devices", json={"address": number, "behaviour": "answer", **behaviour})


def screened_leg(server, number: str) -> dict:
    """The call placed to `number` that heard the whisper (not the verification call)."""
    def whispered():
        legs = [leg for leg in legs_to(server, number) if any("Press 1 to take it" in said for said in leg["said"])]
        assert len(legs) == 1, [leg["said"] for leg in legs_to(server, number)]
        return legs[0]
    return eventually(whispered, timeout=SCREEN_WAIT)


def ended(server, sid: str) -> dict:
    def check():
        record = provider_call(server, sid)
        assert record["ended_at"] is not None, record["status"]
        return record
    return eventually(check, timeout=SCREEN_WAIT)


def whisper(home) -> str:
    return f"Call for {' '.join(home.number.lstrip('+'))}. Press 1 to take it."


def test_a_number_target_whose_voicemail_answers_does_not_take_a_pulled_call(ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    number = phone_number()
    desk = number_device(home, number)
    phone_at(ring_server, number)  # voicemail: picks up, presses nothing
    with App(ring_server, tablet) as tablet_app, App(ring_server, desk):
        ring, caller_sid = connected_call(home, tablet)
        body = ok(pull(ring_server, desk, ring.id), 202)["pull"]
        failed = wait_pull(ring_server, desk, body["id"], "failed", timeout=SCREEN_WAIT)
        assert failed["reason"] == "no-answer"
        tablet_app.wait_for("pull.failed", ring.id)
    leg = ended(ring_server, screened_leg(ring_server, number)["sid"])
    assert leg["said"] == [whisper(home)] and leg["digits"] == []
    assert leg["direction"] == "outbound-api" and leg["from"] == SERVER_NUMBER
    assert leg["conferences"] == []  # it never joined the call
    tablet_leg, = legs_to(ring_server, f"client:{home.addresses[tablet.id]}")
    assert provider_call(ring_server, tablet_leg["sid"])["ended_at"] is None  # the tablet keeps the call
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    now = home.get_call(ring.id)
    assert (now["state"], now["held_by"]) == ("connected", tablet.id)
    assert "pull_completed" not in [entry["event"] for entry in now["timeline"]]
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")


def test_a_number_target_where_a_person_presses_1_takes_the_pulled_call(ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    number = phone_number()
    desk = number_device(home, number)
    phone_at(ring_server, number, press="1", press_after=0.3)
    with App(ring_server, tablet) as tablet_app, App(ring_server, desk):
        ring, caller_sid = connected_call(home, tablet)
        body = ok(pull(ring_server, desk, ring.id), 202)["pull"]
        wait_pull(ring_server, desk, body["id"], "completed", timeout=SCREEN_WAIT)
        tablet_app.wait_for("pull.completed", ring.id)
    leg = screened_leg(ring_server, number)
    assert leg["said"] == [whisper(home)] and leg["digits"] == ["1"]
    assert leg["ended_at"] is None and leg["conference"]["friendly_name"] == f"callpull-{ring.id}"
    tablet_leg, = legs_to(ring_server, f"client:{home.addresses[tablet.id]}")
    ended(ring_server, tablet_leg["sid"])  # the old device was dropped
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    assert home.get_call(ring.id)["held_by"] == desk.id
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")


def test_a_transfer_to_an_allowlisted_number_whose_voicemail_answers_does_not_transfer(ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    office = phone_number()
    phone_at(ring_server, office)  # voicemail
    settings(home, transfer_allowlist=[office], transfer_pin="2468", password=home.account.password)
    with App(ring_server, tablet) as tablet_app:
        ring, caller_sid = connected_call(home, tablet)
        ok(transfer(home, tablet, ring.id, office, "2468"), 202)

        def transfer_failed():
            failed = [entry for entry in home.get_call(ring.id)["timeline"] if entry["event"] == "leg_failed"]
            assert failed, [entry["event"] for entry in home.get_call(ring.id)["timeline"]]
            return failed
        failed, = eventually(transfer_failed, timeout=SCREEN_WAIT)
        assert failed["detail"] == {"role": "transfer", "reason": "no-answer"}
        assert tablet_app.of("call.transferred", ring.id) == []
    leg = ended(ring_server, screened_leg(ring_server, office)["sid"])
    assert leg["conferences"] == [] and leg["digits"] == []
    now = home.get_call(ring.id)
    assert (now["state"], now["held_by"], now["transferred_to"]) == ("connected", tablet.id, None)
    tablet_leg, = legs_to(ring_server, f"client:{home.addresses[tablet.id]}")
    assert provider_call(ring_server, tablet_leg["sid"])["ended_at"] is None
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")
