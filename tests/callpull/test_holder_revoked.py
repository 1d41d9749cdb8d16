"""Revoking a device takes it off every call at once (callpull.revocation): its legs
leave the conference; a call it held waits on hold for another device of the user,
then ends politely. The provider's REST side is faked (conftest); its callbacks are
posted, signed, as the provider would."""

from datetime import timedelta
from xml.etree import ElementTree

import pytest
from django.conf import settings
from django.utils import timezone

from callpull.models import AccountSettings, Call, CallLeg, Pull
from callpull.sweeper import calls_sweep
from tests.callpull.conftest import LIVE_SID, conference_sid, forward, join_leg, report, signed_post
from tests.conftest import make_device

pytestmark = pytest.mark.django_db
SID = LIVE_SID  # the caller of `live_call`



@pytest.fixture
def revoke(desktop_api, django_capture_on_commit_callbacks):
    """The user deletes a device from the desktop (DELETE /devices/{id}); the
    `device_revoked` signal goes out on commit, as in production."""
    def revoke(device):
        with django_capture_on_commit_callbacks(execute=True):
            response = desktop_api.delete(f"/api/v1/devices/{device.pk}")
        assert response.status_code == 204, response.content
    return revoke


def account(user, **fields):
    AccountSettings.objects.update_or_create(user=user, defaults=fields)


def events(call_id):
    return list(Call.objects.get(pk=call_id).timeline.values_list("event", flat=True))


def entry(call_id, event):
    return Call.objects.get(pk=call_id).timeline.get(event=event)


def conf(call_id):
    return f"callpull-{call_id}"


def test_revoking_the_holder_removes_its_leg_and_puts_the_caller_on_hold(live_call, tablet, desktop, online,
                                                                        revoke, fake_provider):
    desk_socket = online(desktop[0])
    tablet_leg = CallLeg.objects.get(device=tablet[0])
    revoke(tablet[0])
    assert ("remove", conference_sid(live_call), tablet_leg.provider_call_sid) in fake_provider.actions
    assert ("hold", conference_sid(live_call), SID) in fake_provider.actions
    assert not {"redirect", "hangup"} & set(fake_provider.kinds())  # the caller stays in the call
    tablet_leg.refresh_from_db()
    assert (tablet_leg.state, tablet_leg.end_reason) == ("left", "device_revoked")
    call = Call.objects.get()
    assert (call.state, call.held_by_id) == ("connected", None)
    revoked_at = entry(live_call, "holder_revoked").at
    assert call.expires_at - revoked_at == timedelta(seconds=settings.HOLDER_LOST_HOLD_SECONDS)
    assert {"holder_revoked", "leg_removed"} <= set(events(live_call))
    lost = [frame for frame in desk_socket.frames() if frame["type"] == "call.holder_lost"]
    assert len(lost) == 1 and lost[0]["call"]["held_by"] is None
    assert lost[0]["device"]["id"] == str(tablet[0].pk)


def test_another_device_takes_the_call_on_hold_without_approval(client, live_call, user, tablet, desktop,
                                                                desktop_api, revoke, fake_provider):
    account(user, pull_requires_approval=True)  # nobody is left to approve
    revoke(tablet[0])
    fake_provider.actions.clear()
    response = desktop_api.post(f"/api/v1/calls/{live_call}/pull")
    assert response.status_code == 202, response.content
    pull = response.json()["pull"]
    assert (pull["state"], pull["from_device"]) == ("approved", None)
    assert fake_provider.actions[0][:3] == ("add", conf(live_call), "sip:sip:desk@pbx.example")
    join_leg(client, live_call, fake_provider)
    assert ("unhold", conference_sid(live_call), SID) in fake_provider.actions
    call = Call.objects.get()
    assert (call.state, call.held_by_id, call.expires_at) == ("connected", desktop[0].pk, None)
    assert Pull.objects.get().state == "completed"
    names = events(live_call)
    assert names.index("holder_revoked") < names.index("pull_completed") < names.index("caller_unheld")
    calls_sweep(now=timezone.now() + timedelta(seconds=settings.HOLDER_LOST_HOLD_SECONDS + 1))
    assert Call.objects.get().state == "connected"  # taken: no deadline any more


def test_a_pull_awaiting_the_revoked_holders_approval_is_approved_at_once(client, live_call, user, tablet, desktop,
                                                                         desktop_api, revoke, fake_provider):
    account(user, pull_requires_approval=True)
    pull = desktop_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]
    assert pull["state"] == "awaiting_approval"
    revoke(tablet[0])
    assert desktop_api.get(f"/api/v1/pulls/{pull['id']}").json()["pull"]["state"] == "approved"
    approved = entry(live_call, "pull_approved")
    assert approved.detail["reason"] == "holder_revoked" and approved.device_id is None
    assert [a[:3] for a in fake_provider.actions if a[0] == "add"] == [
        ("add", conf(live_call), "sip:sip:desk@pbx.example")]
    join_leg(client, live_call, fake_provider)
    assert ("unhold", conference_sid(live_call), SID) in fake_provider.actions
    assert Call.objects.get().held_by_id == desktop[0].pk


