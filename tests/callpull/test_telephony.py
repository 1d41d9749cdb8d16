"""The provider's webhooks: signatures, matching, the conference anchor, leg and
call status. The provider's REST side is the fake in conftest (the end-to-end
tests drive the real one against the simulator)."""

import threading
import uuid
from datetime import timedelta
from unittest import mock
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.core import signals
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError
from twilio.request_validator import RequestValidator

from callpull.models import Call, CallLeg
from tests.callpull.conftest import conference, forward, join_leg, leg_status, report, signed_post

pytestmark = pytest.mark.django_db
SID = "CA" + "1" * 32


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


def test_the_forwarded_caller_waits_in_the_calls_conference_and_the_device_is_dialled_in(
        client, answered_call, fake_provider):
    root = xml(forward(client, sid=SID))
    room = root.find("Dial/Conference")
    assert room.text == f"callpull-{answered_call}"
    assert (room.get("startConferenceOnEnter"), room.get("endConferenceOnExit")) == ("false", "true")
    assert room.get("waitUrl").endswith("/static/callpull/ringback.wav")
    assert root.find("Dial").get("action").endswith(f"dial-status?call={answered_call}")
    leg = CallLeg.objects.get()
    assert fake_provider.actions == [("add", f"callpull-{answered_call}", "client:tablet-1", str(leg.pk))]
    call = Call.objects.get()
    assert (call.state, call.provider_call_sid) == ("forwarded", SID)


def test_a_retried_webhook_gets_the_same_twiml_and_one_leg(client, answered_call, fake_provider):
    first = forward(client, sid=SID).content
    second = forward(client, sid=SID).content
    assert first == second
    assert CallLeg.objects.count() == 1
    assert Call.objects.get().timeline.filter(event="forwarded_call_arrived").count() == 1


def test_a_retry_while_the_same_caller_rings_again_gets_the_first_answer(client, handset_api, line, tablet,
                                                                          online):
    online(tablet[0])
    first = report(handset_api, line).json()["call"]["id"]
    answer = forward(client, sid=SID).content
    second = report(handset_api, line).json()["call"]["id"]  # the caller rings again, still pending
    assert forward(client, sid=SID).content == answer
    assert Call.objects.get(provider_call_sid=SID).pk == uuid.UUID(first)
    assert Call.objects.get(pk=second).provider_call_sid is None
    assert Call.objects.get(pk=second).state == "ringing"


def test_matching_without_forwarded_from_uses_server_number_and_caller(client, answered_call):
    assert xml(forward(client, sid=SID, forwarded_from=None)).find("Dial/Conference") is not None


def test_another_caller_does_not_match(client, answered_call):
    root = xml(forward(client, sid=SID, caller="+15550001111"))
    assert root.find("Dial") is None and root.find("Hangup") is not None


def test_the_most_recent_pending_call_wins_a_tie(client, handset_api, line, tablet, tablet_api, online):
    online(tablet[0])
    older = report(handset_api, line).json()["call"]["id"]
    newer = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{newer}/answer")
    forward(client, sid=SID)
    assert Call.objects.get(provider_call_sid=SID).pk == uuid.UUID(newer)
    assert Call.objects.get(pk=older).provider_call_sid is None


def test_an_old_report_is_outside_the_window(client, answered_call):
    Call.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    assert xml(forward(client, sid=SID)).find("Dial/Conference") is None


def test_unmatched_goes_to_the_lines_fallback(client, line):
    line.fallback_number = "+15550007777"
    line.save()
    assert xml(forward(client, sid=SID)).find("Dial").text == "+15550007777"


def test_unmatched_without_fallback_is_a_polite_hang_up(client, line):
    root = xml(forward(client, sid=SID, forwarded_from="+15550000000"))
    assert root.find("Say").text.startswith("Sorry")
    assert root.find("Hangup") is not None


