"""The provider's webhooks: signatures, matching, TwiML, dial and call status.
Live-call updates go through callpull.telephony.provider, patched here (the
end-to-end tests drive the real one against the simulator)."""

import uuid
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from django.utils import timezone

from callpull.models import Call
from callpull.telephony import provider
from tests.callpull.conftest import report, signed_post

pytestmark = pytest.mark.django_db
SID = "CA" + "1" * 32


def voice(client, *, sid=SID, to="+15555550100", caller="+15550009999", forwarded_from="+15551234567"):
    params = {"CallSid": sid, "To": to, "From": caller, "CallStatus": "ringing", "Direction": "inbound",
              "AccountSid": "AC" + "5" * 32}
    if forwarded_from:
        params["ForwardedFrom"] = forwarded_from
    return signed_post(client, "/telephony/twilio/voice", params)


def xml(response):
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/xml")
    return ElementTree.fromstring(response.content)


@pytest.fixture
def answered_call(handset_api, line, tablet, tablet_api, online):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    assert tablet_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    return call_id


@pytest.fixture
def redirects(monkeypatch):
    sent = []
    monkeypatch.setattr(provider, "call_redirect", lambda sid, url: sent.append(("redirect", sid, url)))
    monkeypatch.setattr(provider, "call_hangup", lambda sid: sent.append(("hangup", sid)))
    return sent


def test_a_bad_signature_is_403(client, answered_call):
    response = client.post("/telephony/twilio/voice", {"CallSid": SID, "To": "+15555550100"},
                           HTTP_X_TWILIO_SIGNATURE="forged")
    assert response.status_code == 403
    assert Call.objects.get().provider_call_sid is None


def test_a_signature_with_another_token_is_403(client, answered_call):
    response = signed_post(client, "/telephony/twilio/voice", {"CallSid": SID, "To": "+15555550100"},
                           token="not-our-token")
    assert response.status_code == 403


def test_webhooks_take_only_post(client):
    assert client.get("/telephony/twilio/voice").status_code == 405


def test_the_forwarded_call_is_dialled_to_the_device_that_answered(client, answered_call):
    root = xml(voice(client))
    dial = root.find("Dial")
    assert dial.find("Client").text == "tablet-1"
    assert dial.get("action") == f"http://127.0.0.1:8000/telephony/twilio/dial-status?call={answered_call}"
    assert dial.find("Client").get("statusCallback").endswith(f"status?call={answered_call}&leg=device")
    call = Call.objects.get()
    assert (call.state, call.provider_call_sid) == ("forwarded", SID)


def test_a_retried_webhook_gets_the_same_twiml_and_one_leg(client, answered_call):
    first = voice(client).content
    second = voice(client).content
    assert first == second
    timeline = Call.objects.get().timeline.filter(event="forwarded_call_arrived")
    assert timeline.count() == 1


def test_matching_without_forwarded_from_uses_server_number_and_caller(client, answered_call):
    root = xml(voice(client, forwarded_from=None))
    assert root.find("Dial") is not None


def test_another_caller_does_not_match(client, answered_call):
    root = xml(voice(client, caller="+15550001111"))
    assert root.find("Dial") is None and root.find("Hangup") is not None


def test_the_most_recent_pending_call_wins_a_tie(client, handset_api, line, tablet, tablet_api, online):
    online(tablet[0])
    older = report(handset_api, line).json()["call"]["id"]
    newer = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{newer}/answer")
    voice(client)
    assert Call.objects.get(provider_call_sid=SID).pk == uuid.UUID(newer)
    assert Call.objects.get(pk=older).provider_call_sid is None


def test_an_old_report_is_outside_the_window(client, answered_call):
    Call.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    root = xml(voice(client))
    assert root.find("Dial") is None


def test_unmatched_goes_to_the_lines_fallback(client, line):
    line.fallback_number = "+15550007777"
    line.save()
    root = xml(voice(client))
    assert root.find("Dial").text == "+15550007777"


