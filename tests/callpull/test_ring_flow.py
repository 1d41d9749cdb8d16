"""The ring report, answer, decline and handset events through the HTTP API,
with devices 'online' on channel-layer channels we read frames from."""

import uuid

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from callpull.models import Call
from devices.models import Device
from tests.callpull.conftest import forward, report
from tests.conftest import client_for, error_code, make_device, make_user

pytestmark = pytest.mark.django_db


def test_forwarding_not_active_keeps_the_handset_ringing_and_rings_nobody(handset_api, line, tablet, online):
    line.forwarding_state = "inactive"
    line.save()
    socket = online(tablet[0])
    response = report(handset_api, line)
    assert response.status_code == 201
    assert response.json()["instruction"] == {"action": "keep_ringing", "reason": "forwarding_not_active"}
    assert socket.frames() == []


def test_a_mismatched_forwarding_is_not_active_either(handset_api, line, tablet, online):
    line.forwarding_state = "mismatch"
    line.save()
    online(tablet[0])
    assert report(handset_api, line).json()["instruction"]["reason"] == "forwarding_not_active"


def test_no_reachable_device_keeps_the_handset_ringing(handset_api, line, tablet):
    response = report(handset_api, line)
    assert response.json()["instruction"] == {"action": "keep_ringing", "reason": "no_reachable_device"}


def test_on_answer_rings_the_secondaries_and_keeps_the_handset_ringing(handset_api, line, tablet, desktop, online):
    tablet_socket, desktop_socket = online(tablet[0]), online(desktop[0])
    response = report(handset_api, line)
    body = response.json()
    assert body["instruction"] == {"action": "keep_ringing", "reason": "policy_on_answer"}
    assert body["call"]["state"] == "ringing"
    assert body["call"]["caller"] == "+15550009999"
    assert body["call"]["line"] == "+15551234567"
    for socket in (tablet_socket, desktop_socket):
        frames = socket.frames()
        assert [f["type"] for f in frames] == ["call.ringing"]
        assert frames[0]["call"]["id"] == body["call"]["id"]
        assert frames[0]["id"] and frames[0]["at"]
    events = [(e["event"], e.get("device")) for e in body["call"]["timeline"]]
    assert ("reported", str(line.registered_by_id)) in events
    assert ("notification_sent", str(tablet[0].pk)) in events


def test_ring_disabled_devices_and_the_handset_do_not_ring(handset, handset_api, line, tablet, desktop, online):
    desktop[0].ring_enabled = False
    desktop[0].save()
    handset_socket, desktop_socket, tablet_socket = online(handset[0]), online(desktop[0]), online(tablet[0])
    report(handset_api, line)
    assert tablet_socket.types() == ["call.ringing"]
    assert desktop_socket.frames() == [] and handset_socket.frames() == []


def test_immediate_rejects_once_a_secondary_acknowledged_the_ring(handset, handset_api, line, tablet, desktop,
                                                                   online):
    line.policy = "immediate"
    line.save()
    handset_socket, tablet_socket, desktop_socket = online(handset[0]), online(tablet[0]), online(desktop[0])
    first = report(handset_api, line, report_id=uuid.uuid4())
    body = first.json()
    # Online is not reached: nobody acknowledged the frame yet (and nobody waits in unit tests).
    assert body["instruction"] == {"action": "keep_ringing", "reason": "awaiting_delivery"}
    assert handset_socket.frames() == []

    tablet_socket.ack()
    [reject] = handset_socket.frames()
    assert reject["type"] == "call.reject" and reject["call"]["id"] == body["call"]["id"]
    desktop_socket.ack()  # a second receipt rejects nothing more
    assert handset_socket.frames() == []

    call = handset_api.get(f"/api/v1/calls/{body['call']['id']}").json()
    events = [e["event"] for e in call["timeline"]]
    assert events.index("notification_sent") < events.index("notification_delivered") \
        < events.index("reject_instructed")
    assert events.count("reject_instructed") == 1
    [instructed] = [e for e in call["timeline"] if e["event"] == "reject_instructed"]
    assert instructed["detail"]["reason"] == "delivered" and instructed["detail"]["websocket"] is True