def test_the_device_joining_connects_and_its_hang_up_completes_the_call(client, answered_call, online, handset,
                                                                       fake_provider):
    socket = online(handset[0])
    forward(client, sid=SID)
    assert join_leg(client, answered_call, fake_provider).status_code == 204
    call = Call.objects.get()
    assert (call.state, str(call.held_by_id)) == ("connected", str(call.answered_by_id))
    assert "call.connected" in socket.types()
    leg = CallLeg.objects.get()
    conference(client, answered_call, "participant-leave", label=str(leg.pk), sid=fake_provider.sids[str(leg.pk)])
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert ("hangup", SID) in fake_provider.actions  # the caller is not left alone in the room
    assert "call.ended" in socket.types()


def test_the_caller_hanging_up_completes_a_connected_call(client, answered_call, fake_provider):
    forward(client, sid=SID)
    join_leg(client, answered_call, fake_provider)
    signed_post(client, "/telephony/twilio/status", {"CallSid": SID, "CallStatus": "completed"})
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert CallLeg.objects.get().state == "left"
    xml(signed_post(client, f"/telephony/twilio/dial-status?call={answered_call}",
                    {"CallSid": SID, "DialCallStatus": "completed"}))
    assert Call.objects.get().state == "completed"


def test_a_device_not_answering_is_missed_and_the_caller_goes_to_the_fallback(client, answered_call, line,
                                                                             fake_provider):
    line.fallback_number = "+15550007777"
    line.save()
    forward(client, sid=SID)
    leg = CallLeg.objects.get()
    leg_status(client, answered_call, leg.pk, "no-answer")
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("missed", "device_no_answer")
    assert fake_provider.actions[-1] == ("redirect", SID,
                                         f"http://127.0.0.1:8000/telephony/twilio/fallback?call={answered_call}")
    root = xml(signed_post(client, f"/telephony/twilio/fallback?call={answered_call}", {"CallSid": SID}))
    assert root.find("Dial").text == "+15550007777"


def test_a_provider_that_refuses_to_dial_fails_the_call(client, answered_call, fake_provider):
    fake_provider.refuse = True
    forward(client, sid=SID)
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("failed", "provider_error")


def test_callbacks_for_another_calls_legs_are_ignored(client, answered_call, fake_provider):
    forward(client, sid=SID)
    other = str(uuid.uuid4())
    leg_status(client, other, CallLeg.objects.get().pk, "no-answer")
    conference(client, answered_call, "participant-join", label=str(uuid.uuid4()), sid="CA" + "9" * 32)
    assert Call.objects.get().state == "forwarded"


def test_immediate_holds_the_caller_then_dials_the_device_that_answers(client, handset_api, line, tablet,
                                                                      tablet_api, online, fake_provider):
    line.policy = "immediate"
    line.save()
    socket = online(tablet[0])
    body = report(handset_api, line).json()
    socket.ack()
    assert Call.objects.get().reject_sent_at is not None
    root = xml(forward(client, sid=SID))
    assert root.find("Dial/Conference").get("waitUrl").endswith("ringback.wav")
    assert fake_provider.actions == []  # nobody answered yet: the caller hears ringback
    call_id = body["call"]["id"]
    response = tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    assert response.json()["state"] == "forwarded"
    assert fake_provider.kinds() == ["add"]
    join_leg(client, call_id, fake_provider)
    assert Call.objects.get().state == "connected"


def test_caller_hanging_up_while_held_is_missed(client, handset_api, line, tablet, online):
    line.policy = "immediate"
    line.save()
    socket = online(tablet[0])
    report(handset_api, line)
    forward(client, sid=SID)
    socket.frames()
    signed_post(client, "/telephony/twilio/status", {"CallSid": SID, "CallStatus": "completed"})
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("missed", "caller_hung_up")
    assert socket.types() == ["call.ended"]


