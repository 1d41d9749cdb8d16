"""Screened number legs: a phone number (a device's `number` target, a transfer target)
is dialled by a call of its own that whispers "Call for …, press 1" and joins the
call's conference only once a person pressed 1. Voicemail presses nothing, so it never
takes the call. The provider's REST side is faked (conftest) and its webhooks posted,
signed, as the provider would (docs/MOVING.md, "Screened number legs")."""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.utils import timezone

from callpull.legs import SCREENING_SECONDS, legs_dialing_expired
from callpull.models import AccountSettings, Call, CallLeg, Pull
from callpull.sweeper import calls_sweep
from callpull.telephony.services import SCREEN_TOO_LATE
from tests.callpull.conftest import LIVE_SID, conference, forward, leg_status, report, signed_post
from tests.conftest import client_for, make_device

pytestmark = pytest.mark.django_db

OFFICE = "+15550002222"  # on the allow-list
DESK_PHONE = "+15550006666"  # a device's verified number target
SPOKEN_LINE = "1 5 5 5 1 2 3 4 5 6 7"  # the line fixture's +15551234567, digit by digit


@pytest.fixture
def allowlisted(user):
    AccountSettings.objects.update_or_create(user=user, defaults={
        "transfer_allowlist": [OFFICE], "transfer_pin_hash": make_password("2468")})


@pytest.fixture
def desk_phone(user):
    """A device whose connect target is a verified phone number."""
    return make_device(user, kind="desktop", name="Desk phone", connect_type="number", connect_address=DESK_PHONE,
                       connect_verified_at=timezone.now())


def local(url: str) -> str:
    return url.replace(settings.PUBLIC_BASE_URL, "")


def xml(response):
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/xml")
    return ElementTree.fromstring(response.content)


def placed_leg(fake_provider) -> tuple[CallLeg, dict]:
    """The leg the last placed call is for, and what was asked of the provider."""
    placed = fake_provider.placed[-1]
    return CallLeg.objects.get(pk=parse_qs(urlsplit(placed["url"]).query)["leg"][0]), placed


def answered(client, leg: CallLeg, *, sid: str | None = None, url: str | None = None):
    """The placed call was answered: the provider fetches its Url."""
    url = url or f"/telephony/twilio/screen?call={leg.call_id}&leg={leg.pk}"
    return signed_post(client, local(url), {"CallSid": sid or leg.provider_call_sid, "CallStatus": "in-progress",
                                            "Direction": "outbound-api"})


def pressed(client, leg: CallLeg, digits: str, *, sid: str | None = None):
    """The <Gather>'s action: `digits` pressed ("" when nothing came in time)."""
    return signed_post(client, f"/telephony/twilio/screen?call={leg.call_id}&leg={leg.pk}&step=key",
                       {"CallSid": sid or leg.provider_call_sid, "CallStatus": "in-progress", "Digits": digits})


def joined(client, leg: CallLeg):
    leg.refresh_from_db()
    return conference(client, leg.call_id, "participant-join", label=str(leg.pk), sid=leg.provider_call_sid)


def names(call_id) -> list[str]:
    return list(Call.objects.get(pk=call_id).timeline.order_by("at", "pk").values_list("event", flat=True))


def caller_untouched(fake_provider) -> bool:
    return not any(action[0] in ("redirect", "hangup") for action in fake_provider.actions)


def test_a_transfer_places_a_call_that_whispers_before_anything_joins(client, live_call, allowlisted, line,
                                                                      tablet_api, fake_provider):
    response = tablet_api.post(f"/api/v1/calls/{live_call}/transfer", {"number": OFFICE, "pin": "2468"},
                               format="json")
    assert response.status_code == 202
    assert "add" not in fake_provider.kinds()  # not straight into the conference
    leg, placed = placed_leg(fake_provider)
    assert (leg.role, leg.number, leg.state) == ("transfer", OFFICE, "dialing")
    assert placed["to"] == OFFICE and placed["from_"] == line.server_number.number
    assert placed["url"] == f"{settings.PUBLIC_BASE_URL}/telephony/twilio/screen?call={live_call}&leg={leg.pk}"
    assert placed["status_url"] == f"{settings.PUBLIC_BASE_URL}/telephony/twilio/status?call={live_call}&leg={leg.pk}"
    assert placed["timeout"] == settings.DIAL_TIMEOUT_SECONDS
    assert leg.provider_call_sid == fake_provider.sids[str(leg.pk)]

    root = xml(answered(client, leg, url=placed["url"]))
    gather, hangup = list(root)
    assert gather.tag == "Gather" and hangup.tag == "Hangup"
    assert (gather.get("input"), gather.get("numDigits"), gather.get("timeout")) == ("dtmf", "1", "8")
    assert gather.get("actionOnEmptyResult") == "true" and gather.get("finishOnKey") == ""
    assert gather.get("action") == f"{placed['url']}&step=key" and gather.get("method") == "POST"
    assert gather.find("Say").text == f"Call for {SPOKEN_LINE}. Press 1 to take it."
    assert Call.objects.get().transferred_to == ""  # nothing moved yet