def test_a_repeated_report_after_the_receipt_answers_reject(handset_api, line, tablet, online):
    line.policy = "immediate"
    line.save()
    tablet_socket = online(tablet[0])
    report_id = uuid.uuid4()
    report(handset_api, line, report_id=report_id)
    tablet_socket.ack()
    assert report(handset_api, line, report_id=report_id).json()["instruction"] == {"action": "reject"}


def test_a_report_that_rang_but_lost_its_instruction_is_finished_by_its_retry(handset, handset_api, line, tablet,
                                                                                online):
    """The database (or the channel layer) went away after the call was stored and
    before its instruction was (the report answered 503): the retry rings the
    sockets again unless a receipt came, and decides from the receipts."""
    line.policy = "immediate"
    line.save()
    handset_socket, tablet_socket = online(handset[0]), online(tablet[0])
    report_id = uuid.uuid4()
    call_id = report(handset_api, line, report_id=report_id).json()["call"]["id"]
    Call.objects.filter(pk=call_id).update(keep_ringing_reason="")  # as if never stored
    assert len(tablet_socket.frames()) == 1
    retried = report(handset_api, line, report_id=report_id)
    assert retried.status_code == 200
    assert retried.json()["instruction"] == {"action": "keep_ringing", "reason": "awaiting_delivery"}
    # No receipt yet: its frames may never have left, so the sockets ring again.
    [again] = tablet_socket.frames()
    assert again["type"] == "call.ringing" and again["call"]["id"] == call_id
    tablet_socket.ack([again])
    assert [f["type"] for f in handset_socket.frames()] == ["call.reject"]
    assert report(handset_api, line, report_id=report_id).json()["instruction"] == {"action": "reject"}


def test_on_answer_never_rejects_on_a_receipt(handset, handset_api, line, tablet, online):
    handset_socket, tablet_socket = online(handset[0]), online(tablet[0])
    assert report(handset_api, line).json()["instruction"]["reason"] == "policy_on_answer"
    assert tablet_socket.ack()
    assert handset_socket.frames() == []


def test_immediate_with_nobody_reachable_never_rejects(handset_api, line, tablet):
    line.policy = "immediate"
    line.save()
    assert report(handset_api, line).json()["instruction"]["action"] == "keep_ringing"


def test_a_repeated_report_returns_the_same_call(handset_api, line, tablet, online):
    online(tablet[0])
    report_id = uuid.uuid4()
    first = report(handset_api, line, report_id=report_id)
    again = report(handset_api, line, report_id=report_id)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["call"]["id"] == first.json()["call"]["id"]
    assert again.json()["instruction"] == first.json()["instruction"]
    assert Call.objects.count() == 1


def test_a_repeated_report_with_a_line_no_longer_found_still_returns_its_call(handset_api, line, tablet, online):
    online(tablet[0])
    report_id = uuid.uuid4()
    first = report(handset_api, line, report_id=report_id)
    again = handset_api.post("/api/v1/calls", {"report_id": str(report_id), "line": "+15550000000",
                                               "caller": "+15550009999"}, format="json")
    assert (again.status_code, again.json()["call"]["id"]) == (200, first.json()["call"]["id"])


@pytest.mark.parametrize("policy", ["immediate", "on_answer"])
def test_the_reports_timeline_is_the_stored_one(handset_api, line, tablet, desktop, online, policy):
    line.policy = policy
    line.save()
    online(tablet[0]), online(desktop[0])
    body = report(handset_api, line).json()
    stored = handset_api.get(f"/api/v1/calls/{body['call']['id']}").json()
    assert body["call"] == {key: value for key, value in stored.items() if key != "devices"}  # not in the 201
    assert [e["event"] for e in stored["timeline"]] == ["reported", "notification_sent", "notification_sent",
                                                       "keep_ringing"]