def test_a_fault_inside_a_webhook_is_a_goodbye_not_an_error_page(client, monkeypatch, line):
    from callpull.telephony import services

    def explode(**kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(services, "call_arrived", explode)
    assert xml(forward(client, sid=SID)).find("Hangup") is not None


# Faults: what the provider is told ------------------------------------------------

def _down(exc):
    def fail(**kwargs):
        raise exc
    return fail


UNREACHABLE = [OperationalError("server closed the connection unexpectedly"), RedisConnectionError("refused")]


@pytest.mark.parametrize("failure", UNREACHABLE, ids=["database", "redis"])
@pytest.mark.parametrize(("path", "handler"), [
    ("/telephony/twilio/status?call={call}", "status_changed"),
    ("/telephony/twilio/status?call={call}&leg=x", "status_changed"),
    ("/telephony/twilio/conference?call={call}", "conference_event"),
    ("/telephony/twilio/dial-status?call={call}", "dial_finished"),
])
def test_a_callback_the_database_cannot_take_is_503_with_retry_after(client, answered_call, monkeypatch, path,
                                                                     handler, failure):
    from callpull.telephony import services

    monkeypatch.setattr(services, handler, _down(failure))
    response = signed_post(client, path.format(call=answered_call), {"CallSid": SID, "CallStatus": "completed"})
    assert response.status_code == 503
    assert response["Retry-After"] == "1"


@pytest.mark.parametrize(("path", "handler"), [
    ("/telephony/twilio/voice", "call_arrived"),
    ("/telephony/twilio/dial-in-pin?attempt=1", "dial_in_pin"),
    ("/telephony/twilio/dial-in-choice?device=x", "dial_in_choice"),
    ("/telephony/twilio/join?pull=x", "join_after_approval"),
    ("/telephony/twilio/fallback?call=x", "fallback_twiml"),
])
def test_a_webhook_the_caller_waits_on_says_goodbye_when_the_database_is_out_of_reach(client, monkeypatch, path,
                                                                                     handler):
    from callpull.telephony import services

    monkeypatch.setattr(services, handler, _down(OperationalError("could not connect to server")))
    root = xml(signed_post(client, path, {"CallSid": SID, "To": "+15555550100", "From": "+15550009999"}))
    assert root.find("Say").text.startswith("Sorry") and root.find("Hangup") is not None


def test_a_bug_inside_a_callback_is_a_500_not_a_goodbye(client, answered_call, monkeypatch):
    from callpull.telephony import services

    monkeypatch.setattr(services, "status_changed", _down(RuntimeError("boom")))
    response = signed_post(client, f"/telephony/twilio/status?call={answered_call}",
                           {"CallSid": SID, "CallStatus": "completed"})
    assert response.status_code == 500
    assert b"Response" not in response.content


def test_a_hang_up_answered_503_ends_the_call_when_the_provider_retries(client, answered_call, fake_provider,
                                                                       monkeypatch):
    from callpull.telephony import services

    forward(client, sid=SID)
    join_leg(client, answered_call, fake_provider)
    real = services.status_changed
    monkeypatch.setattr(services, "status_changed", _down(OperationalError("the database went away")))
    hang_up = {"CallSid": SID, "CallStatus": "completed"}
    assert signed_post(client, "/telephony/twilio/status", hang_up).status_code == 503
    assert Call.objects.get().state == "connected"  # nothing was taken: the provider must try again
    monkeypatch.setattr(services, "status_changed", real)
    assert signed_post(client, "/telephony/twilio/status", hang_up).status_code == 204
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert call.timeline.get(event="caller_hung_up").detail == {"call_status": "completed"}


def test_a_held_callers_webhook_reads_once_and_writes_once(client, handset_api, line, tablet, online):
    line.policy = "immediate"
    line.save()
    online(tablet[0])
    report(handset_api, line)
    with CaptureQueriesContext(connection) as queries:
        root = xml(forward(client, sid=SID))
    assert root.find("Dial/Conference") is not None
    statements = [q["sql"].split()[0] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    # The pending call; then one guarded UPDATE and both timeline entries at once.
    assert statements == ["SELECT", "UPDATE", "INSERT"]
    assert list(Call.objects.get().timeline.values_list("event", flat=True))[-2:] == [
        "forwarded_call_arrived", "caller_held"]


def test_a_lost_claim_writes_no_timeline_entry(client, handset_api, line, tablet, online):
    from callpull.statemachine import Step, transition

    online(tablet[0])
    call = Call.objects.get(pk=report(handset_api, line).json()["call"]["id"])
    Call.objects.filter(pk=call.pk).update(provider_call_sid="CA" + "9" * 32)
    assert not transition(call, "forwarded_call_arrived", now=timezone.now(), step=Step("forwarded_call_arrived"),
                          fields={"provider_call_sid": SID}, guard={"provider_call_sid__isnull": True},
                          more_steps=(Step("caller_held"),))
    assert not call.timeline.filter(event__in=["forwarded_call_arrived", "caller_held"]).exists()


# Served by the ASGI application, as deployed (callpull/telephony/asgi.py) ---------

def _asgi_post(path: str, params: dict, *, signature: str | None = None, host: str = "127.0.0.1:8000"):
    """POST a form to callpull.asgi.application; returns (status, headers, body)."""
    from callpull.asgi import application

    route, _, query = path.partition("?")
    if signature is None:
        signature = RequestValidator(settings.TWILIO_AUTH_TOKEN).compute_signature(settings.PUBLIC_BASE_URL + path,
                                                                                   params)
    body = urlencode(params).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": route, "raw_path": route.encode(), "query_string": query.encode(), "root_path": "",
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", host.encode()), (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", str(len(body)).encode()), (b"x-twilio-signature", signature.encode())]}

    async def exchange():
        app = ApplicationCommunicator(application, scope)
        await app.send_input({"type": "http.request", "body": body})
        start = await app.receive_output(10)
        content = await app.receive_output(10)
        await app.wait(1)
        return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, content["body"]

    return async_to_sync(exchange)()


