"""Moving a live call: pull, approved switch, dial-in pull and transfer, with the
provider's REST side faked (conftest) and its callbacks posted, signed, as the
provider would."""

from datetime import timedelta
from xml.etree import ElementTree

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from callpull.models import AccountSettings, Call, CallLeg
from callpull.sweeper import calls_sweep
from devices import services as device_services
from tests.callpull.conftest import (
    LIVE_SID,
    conference,
    conference_sid,
    forward,
    join_leg,
    leg_status,
    report,
    signed_post,
)
from tests.conftest import client_for, error_code, make_device, make_user, rate_limits

pytestmark = pytest.mark.django_db
SID = LIVE_SID  # the caller of `live_call`



def caller_untouched(fake_provider):
    """The remote party's leg was never redirected or hung up."""
    return not any(action[0] in ("redirect", "hangup") for action in fake_provider.actions)


def account(user, **fields):
    AccountSettings.objects.update_or_create(user=user, defaults=fields)


def xml(response):
    assert response.status_code == 200, response.content
    return ElementTree.fromstring(response.content)


def test_pull_moves_the_call_without_the_caller_noticing(client, live_call, desktop, desktop_api, tablet, online,
                                                         fake_provider):
    tablet_socket = online(tablet[0])
    response = desktop_api.post(f"/api/v1/calls/{live_call}/pull")
    assert response.status_code == 202
    pull = response.json()["pull"]
    assert pull["state"] == "approved" and pull["from_device"] == str(tablet[0].pk)
    assert fake_provider.actions[0][:3] == ("add", f"callpull-{live_call}", "sip:sip:desk@pbx.example")
    join_leg(client, live_call, fake_provider)
    assert desktop_api.get(f"/api/v1/pulls/{pull['id']}").json()["pull"]["state"] == "completed"
    call = Call.objects.get()
    assert (call.state, call.held_by_id) == ("connected", desktop[0].pk)
    assert desktop_api.get(f"/api/v1/calls/{live_call}").json()["held_by"] == str(desktop[0].pk)
    tablet_leg = CallLeg.objects.get(device=tablet[0])
    assert ("remove", conference_sid(live_call), tablet_leg.provider_call_sid) in fake_provider.actions
    assert tablet_leg.state == "left" and tablet_leg.end_reason == "switched"
    assert caller_untouched(fake_provider)
    assert [t for t in tablet_socket.types() if t.startswith("pull.")] == ["pull.requested", "pull.completed"]
    events = [e["event"] for e in desktop_api.get(f"/api/v1/calls/{live_call}").json()["timeline"]]
    assert events.index("pull_requested") < events.index("pull_completed")


def test_the_removed_legs_leave_callback_does_not_end_the_call(client, live_call, desktop_api, tablet,
                                                                fake_provider):
    desktop_api.post(f"/api/v1/calls/{live_call}/pull")
    join_leg(client, live_call, fake_provider)
    old = CallLeg.objects.get(device=tablet[0])
    conference(client, live_call, "participant-leave", label=str(old.pk), sid=old.provider_call_sid)
    assert Call.objects.get().state == "connected"


def test_a_new_device_that_does_not_answer_leaves_the_call_where_it_was(client, live_call, desktop_api, tablet,
                                                                         fake_provider):
    pull = desktop_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]
    new_leg = CallLeg.objects.exclude(device=tablet[0]).get()
    leg_status(client, live_call, new_leg.pk, "no-answer")
    assert desktop_api.get(f"/api/v1/pulls/{pull['id']}").json()["pull"]["state"] == "failed"
    call = Call.objects.get()
    assert (call.state, call.held_by_id) == ("connected", tablet[0].pk)
    assert caller_untouched(fake_provider) and "remove" not in fake_provider.kinds()


def test_monitor_after_switch_keeps_the_old_device_as_a_muted_listener(client, live_call, user, desktop_api, tablet,
                                                                        fake_provider):
    account(user, monitor_after_switch=True)
    desktop_api.post(f"/api/v1/calls/{live_call}/pull")
    join_leg(client, live_call, fake_provider)
    old = CallLeg.objects.get(device=tablet[0])
    assert (old.role, old.state) == ("monitor", "joined")
    assert ("mute", conference_sid(live_call), old.provider_call_sid) in fake_provider.actions
    assert "remove" not in fake_provider.kinds()