def test_a_ring_report_costs_the_same_queries_whatever_the_number_of_devices(user, handset_api, line, tablet,
                                                                             online):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    line.policy = "immediate"
    line.save()
    online(tablet[0])
    report(handset_api, line)  # the handset's last_seen_at is written once a minute, not on every request

    def queries() -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert report(handset_api, line).status_code == 201
        return [query["sql"] for query in captured.captured_queries]

    one = queries()
    for index in range(3):
        online(make_device(user, kind="tablet", name=f"Tablet {index}")[0])
    four = queries()
    assert len(four) == len(one), four
    # Device, line; call, `reported`, ring targets with their sockets, deliveries (+ transaction);
    # the instruction and its step; whether a receipt came meanwhile (nobody acks in unit tests).
    assert len(one) <= 11, one


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a connection pool: the PostgreSQL pass only")
@pytest.mark.django_db(transaction=True)
def test_a_report_waiting_for_a_receipt_gives_its_connection_back_to_the_pool(settings, monkeypatch, handset_api,
                                                                              line, tablet, online):
    from notifications import fanout

    settings.RING_ACK_WAIT_SECONDS = 0.2
    line.policy = "immediate"
    line.save()
    online(tablet[0])
    held = connections["default"]  # this thread's wrapper: the test client runs the view here
    during_wait = []

    async def nobody_acks(channels, text, event_id, wait_ack):
        during_wait.append(held.connection is None)
        return []

    monkeypatch.setattr(fanout, "_send_all", nobody_acks)
    response = report(handset_api, line)
    assert response.status_code == 201
    assert response.json()["instruction"] == {"action": "keep_ringing", "reason": "awaiting_delivery"}
    assert during_wait == [True]
    assert Call.objects.get().keep_ringing_reason == "awaiting_delivery"


def test_a_socket_not_seen_within_the_presence_window_does_not_ring(settings, handset_api, line, tablet, online):
    from datetime import timedelta

    from django.utils import timezone

    from devices.models import DeviceConnection

    socket = online(tablet[0])
    DeviceConnection.objects.filter(channel_name=socket.channel).update(
        seen_at=timezone.now() - timedelta(seconds=settings.PRESENCE_STALE_SECONDS + 1))
    assert report(handset_api, line).json()["instruction"] == {"action": "keep_ringing",
                                                               "reason": "no_reachable_device"}
    assert socket.frames() == []


def test_a_device_with_two_sockets_rings_on_both_and_counts_once(handset_api, line, tablet, desktop, online):
    first, second, other = online(tablet[0]), online(tablet[0]), online(desktop[0])
    body = report(handset_api, line).json()
    assert [len(first.frames()), len(second.frames()), len(other.frames())] == [1, 1, 1]
    sent = [e["device"] for e in body["call"]["timeline"] if e["event"] == "notification_sent"]
    assert sorted(sent) == sorted([str(tablet[0].pk), str(desktop[0].pk)])


def test_the_line_may_be_given_by_number_and_a_national_caller_is_read_in_its_region(handset_api, line):
    line.region = "US"
    line.save()
    body = report(handset_api, line, caller="(555) 000-9999").json()
    assert body["call"]["caller"] == "+15550009999"
    response = handset_api.post("/api/v1/calls", {"report_id": str(uuid.uuid4()), "line": "+15551234567",
                                                  "caller": None}, format="json")
    assert response.status_code == 201
    assert response.json()["call"]["caller"] is None  # withheld