@pytest.mark.parametrize("fallback", ["", "+15550007777"])
def test_nobody_takes_the_call_on_hold_in_time_it_ends_politely(client, live_call, line, tablet, desktop, online,
                                                                revoke, fake_provider, fallback, settings):
    settings.HOLDER_LOST_HOLD_SECONDS = 5  # the desktop's socket still counts as online when the sweep runs
    line.fallback_number = fallback
    line.save()
    desk_socket = online(desktop[0])
    revoke(tablet[0])
    deadline = Call.objects.get().expires_at
    fake_provider.actions.clear()
    calls_sweep(now=deadline - timedelta(seconds=1))
    assert Call.objects.get().state == "connected" and fake_provider.actions == []
    calls_sweep(now=deadline)
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("completed", "holder_revoked")
    redirect, = [action for action in fake_provider.actions if action[0] == "redirect"]
    assert redirect[1] == SID and "/telephony/twilio/fallback?" in redirect[2]
    assert "hangup" not in fake_provider.kinds()  # the caller hears a goodbye first, or the fallback
    ended = [frame for frame in desk_socket.frames() if frame["type"] == "call.ended"]
    assert ended and ended[-1]["reason"] == "holder_revoked"
    released = entry(live_call, "sent_to_fallback" if fallback else "caller_released")
    assert released.detail == ({"number": fallback} if fallback else {"goodbye": True})
    # What the caller then hears: the fallback webhook's answer.
    answer = signed_post(client, redirect[2].replace(settings.PUBLIC_BASE_URL, ""), {"CallSid": SID})
    root = ElementTree.fromstring(answer.content)
    if fallback:
        assert root.find("Dial").text == fallback
    else:
        assert "Goodbye" in root.find("Say").text and root.find("Hangup") is not None


def test_a_revoked_monitor_leg_is_removed_and_the_holder_keeps_the_call(client, live_call, user, tablet, desktop,
                                                                        desktop_api, revoke, fake_provider):
    account(user, monitor_after_switch=True)
    desktop_api.post(f"/api/v1/calls/{live_call}/pull")
    join_leg(client, live_call, fake_provider)
    monitor = CallLeg.objects.get(device=tablet[0])
    assert (monitor.role, monitor.state) == ("monitor", "joined")
    fake_provider.actions.clear()
    revoke(tablet[0])
    assert fake_provider.actions == [("remove", conference_sid(live_call), monitor.provider_call_sid)]
    monitor.refresh_from_db()
    assert (monitor.state, monitor.end_reason) == ("left", "device_revoked")
    call = Call.objects.get()
    assert (call.state, call.held_by_id, call.expires_at) == ("connected", desktop[0].pk, None)


def test_a_revoked_device_being_dialled_for_a_pull_is_removed_and_its_pull_fails(
        client, live_call, tablet, tablet_api, desktop, desktop_api, fake_provider,
        django_capture_on_commit_callbacks):
    pull = desktop_api.post(f"/api/v1/calls/{live_call}/pull").json()["pull"]
    dialling = CallLeg.objects.get(device=desktop[0])
    assert dialling.state == "dialing"
    fake_provider.actions.clear()
    with django_capture_on_commit_callbacks(execute=True):  # the holder deletes the desktop
        assert tablet_api.delete(f"/api/v1/devices/{desktop[0].pk}").status_code == 204
    # Still ringing, it is in no conference yet: its call is hung up, so it stops ringing.
    assert fake_provider.actions == [("hangup", dialling.provider_call_sid)]
    body = tablet_api.get(f"/api/v1/pulls/{pull['id']}").json()["pull"]
    assert (body["state"], body["reason"]) == ("failed", "device_revoked")
    # It answers all the same: it is taken out again and takes nothing.
    fake_provider.actions.clear()
    join_leg(client, live_call, fake_provider)
    assert fake_provider.actions == [("remove", conference_sid(live_call), dialling.provider_call_sid)]
    call = Call.objects.get()
    assert (call.state, call.held_by_id) == ("connected", tablet[0].pk)


def test_a_forwarded_call_whose_dialled_device_is_revoked_goes_to_the_fallback(
        client, handset_api, line, tablet, tablet_api, online, revoke, fake_provider):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    forward(client, sid=SID)
    dialling = CallLeg.objects.get(device=tablet[0])
    fake_provider.actions.clear()
    revoke(tablet[0])
    assert ("hangup", dialling.provider_call_sid) in fake_provider.actions  # still ringing: its call ends
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("failed", "device_revoked")
    assert ("hangup", SID) in fake_provider.actions  # no fallback on this line: a polite hang-up


def test_a_device_revoked_after_answering_is_never_dialled(client, handset_api, line, tablet, tablet_api, online,
                                                          revoke, fake_provider):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    revoke(tablet[0])
    fake_provider.actions.clear()
    forward(client, sid=SID)  # the carrier forwards the call the tablet had answered
    assert "add" not in fake_provider.kinds()
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("failed", "device_revoked")
    assert CallLeg.objects.get().end_reason == "device_revoked"


def test_revoking_a_device_on_no_call_changes_nothing_for_calls_only_the_holder_does(live_call, user, tablet,
                                                                                     revoke, fake_provider):
    idle, _ = make_device(user, kind="web", platform="web", connect_type="client", connect_address="idle-1")
    before = Call.objects.values().get()
    timeline = events(live_call)
    revoke(idle)
    assert Call.objects.values().get() == before
    assert events(live_call) == timeline
    assert fake_provider.actions == []
    revoke(tablet[0])  # the device on the call: now the call changes
    assert Call.objects.get().held_by_id is None
    assert events(live_call)[len(timeline)] == "holder_revoked"