def _forward_params(sid: str = SID) -> dict:
    return {"CallSid": sid, "To": "+15555550100", "From": "+15550009999", "ForwardedFrom": "+15551234567",
            "CallStatus": "ringing", "Direction": "inbound", "AccountSid": "AC" + "5" * 32}


@pytest.mark.django_db(transaction=True)
def test_served_from_asgi_a_webhook_runs_whole_on_the_webhook_pool(client, handset_api, line, tablet, online,
                                                                   monkeypatch):
    from callpull.telephony import services

    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    threads = []
    real = services.call_arrived

    def call_arrived(**kwargs):
        threads.append(("view", threading.current_thread().name))
        return real(**kwargs)

    def started(**kwargs):
        threads.append(("started", threading.current_thread().name))

    def finished(**kwargs):
        threads.append(("finished", threading.current_thread().name))

    monkeypatch.setattr(services, "call_arrived", call_arrived)
    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        status, headers, body = _asgi_post("/telephony/twilio/voice", _forward_params())
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert status == 200 and headers["content-type"].startswith("text/xml")
    assert ElementTree.fromstring(body).find("Dial/Conference").text == f"callpull-{call_id}"
    # Django's middleware still answered around the view, in the same trip.
    assert (headers["x-content-type-options"], headers["x-frame-options"]) == ("nosniff", "DENY")
    assert [step for step, _ in threads] == ["started", "view", "finished"]
    assert len({name for _, name in threads}) == 1 and threads[0][1].startswith("webhook")
    # The same answer as Django's own handler gives the retried webhook.
    assert forward(client, sid=SID).content == body


