"""Deadlines: calls whose time ran out end, and their devices are told."""

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from callpull.models import Call
from callpull.sweeper import calls_sweep
from callpull.telephony import provider
from tests.callpull.conftest import report, signed_post

pytestmark = pytest.mark.django_db


def sweep_after(seconds):
    return calls_sweep(now=timezone.now() + timedelta(seconds=seconds))


def test_nothing_ends_before_its_deadline(handset_api, line):
    report(handset_api, line)
    assert sweep_after(settings.CALL_RING_SECONDS - 1) == 0
    assert Call.objects.get().state == "ringing"


def test_an_unanswered_call_is_missed_after_the_ring_window(handset_api, line, tablet, online):
    socket = online(tablet[0])
    report(handset_api, line)
    socket.frames()
    assert sweep_after(settings.CALL_RING_SECONDS + 1) == 1
    call = Call.objects.get()
    assert (call.state, call.end_reason, call.expires_at) == ("missed", "no_answer", None)
    ended = socket.frames()
    assert [f["type"] for f in ended] == ["call.ended"] and ended[0]["reason"] == "no_answer"


def test_a_forwarded_call_that_never_arrives_fails_and_the_devices_are_told(handset, handset_api, line, tablet,
                                                                            tablet_api, online):
    socket, handset_socket = online(tablet[0]), online(handset[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    socket.frames()
    handset_socket.frames()
    assert sweep_after(settings.CALL_FORWARD_WAIT_SECONDS - 1) == 0
    assert sweep_after(settings.CALL_FORWARD_WAIT_SECONDS + 1) == 1
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("failed", "forwarded_call_never_arrived")
    assert socket.types() == ["call.ended"]
    assert handset_socket.types() == ["call.ended"]


def test_immediate_reject_without_forwarded_call_fails_after_the_handset_rejected(handset_api, line, tablet, online):
    line.policy = "immediate"
    line.save()
    socket = online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    socket.ack()  # reached: the handset is told to reject
    assert Call.objects.get().reject_sent_at is not None
    handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "rejected"}, format="json")
    sweep_after(settings.CALL_FORWARD_WAIT_SECONDS + 1)
    assert Call.objects.get().end_reason == "forwarded_call_never_arrived"


def test_a_held_caller_nobody_takes_is_released(client, handset_api, line, tablet, online, monkeypatch):
    released = []
    monkeypatch.setattr(provider, "call_hangup", lambda sid: released.append(sid))
    line.policy = "immediate"
    line.save()
    online(tablet[0])
    report(handset_api, line)
    signed_post(client, "/telephony/twilio/voice", {"CallSid": "CA" + "3" * 32, "To": "+15555550100",
                                                    "From": "+15550009999", "ForwardedFrom": "+15551234567"})
    assert Call.objects.get().state == "forwarded"
    sweep_after(settings.CALL_RING_SECONDS + 1)
    assert Call.objects.get().state == "missed"
    assert released == ["CA" + "3" * 32]


def test_terminal_calls_are_never_swept(handset_api, line):
    call_id = report(handset_api, line).json()["call"]["id"]
    handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "caller_hung_up"}, format="json")
    with time_machine.travel(timezone.now() + timedelta(hours=1)):
        assert calls_sweep(now=timezone.now()) == 0
    assert Call.objects.get().state == "missed"