def test_unmatched_without_fallback_is_a_polite_hang_up(client, line):
    root = xml(voice(client, forwarded_from="+15550000000"))
    assert root.find("Say").text.startswith("Sorry")
    assert root.find("Hangup") is not None


def test_device_answered_connects_then_dial_completed_completes(client, answered_call, online, handset):
    socket = online(handset[0])
    voice(client)
    response = signed_post(client, f"/telephony/twilio/status?call={answered_call}&leg=device",
                           {"CallSid": "CA" + "2" * 32, "ParentCallSid": SID, "CallStatus": "in-progress"})
    assert response.status_code == 204
    assert Call.objects.get().state == "connected"
    assert "call.connected" in socket.types()
    root = xml(signed_post(client, f"/telephony/twilio/dial-status?call={answered_call}",
                           {"CallSid": SID, "DialCallSid": "CA" + "2" * 32, "DialCallStatus": "completed",
                            "DialCallDuration": "42"}))
    assert root.find("Hangup") is not None
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert call.ended_at is not None
    assert "call.ended" in socket.types()


def test_device_not_answering_is_missed_and_goes_to_fallback(client, answered_call, line):
    line.fallback_number = "+15550007777"
    line.save()
    voice(client)
    root = xml(signed_post(client, f"/telephony/twilio/dial-status?call={answered_call}",
                           {"CallSid": SID, "DialCallStatus": "no-answer"}))
    assert root.find("Dial").text == "+15550007777"
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("missed", "device_no_answer")


def test_dial_failure_fails_the_call(client, answered_call):
    voice(client)
    signed_post(client, f"/telephony/twilio/dial-status?call={answered_call}",
                {"CallSid": SID, "DialCallStatus": "failed"})
    assert Call.objects.get().state == "failed"


def test_callbacks_for_another_calls_sid_are_ignored(client, answered_call):
    voice(client)
    signed_post(client, f"/telephony/twilio/dial-status?call={answered_call}",
                {"CallSid": "CA" + "9" * 32, "DialCallStatus": "completed"})
    assert Call.objects.get().state == "forwarded"


def test_immediate_holds_the_caller_then_redirects_when_a_device_answers(client, handset_api, line, tablet,
                                                                        tablet_api, online, redirects):
    line.policy = "immediate"
    line.save()
    online(tablet[0])
    body = report(handset_api, line).json()
    assert body["instruction"]["action"] == "reject"
    root = xml(voice(client))
    assert root.find("Play").get("loop") == "0"
    assert root.find("Play").text.endswith("/static/callpull/ringback.wav")
    call_id = body["call"]["id"]
    response = tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    assert response.json()["state"] == "forwarded"
    assert redirects == [("redirect", SID, f"http://127.0.0.1:8000/telephony/twilio/connect?call={call_id}")]
    root = xml(signed_post(client, f"/telephony/twilio/connect?call={call_id}", {"CallSid": SID}))
    assert root.find("Dial/Client").text == "tablet-1"


def test_caller_hanging_up_while_held_is_missed(client, handset_api, line, tablet, online):
    line.policy = "immediate"
    line.save()
    socket = online(tablet[0])
    report(handset_api, line)
    voice(client)
    socket.frames()
    signed_post(client, "/telephony/twilio/status", {"CallSid": SID, "CallStatus": "completed"})
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("missed", "caller_hung_up")
    assert socket.types() == ["call.ended"]


def test_a_redirect_the_provider_refuses_fails_the_call(client, handset_api, line, tablet, tablet_api, online,
                                                         monkeypatch):
    def refuse(sid, url):
        raise provider.ProviderError("503")
    monkeypatch.setattr(provider, "call_redirect", refuse)
    line.policy = "immediate"
    line.save()
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    voice(client)
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("failed", "provider_error")


def test_a_fault_inside_a_webhook_is_a_goodbye_not_an_error_page(client, monkeypatch, line):
    from callpull.telephony import services

    def explode(**kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(services, "forwarded_call_arrive", explode)
    root = xml(voice(client))
    assert root.find("Hangup") is not None
