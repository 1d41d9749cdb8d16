"""Caller id is not identity: a dial-in takes a call only after the account's PIN,
wrong PINs are limited per calling number and per account (and never logged), the
menu's choice needs proof of the PIN, and a transfer PIN limit that an attacker's
device uses up does not lock the owner out.

The spoofed dial-in runs end to end (a running server, the bundled simulator as
carrier and provider, nothing mocked); the limits run in process, with the
provider's REST side faked (tests/callpull/conftest.py).
"""

import logging

import pytest
from django.contrib.auth.hashers import check_password, make_password
from django.test import override_settings

from callpull import moves
from callpull.models import Call, CallLeg
from tests.callpull.conftest import signed_post
from tests.callpull.test_moves import (
    DIAL_IN_SID,
    PIN,
    account,
    dial_in,
    dialling_phone,  # noqa: F401 (fixture)
    enter_pin,
    local,
    xml,
)
from tests.conftest import client_for, error_code, make_device, rate_limits
from tests.e2e.test_moves import PIN_PROMPT, connected_call, hung_up, set_pin
from tests.e2e.test_moves import dial_in as sim_dial_in
from tests.e2e.test_moves import enter_pin as key_in_pin
from tests.e2e.test_ring_flow import App, household, legs_to, phone_number, provider_call

CAR = "+15550004444"
STRANGER = "+15550001212"
WRONG = "24681357"  # nowhere in the numbers, sids or ids used here (nor is PIN)
LIMIT = rate_limits(dial_in_pin=(3, 900), transfer_pin=(3, 900))


# End to end: a spoofed caller id -----------------------------------------------

@pytest.mark.e2e
def test_a_spoofed_caller_id_hears_only_the_pin_prompt_and_cannot_take_the_call(ring_server):
    home = household(ring_server)
    tablet_number = phone_number()
    address = "tab-" + tablet_number[-8:]
    tablet = home.account.register("tablet", name="Ana's tablet", phone_number=tablet_number,
                                   connect={"type": "client", "address": address})
    home.addresses[tablet.id] = address
    set_pin(home)
    with App(ring_server, tablet) as tablet_app:
        ring, caller_sid = connected_call(home, tablet)
        [tablet_leg] = legs_to(ring_server, f"client:{address}")
        # Mallory's phone says it is Ana's tablet.
        spoofed = sim_dial_in(ring_server, tablet_number)
        for attempt in (1, 2, 3):
            key_in_pin(ring_server, spoofed["sid"], WRONG, attempt=attempt)
        record = hung_up(ring_server, spoofed["sid"])
        assert not tablet_app.of("pull.requested", ring.id)
    assert record["said"][0] == PIN_PROMPT and record["said"][-1] == "That PIN is not right. Goodbye."
    assert not any(char.isdigit() for said in record["said"] for char in said)  # no caller's digits, no count
    assert record["conferences"] == []  # never near the call
    live = home.get_call(ring.id)
    assert (live["state"], live["held_by"]) == ("connected", tablet.id)
    assert not any(entry["event"].startswith("pull_") for entry in live["timeline"])
    assert provider_call(ring_server, tablet_leg["sid"])["ended_at"] is None  # Ana's leg was not removed
    assert WRONG not in ring_server.log_tail(400)
    home.carrier(ring.carrier_id, "hangup")


# Wrong PINs: tries, limits, logs -------------------------------------------------

@pytest.fixture
def pin_checks(monkeypatch):
    """Every PIN check (or its stand-in for a number without an account) in callpull.moves."""
    seen = []

    def check(pin, encoded):
        seen.append("check")
        return check_password(pin, encoded)

    def stand_in(pin):
        seen.append("stand-in")
        return make_password(pin)

    monkeypatch.setattr(moves, "check_password", check)
    monkeypatch.setattr(moves, "make_password", stand_in)
    return seen


def pin_call(client, *, sid, caller, pins):
    """A call from `caller` that keys each of `pins` in turn; the last answer."""
    root = xml(dial_in(client, sid=sid, caller=caller))
    for pin in pins:
        root = enter_pin(client, root, pin=pin, sid=sid, caller=caller)
    return root


def said(root) -> str:
    return " ".join(element.text or "" for element in root.iter("Say"))


def test_three_wrong_pins_end_the_call_politely_and_take_nothing(client, live_call, dialling_phone, tablet,  # noqa: F811
                                                                 fake_provider):
    root = xml(dial_in(client, sid=DIAL_IN_SID, caller=CAR))
    for _ in range(2):
        root = enter_pin(client, root, pin=WRONG)
        assert root.find("Gather") is not None and said(root).startswith("That PIN is not right.")
    root = enter_pin(client, root, pin=WRONG)
    assert root.find("Gather") is None and root.find("Hangup") is not None
    assert said(root) == "That PIN is not right. Goodbye."
    assert not CallLeg.objects.filter(provider_call_sid=DIAL_IN_SID).exists()
    call = Call.objects.get()
    assert call.pulls.count() == 0 and call.held_by_id == tablet[0].pk
    assert fake_provider.actions == []