def test_pull_needs_approval_when_the_user_wants_it(client, live_call, user, desktop_api, tablet, tablet_api,
                                                    online, fake_provider):
    account(user, pull_requires_approval=True)
    holder = online(tablet[0])
    pull = desktop_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]
    assert pull["state"] == "awaiting_approval"
    assert fake_provider.actions == []
    requested = [f for f in holder.frames() if f["type"] == "pull.requested"]
    assert requested and requested[0]["pull"]["id"] == pull["id"]
    refused = desktop_api.post(f"/api/v1/pulls/{pull['id']}/approve")
    assert refused.status_code == 403 and error_code(refused) == "not_holder"
    approved = tablet_api.post(f"/api/v1/pulls/{pull['id']}/approve")
    assert approved.json()["pull"]["state"] == "approved"
    join_leg(client, live_call, fake_provider)
    assert Call.objects.get().held_by_id != tablet[0].pk
    assert tablet_api.post(f"/api/v1/pulls/{pull['id']}/deny").status_code == 409


def test_a_denied_pull_dials_nobody(live_call, user, desktop_api, tablet, tablet_api, fake_provider):
    account(user, pull_requires_approval=True)
    pull = desktop_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]
    denied = tablet_api.post(f"/api/v1/pulls/{pull['id']}/deny")
    assert denied.json()["pull"]["state"] == "denied"
    assert fake_provider.actions == []
    assert Call.objects.get().held_by_id == tablet[0].pk


def test_no_answer_to_an_approval_counts_as_denied(live_call, user, desktop_api, tablet, fake_provider):
    account(user, pull_requires_approval=True)
    pull = desktop_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]
    calls_sweep(now=timezone.now() + timedelta(seconds=settings.PULL_APPROVAL_SECONDS - 1))
    assert desktop_api.get(f"/api/v1/pulls/{pull['id']}").json()["pull"]["state"] == "awaiting_approval"
    calls_sweep(now=timezone.now() + timedelta(seconds=settings.PULL_APPROVAL_SECONDS + 1))
    body = desktop_api.get(f"/api/v1/pulls/{pull['id']}").json()["pull"]
    assert (body["state"], body["reason"]) == ("denied", "timeout")
    assert fake_provider.actions == []


def test_pulls_of_other_users_calls_are_404_and_revoked_devices_401(live_call, desktop, desktop_api):
    _, token = make_device(make_user("mallory"), kind="desktop", connect_type="client", connect_address="m")
    response = client_for(token).post(f"/api/v1/calls/{live_call}/pull")
    assert response.status_code == 404
    device_services.device_revoke(device=desktop[0], now=timezone.now())
    assert desktop_api.post(f"/api/v1/calls/{live_call}/pull").status_code == 401
    assert Call.objects.get().pulls.count() == 0


def test_only_connected_calls_move_and_only_one_pull_at_a_time(client, handset_api, line, live_call, desktop_api,
                                                              tablet_api, user):
    ringing = report(handset_api, line).json()["call"]["id"]
    response = desktop_api.post(f"/api/v1/calls/{ringing}/pull")
    assert response.status_code == 409 and error_code(response) == "call_not_movable"
    here = tablet_api.post(f"/api/v1/calls/{live_call}/pull")
    assert here.status_code == 409 and error_code(here) == "already_here"
    account(user, pull_requires_approval=True)
    assert desktop_api.post(f"/api/v1/calls/{live_call}/pull").status_code == 202
    _, token = make_device(user, kind="web", platform="web", connect_type="client", connect_address="w")
    second = client_for(token).post(f"/api/v1/calls/{live_call}/pull")
    assert second.status_code == 409 and error_code(second) == "pull_in_progress"


# Dial-in pull ------------------------------------------------------------------

DIAL_IN_SID = "CA" + "4" * 32
PIN = "97531"


