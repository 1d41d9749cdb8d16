"""Targets are verified before they carry a call (issue 12, attack 3).

A device could set its own `connect` to any number and pull a live call there. Now
a `number` target must be proven by the code a call to it reads out
(callpull/verification.py) before the device can answer or pull, and no leg is
ever dialled to a target that lost its proof in the meantime.

The first tests run in-process with the provider faked (tests/callpull/conftest.py);
the last one drives a running server and its bundled simulator over HTTP.
"""

import re
import uuid

import pytest

from callpull.models import AccountSettings, Call, CallLeg, Pull
from devices.models import Device
from tests.callpull.conftest import forward, report
from tests.callpull.test_verification import CONFIRM, NUMBER, SPOKEN_CODE, START
from tests.conftest import client_for, error_code, make_device
from tests.e2e.support import SERVER_NUMBER, call, eventually
from tests.e2e.support import error_code as http_error_code
from tests.e2e.test_moves import caller_stayed, pull, wait_pull
from tests.e2e.test_ring_flow import App, answer, household, legs_to, ok, phone_number, sim


def verify(device_api, placed):
    assert device_api.post(START).status_code == 202
    response = device_api.post(CONFIRM, {"code": placed.code()}, format="json")
    assert response.status_code == 200, response.content


def not_verified(response) -> bool:
    return (response.status_code == 409 and error_code(response) == "connect_not_verified"
            and START in response.json()["error"]["message"])


def added_to(fake_provider, address):
    # A number target is dialled by a call of its own, screened before it joins (tests/callpull/test_screening.py).
    return [action for action in fake_provider.actions if action[0] in ("add", "place") and action[2] == address]


@pytest.mark.django_db
def test_an_unverified_number_target_cannot_answer_until_it_is_verified(client, handset_api, line, phone,
                                                                        placed, fake_provider):
    phone_api = client_for(phone[1])
    call_id = report(handset_api, line).json()["call"]["id"]
    assert not_verified(phone_api.post(f"/api/v1/calls/{call_id}/answer"))
    assert Call.objects.get().answered_by_id is None
    verify(phone_api, placed)
    assert phone_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    forward(client, sid="CA" + uuid.uuid4().hex)
    assert added_to(fake_provider, f"number:{NUMBER}")



@pytest.mark.django_db
def test_an_unverified_number_target_cannot_pull_until_it_is_verified(live_call, tablet, phone, placed,
                                                                      fake_provider):
    phone_api = client_for(phone[1])
    assert not_verified(phone_api.post(f"/api/v1/calls/{live_call}/pull"))
    assert not Pull.objects.exists() and fake_provider.actions == []
    verify(phone_api, placed)
    assert phone_api.post(f"/api/v1/calls/{live_call}/pull").status_code == 202
    assert added_to(fake_provider, f"number:{NUMBER}")


@pytest.mark.django_db
def test_a_sip_target_without_proof_cannot_pull(live_call, user, fake_provider):
    desk, token = make_device(user, kind="desktop", name="Desk", connect_type="sip",
                              connect_address="sip:desk@pbx.example")
    Device.objects.filter(pk=desk.pk).update(connect_verified_at=None)  # e.g. set before SIP_DOMAINS existed
    assert not_verified(client_for(token).post(f"/api/v1/calls/{live_call}/pull"))
    assert fake_provider.actions == []


@pytest.mark.django_db
def test_no_leg_is_dialled_to_a_target_that_lost_its_proof_after_the_answer(client, handset_api, line, phone,
                                                                            placed, fake_provider):
    phone_api = client_for(phone[1])
    verify(phone_api, placed)
    call_id = report(handset_api, line).json()["call"]["id"]
    assert phone_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    # The target changes before the forwarded call arrives (a new number is not proven).
    Device.objects.filter(pk=phone[0].pk).update(connect_address="+19005550123", connect_verified_at=None)
    forward(client, sid="CA" + uuid.uuid4().hex)
    assert [action for action in fake_provider.actions if action[0] == "add"] == []
    leg = CallLeg.objects.get(call_id=call_id)
    assert (leg.state, leg.end_reason) == ("failed", "target_not_verified")
    call = Call.objects.get(pk=call_id)
    assert (call.state, call.end_reason) == ("failed", "target_not_verified")  # the caller goes to the fallback
    events = [entry["event"] for entry in handset_api.get(f"/api/v1/calls/{call_id}").json()["timeline"]]
    assert "leg_failed" in events