def test_pressing_1_joins_the_conference_and_completes_the_transfer(client, live_call, allowlisted, tablet,
                                                                    tablet_api, fake_provider):
    tablet_api.post(f"/api/v1/calls/{live_call}/transfer", {"number": OFFICE, "pin": "2468"}, format="json")
    leg, _ = placed_leg(fake_provider)
    xml(answered(client, leg))
    room = xml(pressed(client, leg, "1")).find("Dial/Conference")
    assert room.text == f"callpull-{live_call}" and room.get("participantLabel") == str(leg.pk)
    assert room.get("startConferenceOnEnter") == "true" and room.get("endConferenceOnExit") == "false"
    assert room.get("statusCallback") == f"{settings.PUBLIC_BASE_URL}/telephony/twilio/conference?call={live_call}"
    assert Call.objects.get().transferred_to == ""  # the join completes it, not the key
    joined(client, leg)
    call = Call.objects.get()
    assert (call.state, call.transferred_to, call.held_by_id) == ("connected", OFFICE, None)
    assert CallLeg.objects.get(device=tablet[0]).end_reason == "transferred"
    assert caller_untouched(fake_provider)


def test_voicemail_that_presses_nothing_does_not_take_a_pulled_call(client, live_call, tablet, desk_phone,
                                                                    fake_provider):
    desk_api = client_for(desk_phone[1])
    pull = desk_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]
    leg, placed = placed_leg(fake_provider)
    assert placed["to"] == DESK_PHONE and leg.device_id == desk_phone[0].pk
    xml(answered(client, leg))
    root = xml(pressed(client, leg, ""))  # the <Gather> timed out
    assert [element.tag for element in root] == ["Hangup"]
    leg_status(client, live_call, leg.pk, "completed", sid=leg.provider_call_sid)  # the placed call ends
    leg.refresh_from_db()
    assert (leg.state, leg.end_reason) == ("failed", "no-answer")
    done = desk_api.get(f"/api/v1/pulls/{pull['id']}").json()["pull"]
    assert (done["state"], done["reason"]) == ("failed", "no-answer")
    call = Call.objects.get()
    assert (call.state, call.held_by_id) == ("connected", tablet[0].pk)
    assert CallLeg.objects.get(device=tablet[0]).state == "joined"
    assert caller_untouched(fake_provider) and "remove" not in fake_provider.kinds()
    assert names(live_call).count("leg_failed") == 1 and "leg_left" not in names(live_call)


def test_a_wrong_key_refuses_the_transfer_once_however_often_it_is_retried(client, live_call, allowlisted, tablet,
                                                                          tablet_api, fake_provider):
    tablet_api.post(f"/api/v1/calls/{live_call}/transfer", {"number": OFFICE, "pin": "2468"}, format="json")
    leg, _ = placed_leg(fake_provider)
    xml(answered(client, leg))
    first, retried = pressed(client, leg, "2"), pressed(client, leg, "2")
    assert first.content == retried.content and [e.tag for e in xml(first)] == ["Hangup"]
    leg.refresh_from_db()
    assert (leg.state, leg.end_reason) == ("failed", "not_accepted")
    call = Call.objects.get()
    assert (call.state, call.held_by_id, call.transferred_to) == ("connected", tablet[0].pk, "")
    assert names(live_call).count("leg_failed") == 1
    assert caller_untouched(fake_provider) and "remove" not in fake_provider.kinds()


def test_retried_screen_and_key_requests_get_the_same_answer_and_change_nothing(client, live_call, desk_phone,
                                                                                fake_provider):
    client_for(desk_phone[1]).post(f"/api/v1/calls/{live_call}/pull")
    leg, _ = placed_leg(fake_provider)
    before = names(live_call)
    assert answered(client, leg).content == answered(client, leg).content
    first, retried = pressed(client, leg, "1"), pressed(client, leg, "1")
    assert first.content == retried.content and xml(first).find("Dial/Conference") is not None
    assert names(live_call) == before and CallLeg.objects.get(pk=leg.pk).state == "dialing"
    joined(client, leg)
    assert Call.objects.get().held_by_id == desk_phone[0].pk
    assert Pull.objects.get().state == "completed"