@pytest.fixture
def dialling_phone(user):
    """A device whose user registered the number it calls in from, and set a PIN."""
    from django.contrib.auth.hashers import make_password

    account(user, transfer_pin_hash=make_password(PIN))
    return make_device(user, kind="desktop", name="Car phone", phone_number="+15550004444")


def dial_in(client, *, sid, caller):
    return forward(client, sid=sid, caller=caller, forwarded_from=None)


def local(url):
    return url.replace(settings.PUBLIC_BASE_URL, "")


def enter_pin(client, root, *, pin=PIN, sid=DIAL_IN_SID, caller="+15550004444"):
    """The caller keys `pin` into the PIN prompt `root`; the TwiML that follows."""
    gather = root.find("Gather")
    assert gather.find("Say").text.endswith("Enter your PIN, then press hash.")
    return xml(signed_post(client, local(gather.get("action")), {"CallSid": sid, "From": caller, "Digits": pin,
                                                                 "FinishedOnKey": "#"}))


def test_dial_in_from_a_known_number_takes_the_one_live_call_after_the_pin(client, live_call, dialling_phone,
                                                                           tablet, fake_provider):
    prompt = xml(dial_in(client, sid=DIAL_IN_SID, caller="+15550004444"))
    assert prompt.find("Dial") is None and CallLeg.objects.filter(provider_call_sid=DIAL_IN_SID).count() == 0
    root = enter_pin(client, prompt)
    room = root.find("Dial/Conference")
    assert room.text == f"callpull-{live_call}"
    assert room.get("startConferenceOnEnter") == "true" and room.get("endConferenceOnExit") == "false"
    leg = CallLeg.objects.get(provider_call_sid=DIAL_IN_SID)
    assert room.get("participantLabel") == str(leg.pk)
    conference(client, live_call, "participant-join", label=str(leg.pk), sid=DIAL_IN_SID)
    call = Call.objects.get()
    assert call.held_by_id == dialling_phone[0].pk
    assert call.pulls.get().method == "dial_in" and call.pulls.get().state == "completed"
    assert CallLeg.objects.get(device=tablet[0]).state == "left"
    assert caller_untouched(fake_provider)


def test_dial_in_with_several_live_calls_offers_a_menu_after_the_pin(client, handset_api, line, live_call, user,
                                                                     dialling_phone, tablet_api, fake_provider):
    second_line_handset = handset_api
    other = report(second_line_handset, line, caller="+15550008888").json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{other}/answer")
    forward(client, sid="CA" + "2" * 32, caller="+15550008888")
    join_leg(client, other, fake_provider)
    prompt = xml(dial_in(client, sid=DIAL_IN_SID, caller="+15550004444"))
    assert "8 8 8 8" not in ElementTree.tostring(prompt, encoding="unicode")
    root = enter_pin(client, prompt)
    gather = root.find("Gather")
    assert gather.get("numDigits") == "1" and "press 2" in gather.find("Say").text
    assert "8 8 8 8" in gather.find("Say").text
    root = xml(signed_post(client, local(gather.get("action")),
                           {"CallSid": DIAL_IN_SID, "From": "+15550004444", "Digits": "2"}))
    assert root.find("Dial/Conference").text == f"callpull-{other}"


@pytest.mark.parametrize("caller", ["+15550001212", "+15550004444"])
def test_a_dial_in_gets_the_same_pin_prompt_whoever_it_claims_to_be(client, live_call, dialling_phone, caller):
    prompt = dial_in(client, sid=DIAL_IN_SID, caller=caller)
    unknown = dial_in(client, sid="CA" + "6" * 32, caller="+15550001313")
    assert prompt.content == unknown.content  # nothing tells a registered number from another
    assert b"Enter your PIN" in prompt.content and b"Dial" not in prompt.content
    assert Call.objects.get().pulls.count() == 0


def test_dial_in_from_a_withheld_number_is_a_polite_goodbye(client, live_call, dialling_phone, fake_provider):
    root = xml(dial_in(client, sid=DIAL_IN_SID, caller="anonymous"))
    assert root.find("Gather") is None and root.find("Dial") is None and root.find("Hangup") is not None
    assert Call.objects.get().pulls.count() == 0