@pytest.mark.django_db
def test_an_approved_pull_is_not_dialled_to_a_target_changed_while_it_waited(live_call, user, tablet, tablet_api,
                                                                            phone, placed, fake_provider):
    AccountSettings.objects.update_or_create(user=user, defaults={"pull_requires_approval": True})
    phone_api = client_for(phone[1])
    verify(phone_api, placed)
    pull_id = phone_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]["id"]
    Device.objects.filter(pk=phone[0].pk).update(connect_address="+19005550123", connect_verified_at=None)
    assert tablet_api.post(f"/api/v1/pulls/{pull_id}/approve").status_code == 200
    assert [action for action in fake_provider.actions if action[0] == "add"] == []
    leg = CallLeg.objects.get(call_id=live_call, device=phone[0])
    assert (leg.state, leg.end_reason) == ("failed", "target_not_verified")
    call = Call.objects.get(pk=live_call)
    assert (call.state, call.held_by_id) == ("connected", tablet[0].pk)
    # The pull names its leg before anything is dialled, so the refused leg fails it at once.
    pulled = Pull.objects.get(pk=pull_id)
    assert (pulled.state, pulled.reason, pulled.leg_id) == ("failed", "target_not_verified", leg.pk)


# End to end -----------------------------------------------------------------------

def heard_code(leg: dict) -> str:
    """The code as the person answering the phone hears it: the digits the call said."""
    spoken = SPOKEN_CODE.findall(" ".join(leg["said"]))
    assert spoken and len(set(spoken)) == 1, leg["said"]
    return spoken[0].replace(" ", "")


@pytest.mark.e2e
def test_a_number_target_proves_itself_by_the_code_a_call_reads_out_then_pulls_a_live_call(
        ring_server):
    home = household(ring_server)
    tablet = home.tablet("Tablet")
    number = phone_number()
    phone = home.account.register("tablet", name="Phone", connect={"type": "number", "address": number})
    with App(ring_server, tablet):
        ring = home.ring()
        refused = answer(ring_server, phone, ring.id)
        assert refused.status_code == 409 and http_error_code(refused) == "connect_not_verified"
        ok(answer(ring_server, tablet, ring.id))
        caller_sid = home.carrier(ring.carrier_id, "reject")["provider_call_sid"]
        home.wait_state(ring.id, "connected")
        refused = pull(ring_server, phone, ring.id)
        assert refused.status_code == 409 and http_error_code(refused) == "connect_not_verified"
        assert legs_to(ring_server, number) == []  # nothing was dialled to it

        started = ok(call(ring_server, "POST", START, token=phone.token), 202)["verification"]
        assert started["number"] == number

        def code_said():
            placed, = legs_to(ring_server, number)
            assert placed["said"], placed["status"]
            return placed
        placed = eventually(code_said, timeout=10)
        assert placed["from"] == SERVER_NUMBER and placed["direction"] == "outbound-api"
        code = heard_code(placed)
        wrong = call(ring_server, "POST", CONFIRM, token=phone.token,
                     json={"code": f"{(int(code) + 1) % 10 ** 6:06d}"})
        assert wrong.status_code == 400 and http_error_code(wrong) == "wrong_code"
        confirmed = ok(call(ring_server, "POST", CONFIRM, token=phone.token, json={"code": code}))
        assert confirmed["connect"] == {"type": "number", "address": number, "verified": True}

        # Whoever answers the phone presses 1 (a number joins only then: tests/e2e/test_screening.py).
        sim(ring_server, "POST", "/devices", json={"address": number, "behaviour": "answer", "press": "1"})
        moved = ok(pull(ring_server, phone, ring.id), 202)["pull"]
        wait_pull(ring_server, phone, moved["id"], "completed", timeout=15)
    carrying = [leg for leg in legs_to(ring_server, number) if leg["sid"] != placed["sid"]]
    assert len(carrying) == 1 and carrying[0]["ended_at"] is None, carrying
    assert home.get_call(ring.id)["held_by"] == phone.id
    caller_stayed(ring_server, caller_sid, f"callpull-{ring.id}")
    home.carrier(ring.carrier_id, "hangup")
    home.wait_state(ring.id, "completed")
    logged = ring_server.log_path.read_text(errors="replace")
    assert not re.search(rf"(?<!\d){code}(?!\d)|{' '.join(code)}", logged), "the code reached the server's log"


@pytest.mark.django_db
def test_a_sip_target_whose_domain_left_sip_domains_carries_no_more_calls(live_call, user, settings):
    """SIP_DOMAINS is checked when a target is set and again before it carries a call."""
    desktop, token = make_device(user, kind="desktop", name="Desk", connect_type="sip",
                                 connect_address="sip:desk@pbx.example")
    settings.SIP_DOMAINS = ["new-pbx.example"]  # the operator moved to another PBX
    response = client_for(token).post(f"/api/v1/calls/{live_call}/pull")
    assert response.status_code == 409 and error_code(response) == "connect_not_verified"
    settings.SIP_DOMAINS = ["pbx.example"]
    assert client_for(token).post(f"/api/v1/calls/{live_call}/pull").status_code == 202