@override_settings(RATE_LIMITS=LIMIT)
def test_wrong_pins_are_limited_per_calling_number(client, live_call, dialling_phone, pin_checks):  # noqa: F811
    # A stranger's number belongs to no account: three wrong PINs use up that number only.
    root = pin_call(client, sid="CA" + "7" * 32, caller=STRANGER, pins=[WRONG, WRONG, WRONG])
    assert root.find("Hangup") is not None and len(pin_checks) == 3
    root = pin_call(client, sid="CA" + "8" * 32, caller=STRANGER, pins=[PIN])
    assert root.find("Hangup") is not None and said(root).startswith("Sorry")
    assert len(pin_checks) == 3  # refused without a PIN check
    # The owner's number and account were not touched: the right PIN takes the call.
    root = pin_call(client, sid=DIAL_IN_SID, caller=CAR, pins=[PIN])
    assert root.find("Dial/Conference").text == f"callpull-{live_call}"


@override_settings(RATE_LIMITS=LIMIT)
def test_wrong_pins_are_limited_per_account(client, live_call, user, dialling_phone, pin_checks):  # noqa: F811
    make_device(user, kind="desktop", name="Office phone", phone_number="+15550003333")
    root = pin_call(client, sid="CA" + "7" * 32, caller=CAR, pins=[WRONG, WRONG, WRONG])
    assert root.find("Hangup") is not None and len(pin_checks) == 3
    # Another of the account's numbers, never used: the account has used up its PINs.
    root = pin_call(client, sid=DIAL_IN_SID, caller="+15550003333", pins=[PIN])
    assert root.find("Dial") is None and said(root).startswith("Sorry")
    assert len(pin_checks) == 3
    assert Call.objects.get().pulls.count() == 0


def test_pins_are_never_logged(client, live_call, dialling_phone, caplog):  # noqa: F811
    with caplog.at_level(logging.DEBUG):
        pin_call(client, sid="CA" + "7" * 32, caller=CAR, pins=[WRONG, PIN])
    wrong = [r for r in caplog.records if r.levelno == logging.WARNING and "wrong PIN" in r.getMessage()]
    assert len(wrong) == 1
    assert WRONG not in caplog.text and PIN not in caplog.text


def test_an_account_without_a_pin_cannot_dial_in(client, live_call, user, dialling_phone):  # noqa: F811
    account(user, transfer_pin_hash="")
    root = pin_call(client, sid=DIAL_IN_SID, caller=CAR, pins=[""])
    assert root.find("Dial") is None and said(root).startswith("That PIN is not right.")
    assert Call.objects.get().pulls.count() == 0


# The menu's choice needs proof of the PIN ------------------------------------------------

@pytest.fixture
def two_live_calls(client, handset_api, line, live_call, tablet_api, fake_provider):  # noqa: F811
    from tests.callpull.conftest import forward, join_leg, report

    other = report(handset_api, line, caller="+15550008888").json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{other}/answer")
    forward(client, sid="CA" + "2" * 32, caller="+15550008888")
    join_leg(client, other, fake_provider)
    return live_call, other


def test_a_menu_choice_without_proof_of_the_pin_takes_nothing(client, two_live_calls, dialling_phone):  # noqa: F811
    path = "/telephony/twilio/dial-in-choice"
    device = dialling_phone[0].pk
    forged = {"no proof": f"{path}?device={device}", "not signed": f"{path}?device={device}&proof=x"}
    for why, url in forged.items():
        root = xml(signed_post(client, url, {"CallSid": DIAL_IN_SID, "From": CAR, "Digits": "2"}))
        assert root.find("Dial") is None and root.find("Hangup") is not None, why
    # A proof is bound to the CallSid that entered the PIN: another call cannot use it.
    action = local(pin_call(client, sid=DIAL_IN_SID, caller=CAR, pins=[PIN]).find("Gather").get("action"))
    root = xml(signed_post(client, action, {"CallSid": "CA" + "9" * 32, "From": CAR, "Digits": "2"}))
    assert root.find("Dial") is None and root.find("Hangup") is not None
    assert not CallLeg.objects.filter(provider_call_sid__in=[DIAL_IN_SID, "CA" + "9" * 32]).exists()
    root = xml(signed_post(client, action, {"CallSid": DIAL_IN_SID, "From": CAR, "Digits": "2"}))
    assert root.find("Dial/Conference").text == f"callpull-{two_live_calls[1]}"


# The transfer PIN's limit ----------------------------------------------------------

@override_settings(RATE_LIMITS=LIMIT)
def test_an_attackers_wrong_transfer_pins_do_not_lock_the_owner_out(live_call, user, tablet_api, fake_provider):  # noqa: F811
    account(user, transfer_allowlist=["+15550002222"], transfer_pin_hash=make_password(PIN))
    _, stolen = make_device(user, kind="desktop", name="Stolen laptop")
    attacker = client_for(stolen)
    body = {"number": "+15550002222", "pin": WRONG}
    for _ in range(3):
        response = attacker.post(f"/api/v1/calls/{live_call}/transfer", body, format="json")
        assert response.status_code == 403 and error_code(response) == "wrong_pin"
    limited = attacker.post(f"/api/v1/calls/{live_call}/transfer", {**body, "pin": PIN}, format="json")
    assert limited.status_code == 429
    owner = tablet_api.post(f"/api/v1/calls/{live_call}/transfer", {**body, "pin": PIN}, format="json")
    assert owner.status_code == 202
    assert [action[0::2] for action in fake_provider.actions] == [("place", "number:+15550002222")]