def test_a_request_naming_another_call_is_hung_up_and_changes_nothing(client, live_call, desk_phone, fake_provider):
    client_for(desk_phone[1]).post(f"/api/v1/calls/{live_call}/pull")
    leg, _ = placed_leg(fake_provider)
    stranger = "CA" + "7" * 32
    for response in (answered(client, leg, sid=stranger), pressed(client, leg, "1", sid=stranger),
                     pressed(client, leg, "2", sid=stranger)):
        assert [element.tag for element in xml(response)] == ["Hangup"]
    leg.refresh_from_db()
    assert (leg.state, leg.provider_call_sid) == ("dialing", fake_provider.sids[str(leg.pk)])
    assert Pull.objects.get().state == "approved"
    other = make_device(desk_phone[0].user, kind="tablet", name="Other")[0]
    elsewhere = CallLeg.objects.create(call_id=live_call, device=other, created_at=timezone.now())
    assert [e.tag for e in xml(pressed(client, elsewhere, "1", sid=leg.provider_call_sid))] == ["Hangup"]


def test_the_screen_may_come_before_the_placed_calls_sid_was_stored(client, live_call, desk_phone, fake_provider):
    client_for(desk_phone[1]).post(f"/api/v1/calls/{live_call}/pull")
    leg, _ = placed_leg(fake_provider)
    CallLeg.objects.filter(pk=leg.pk).update(provider_call_sid=None)  # the create request's answer is not in yet
    sid = "CA" + "8" * 32
    assert xml(answered(client, leg, sid=sid)).find("Gather") is not None
    assert CallLeg.objects.get(pk=leg.pk).provider_call_sid == sid
    assert [e.tag for e in xml(answered(client, leg, sid="CA" + "9" * 32))] == ["Hangup"]


def test_a_key_pressed_after_the_pull_timed_out_joins_nothing(client, live_call, tablet, desk_phone, fake_provider):
    client_for(desk_phone[1]).post(f"/api/v1/calls/{live_call}/pull")
    leg, _ = placed_leg(fake_provider)
    xml(answered(client, leg))
    # Screening gets its own time on top of the ring (legs.SCREENING_SECONDS): not over yet …
    calls_sweep(now=timezone.now() + timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + 11))
    assert Pull.objects.get().state == "approved"
    # … and then it is.
    calls_sweep(now=timezone.now() + timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + SCREENING_SECONDS + 11))
    assert (Pull.objects.get().state, Pull.objects.get().reason) == ("failed", "timeout")
    root = xml(pressed(client, leg, "1"))
    assert root.find("Dial") is None and root.find("Say").text == SCREEN_TOO_LATE
    assert Call.objects.get().held_by_id == tablet[0].pk


def test_a_forwarded_call_whose_number_target_answers_with_voicemail_is_missed(client, handset_api, line,
                                                                              desk_phone, fake_provider):
    call_id = report(handset_api, line).json()["call"]["id"]
    assert client_for(desk_phone[1]).post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    forward(client, sid=LIVE_SID)
    leg, placed = placed_leg(fake_provider)
    assert placed["to"] == DESK_PHONE and Call.objects.get().state == "forwarded"
    xml(answered(client, leg))
    xml(pressed(client, leg, ""))
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("missed", "device_no_answer")
    assert ("hangup", LIVE_SID) in fake_provider.actions  # the caller is let go (no fallback number)


def test_a_silent_screened_leg_is_given_up_only_after_its_screening_time(live_call, tablet, desk_phone,
                                                                          fake_provider):
    """A leg the provider never reports on fails (no_callback), but a screened one only after its
    ring, its whisper and its wait for the key (legs.SCREENING_SECONDS more than other legs)."""
    client_for(desk_phone[1]).post(f"/api/v1/calls/{live_call}/pull")
    leg, _ = placed_leg(fake_provider)
    created = CallLeg.objects.get(pk=leg.pk).created_at
    legs_dialing_expired(now=created + timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + 16))
    assert CallLeg.objects.get(pk=leg.pk).state == "dialing"
    legs_dialing_expired(now=created + timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + SCREENING_SECONDS + 16))
    assert (CallLeg.objects.get(pk=leg.pk).state, CallLeg.objects.get(pk=leg.pk).end_reason) == \
        ("failed", "no_callback")


def test_a_status_callback_from_another_call_under_the_legs_url_changes_nothing(client, live_call, desk_phone,
                                                                                fake_provider):
    """Should a retried create have placed a second call for the leg, that call's callbacks (under
    the same leg URL, with its own CallSid) must not fail the leg the first call carries."""
    client_for(desk_phone[1]).post(f"/api/v1/calls/{live_call}/pull")
    leg, _ = placed_leg(fake_provider)
    leg_status(client, live_call, leg.pk, "no-answer", sid="CA" + "9" * 32)
    assert CallLeg.objects.get(pk=leg.pk).state == "dialing"
    leg_status(client, live_call, leg.pk, "no-answer", sid=leg.provider_call_sid)
    assert CallLeg.objects.get(pk=leg.pk).state == "failed"