@pytest.mark.django_db(transaction=True)
def test_served_from_asgi_the_pool_keeps_its_sqlite_connection_between_webhooks(line, monkeypatch):
    from callpull.telephony import services

    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL connections go back to its pool after each request")
    seen = []
    real = services.call_arrived

    def call_arrived(**kwargs):
        answer = real(**kwargs)
        seen.append(connection.connection)
        return answer

    monkeypatch.setattr(services, "call_arrived", call_arrived)
    for sid in (SID, "CA" + "2" * 32):
        assert _asgi_post("/telephony/twilio/voice", _forward_params(sid))[0] == 200
    assert len(seen) == 2 and seen[0] is seen[1]


@pytest.mark.django_db(transaction=True)
def test_served_from_asgi_a_bad_signature_is_403_and_a_bad_host_400(line):
    status, _, body = _asgi_post("/telephony/twilio/voice", _forward_params(), signature="forged")
    assert (status, body) == (403, b"invalid signature")
    status, _, _ = _asgi_post("/telephony/twilio/voice", _forward_params(), host="evil.example")
    assert status == 400
    assert Call.objects.filter(provider_call_sid=SID).count() == 0


@pytest.mark.django_db(transaction=True)
def test_served_from_asgi_an_unknown_webhook_path_is_djangos_404(client):
    status, headers, body = _asgi_post("/telephony/twilio/nothing-here", {"CallSid": SID})
    django = client.post("/telephony/twilio/nothing-here", {"CallSid": SID})
    assert (status, headers["content-type"], body) == (404, django["Content-Type"], django.content)


@pytest.mark.parametrize("forwarded_from", ["+15551234567", "+15550000000", None])
@pytest.mark.parametrize("caller", ["+15550009999", None])
def test_the_pending_call_query_picks_what_its_orm_form_picks(handset_api, line, stranger, caller, forwarded_from):
    from callpull import services as line_services
    from callpull.telephony.services import _candidates, _candidates_orm

    now = timezone.now()
    ids = [report(handset_api, line, caller=number).json()["call"]["id"]
           for number in ["+15550009999", "+15550009999", "+15550001111", "", "+15550009999", "+15550009999",
                          "+15550009999"]]
    Call.objects.filter(pk=ids[6]).update(state="missed")
    Call.objects.filter(pk=ids[1]).update(state="answering", created_at=now - timedelta(seconds=30))
    Call.objects.filter(pk=ids[4]).update(provider_call_sid="CA" + "4" * 32)
    Call.objects.filter(pk=ids[5]).update(created_at=now - timedelta(minutes=10))
    Call.objects.filter(pk=ids[0]).update(created_at=now - timedelta(seconds=5))
    # Another user's line on the same server number, with a call from the same caller and a withheld one.
    other, _ = line_services.line_register(device=stranger[0], number="+15557654321", region=None, now=now)
    assert other.server_number_id == line.server_number_id
    for number in ["+15550009999", ""]:
        assert report(stranger[1], other, caller=number).status_code == 201
    picked = _candidates(to="+15555550100", caller=caller, forwarded_from=forwarded_from, now=now)
    expected = _candidates_orm(to="+15555550100", caller=caller, forwarded_from=forwarded_from, now=now)
    assert [call.pk for call in picked] == list(expected.values_list("pk", flat=True)[:21])
    assert picked
    assert _candidates(to="+15555550199", caller=caller, forwarded_from=forwarded_from, now=now) == []


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's planner, which has no statistics")
def test_the_pending_call_query_reads_the_lines_recent_calls_not_every_unforwarded_one(db):
    from callpull.telephony import services

    captured = []
    original = Call.objects.raw

    def capture(sql, params):
        captured.append((sql, params))
        return original(sql, params)

    with mock.patch.object(Call.objects, "raw", side_effect=capture):
        services._candidates(to="+15555550100", caller="+15550009999", forwarded_from="+15551234567",
                             now=timezone.now())
    (sql, params), = captured
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = " | ".join(row[-1] for row in cursor.fetchall())
    assert "provider_call_sid" not in plan, plan
    assert "SEARCH c USING INDEX" in plan and "line_id=?" in plan, plan