@pytest.mark.parametrize("body,field", [
    ({"line": "x", "caller": "+15550009999"}, "report_id"),
    ({"report_id": "not-a-uuid", "line": "x", "caller": "+1555"}, "report_id"),
    ({"report_id": str(uuid.uuid4()), "caller": "+15550009999"}, "line"),
])
def test_bad_reports_are_400(handset_api, line, body, field):
    response = handset_api.post("/api/v1/calls", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_an_unparseable_caller_is_400(handset_api, line):
    response = report(handset_api, line, caller="not a number")
    assert response.status_code == 400
    assert error_code(response) == "invalid_phone_number"


def test_a_line_of_another_user_is_404(line, stranger):
    response = report(stranger[1], line)
    assert response.status_code == 404


def test_only_the_handset_reports(tablet_api, line):
    response = report(tablet_api, line)
    assert response.status_code == 403
    assert error_code(response) == "handset_only"


def test_answer_wins_rejects_the_handset_and_tells_the_others(handset, handset_api, line, tablet, tablet_api,
                                                              desktop, desktop_api, online):
    handset_socket, desktop_socket = online(handset[0]), online(desktop[0])
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    desktop_socket.frames()

    response = tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    assert response.status_code == 200
    assert response.json()["state"] == "answering"
    assert response.json()["answered_by"] == str(tablet[0].pk)
    reject = handset_socket.frames()
    assert [f["type"] for f in reject] == ["call.reject"]
    assert reject[0]["call"]["id"] == call_id
    elsewhere = desktop_socket.frames()
    assert [f["type"] for f in elsewhere] == ["call.answered_elsewhere"]
    assert elsewhere[0]["device"]["id"] == str(tablet[0].pk)

    second = desktop_api.post(f"/api/v1/calls/{call_id}/answer")
    assert second.status_code == 409
    assert error_code(second) == "already_answered"


def test_the_handset_cannot_answer_as_a_secondary(handset_api, line):
    call_id = report(handset_api, line).json()["call"]["id"]
    response = handset_api.post(f"/api/v1/calls/{call_id}/answer")
    assert response.status_code == 403
    assert error_code(response) == "secondary_only"


def test_a_device_without_connect_target_cannot_answer(user, handset_api, line):
    # A web device is reached at its own voice identity unless it sets another target, so one
    # without any target is only a row from before voice identities: made here by hand.
    device, token = make_device(user, kind="web", platform="web")
    Device.all_objects.filter(pk=device.pk).update(connect_type="", connect_address="", connect_verified_at=None)
    call_id = report(handset_api, line).json()["call"]["id"]
    response = client_for(token).post(f"/api/v1/calls/{call_id}/answer")
    assert response.status_code == 409
    assert error_code(response) == "no_connect_target"


def test_a_web_device_that_set_no_target_answers_at_its_voice_identity(user, handset_api, line, fake_provider):
    device, token = make_device(user, kind="web", platform="web")
    call_id = report(handset_api, line).json()["call"]["id"]
    response = client_for(token).post(f"/api/v1/calls/{call_id}/answer")
    assert response.status_code == 200, response.content
    assert response.json()["answered_by"] == str(device.pk)
    forward(APIClient(), sid="CA" + uuid.uuid4().hex)
    dialled = [action[2] for action in fake_provider.actions if action[0] == "add"]
    assert dialled == [f"client:{device.voice_identity}"]


@pytest.mark.parametrize("action", ["get", "answer", "decline"])
def test_other_users_calls_are_404(handset_api, line, action):
    call_id = report(handset_api, line).json()["call"]["id"]
    mallory = make_device(make_user("mallory"), kind="tablet", connect_type="client", connect_address="m")
    client = client_for(mallory[1])
    response = client.get(f"/api/v1/calls/{call_id}") if action == "get" else \
        client.post(f"/api/v1/calls/{call_id}/{action}", {}, format="json")
    assert response.status_code == 404
    assert Call.objects.get().state == "ringing"


def test_decline_on_one_device_leaves_the_call_ringing(handset_api, line, tablet_api, tablet):
    call_id = report(handset_api, line).json()["call"]["id"]
    response = tablet_api.post(f"/api/v1/calls/{call_id}/decline", {"scope": "device"}, format="json")
    assert response.json()["state"] == "ringing"
    assert "declined_on_device" in [e["event"] for e in response.json()["timeline"]]


def test_decline_everywhere_ends_the_call_and_rejects_on_the_handset(handset, handset_api, line, tablet,
                                                                     tablet_api, desktop, online):
    handset_socket, desktop_socket = online(handset[0]), online(desktop[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    desktop_socket.frames()
    response = tablet_api.post(f"/api/v1/calls/{call_id}/decline", {"scope": "everywhere"}, format="json")
    assert response.json()["state"] == "declined"
    assert response.json()["end_reason"] == "declined"
    assert desktop_socket.types() == ["call.ended"]
    assert handset_socket.types() == ["call.ended", "call.reject"]
    again = tablet_api.post(f"/api/v1/calls/{call_id}/decline", {"scope": "everywhere"}, format="json")
    assert again.status_code == 409


def test_answered_on_the_handset_stops_the_others(handset_api, line, tablet, tablet_api, online):
    socket = online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    socket.frames()
    response = handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "answered"}, format="json")
    assert response.json()["state"] == "answered_on_handset"
    assert socket.types() == ["call.answered_elsewhere"]
    assert tablet_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 409


def test_caller_hanging_up_while_ringing_is_a_missed_call(handset_api, line, tablet, online):
    socket = online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    socket.frames()
    response = handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "caller_hung_up"},
                                format="json")
    assert response.json()["state"] == "missed"
    assert response.json()["end_reason"] == "caller_hung_up"
    ended = socket.frames()
    assert [f["type"] for f in ended] == ["call.ended"] and ended[0]["reason"] == "caller_hung_up"