def test_dial_in_with_approval_waits_on_hold_until_the_holder_approves(client, live_call, user, dialling_phone,
                                                                       tablet, tablet_api, online, fake_provider):
    account(user, pull_requires_approval=True)
    holder = online(tablet[0])
    root = enter_pin(client, xml(dial_in(client, sid=DIAL_IN_SID, caller="+15550004444")))
    assert root.find("Play").get("loop") == "0"
    pull = Call.objects.get().pulls.get()
    [requested] = [f for f in holder.frames() if f["type"] == "pull.requested"]
    assert requested["dial_in_from"] == "+15550004444" and requested["pull"]["method"] == "dial_in"
    tablet_api.post(f"/api/v1/pulls/{pull.pk}/approve")
    assert fake_provider.actions[-1] == ("redirect", DIAL_IN_SID,
                                         f"http://127.0.0.1:8000/telephony/twilio/join?pull={pull.pk}")
    root = xml(signed_post(client, f"/telephony/twilio/join?pull={pull.pk}", {"CallSid": DIAL_IN_SID}))
    assert root.find("Dial/Conference").text == f"callpull-{live_call}"


def test_a_retried_pin_webhook_gets_the_same_answer(client, live_call, dialling_phone, fake_provider):
    prompt = xml(dial_in(client, sid=DIAL_IN_SID, caller="+15550004444"))
    first = enter_pin(client, prompt)
    again = enter_pin(client, prompt)
    assert ElementTree.tostring(first) == ElementTree.tostring(again)
    retried_voice = xml(dial_in(client, sid=DIAL_IN_SID, caller="+15550004444"))
    assert ElementTree.tostring(retried_voice) == ElementTree.tostring(first)
    assert CallLeg.objects.filter(provider_call_sid=DIAL_IN_SID).count() == 1
    assert Call.objects.get().pulls.count() == 1


# Transfer -------------------------------------------------------------------------

@pytest.fixture
def allowlisted(user):
    from django.contrib.auth.hashers import make_password

    account(user, transfer_allowlist=["+15550002222"], transfer_pin_hash=make_password("2468"))


def transfer(client, call_id, number="+15550002222", pin="2468"):
    return client.post(f"/api/v1/calls/{call_id}/transfer", {"number": number, "pin": pin}, format="json")


def test_transfer_to_an_allowlisted_number_hands_the_call_over(client, live_call, allowlisted, tablet_api, tablet,
                                                               fake_provider):
    response = transfer(tablet_api, live_call)
    assert response.status_code == 202
    assert fake_provider.actions[0][0::2] == ("place", "number:+15550002222")  # screened (test_screening.py)
    join_leg(client, live_call, fake_provider)
    call = Call.objects.get()
    assert (call.state, call.transferred_to, call.held_by_id) == ("connected", "+15550002222", None)
    assert CallLeg.objects.get(device=tablet[0]).end_reason == "transferred"
    assert caller_untouched(fake_provider)


def test_a_number_off_the_list_is_refused_whatever_the_pin(live_call, allowlisted, tablet_api, fake_provider):
    response = transfer(tablet_api, live_call, number="+15550003333", pin="2468")
    assert response.status_code == 403 and error_code(response) == "number_not_allowed"
    assert fake_provider.actions == []


@override_settings(RATE_LIMITS=rate_limits(transfer_pin=(3, 900)))
def test_wrong_pins_are_refused_until_rate_limited(live_call, allowlisted, tablet_api, fake_provider):
    for _ in range(3):
        response = transfer(tablet_api, live_call, pin="0000")
        assert response.status_code == 403 and error_code(response) == "wrong_pin"
    limited = transfer(tablet_api, live_call, pin="2468")
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert fake_provider.actions == []


def test_transfer_needs_a_pin_set_first(live_call, user, tablet_api):
    account(user, transfer_allowlist=["+15550002222"])
    response = transfer(tablet_api, live_call)
    assert response.status_code == 403 and error_code(response) == "transfer_pin_not_set"