def test_a_failed_reject_ends_the_call_and_tells_the_devices(handset_api, line, tablet, tablet_api, online):
    socket = online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    socket.frames()
    response = handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "reject_failed"},
                                format="json")
    assert response.json()["state"] == "failed"
    assert socket.types() == ["call.ended"]


def test_handset_rejected_is_on_the_timeline_and_starts_the_forward_wait(handset_api, line, tablet_api):
    call_id = report(handset_api, line).json()["call"]["id"]
    response = handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "rejected"}, format="json")
    assert "handset_rejected" in [e["event"] for e in response.json()["timeline"]]


def test_a_handset_event_on_an_ended_call_is_409(handset_api, line):
    call_id = report(handset_api, line).json()["call"]["id"]
    handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "caller_hung_up"}, format="json")
    response = handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "answered"}, format="json")
    assert response.status_code == 409
    bad = handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "exploded"}, format="json")
    assert bad.status_code == 400


def test_history_is_newest_first_and_filters_by_state(handset_api, line, tablet_api):
    first = report(handset_api, line).json()["call"]["id"]
    second = report(handset_api, line).json()["call"]["id"]
    handset_api.post(f"/api/v1/calls/{first}/handset-events", {"event": "caller_hung_up"}, format="json")
    assert [c["id"] for c in tablet_api.get("/api/v1/calls").json()] == [second, first]
    assert [c["id"] for c in tablet_api.get("/api/v1/calls?state=missed").json()] == [first]
    assert tablet_api.get("/api/v1/calls?state=bogus").status_code == 400
    detail = tablet_api.get(f"/api/v1/calls/{first}").json()
    assert [e["event"] for e in detail["timeline"]][:1] == ["reported"]


def test_acks_mark_notifications_delivered(handset_api, line, tablet, tablet_api, online):
    from django.utils import timezone

    from notifications.fanout import delivery_ack
    socket = online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    event_id = socket.frames()[0]["id"]
    assert delivery_ack(event_id=event_id, device=tablet[0], now=timezone.now())
    timeline = tablet_api.get(f"/api/v1/calls/{call_id}").json()["timeline"]
    delivered = [e for e in timeline if e["event"] == "notification_delivered"]
    assert delivered and delivered[0]["device"] == str(tablet[0].pk)
    assert delivered[0]["detail"]["transport"] == "websocket"


def test_a_device_that_connects_while_a_call_rings_gets_the_ringing(handset_api, line, tablet, desktop, online):
    from callpull.calls import on_device_connected
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    late = online(desktop[0])
    on_device_connected(sender=None, device=desktop[0])
    frames = late.frames()
    assert [f["type"] for f in frames] == ["call.ringing"] and frames[0]["call"]["id"] == call_id
