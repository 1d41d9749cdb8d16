"""FCM outcomes recorded on their delivery rows in batches (notifications.push_results)."""

import threading
import time
import uuid

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Device
from notifications import fcm, push_results
from notifications.models import Delivery, Transport
from tests.conftest import make_device, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _result(device, *, ok=True, error=None, attempts=1, drop_token=False, token=None):
    push = fcm.Push(device_id=str(device.pk), token=token or device.fcm_token or "token-x", data={"type": "t"},
                    collapse_key="call-1", deadline=time.time() + 30)
    return fcm.PushResult(push, ok, "projects/p/messages/1" if ok else None, error, drop_token, attempts,
                          time.time() if ok else None)


@pytest.fixture
def fleet():
    """An event with an FCM delivery row for each of 16 devices."""
    user = make_user()
    devices = [make_device(user, kind="desktop", fcm_token=f"fcm-token-{i:03d}-" + "x" * 40)[0] for i in range(16)]
    event_id = str(uuid.uuid4())
    now = timezone.now()
    Delivery.objects.bulk_create([Delivery(event_id=event_id, event_type="call.ringing", ref=uuid.uuid4(),
                                           device=d, transport=Transport.FCM, queued_at=now) for d in devices])
    return event_id, devices


@pytest.fixture
def batches(monkeypatch) -> list[int]:
    """The size of each batch the recorder writes, in order."""
    sizes = []
    real_record = push_results._record
    monkeypatch.setattr(push_results, "_record", lambda outcomes: (sizes.append(len(outcomes)),
                                                                  real_record(outcomes)))
    return sizes


def test_a_batch_is_recorded_in_one_update_per_outcome_whatever_its_size(fleet):
    event_id, devices = fleet
    accepted_by = []
    results = ([_result(d) for d in devices[:10]]
               + [_result(d, ok=False, error="unavailable", attempts=3) for d in devices[10:15]]
               + [_result(devices[15], ok=False, error="unregistered", drop_token=True)])
    outcomes = [push_results.Outcome(r, event_id, accepted_by.append) for r in results]

    with CaptureQueriesContext(connection) as queries:
        push_results.record(outcomes)

    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(writes) == 4  # accepted, unavailable x3, unregistered; the dead token
    rows = {str(row.device_id): row for row in Delivery.objects.filter(event_id=event_id)}
    for result in results:
        row = rows[result.push.device_id]
        assert (row.error, row.attempts) == (result.error or "", result.attempts)
        assert (row.sent_at is not None) == result.ok
        if result.ok:
            assert abs(row.sent_at.timestamp() - result.sent_at) < 0.001
    assert accepted_by == [str(d.pk) for d in devices[:10]]  # each accepted push, in order, once
    assert Device.all_objects.get(pk=devices[15].pk).fcm_token == ""
    assert all(Device.all_objects.get(pk=d.pk).fcm_token for d in devices[:15])


def test_a_dead_token_is_not_dropped_when_the_device_registered_a_new_one_since(fleet):
    event_id, devices = fleet
    stale = _result(devices[0], ok=False, error="unregistered", drop_token=True, token="an-older-token")

    push_results.record([push_results.Outcome(stale, event_id, None)])

    assert Device.all_objects.get(pk=devices[0].pk).fcm_token == devices[0].fcm_token


def test_the_callback_runs_only_once_the_row_says_the_push_was_sent(fleet):
    event_id, devices = fleet
    seen = []

    def on_accepted(device_id):
        seen.append(Delivery.objects.get(event_id=event_id, device_id=device_id).sent_at)

    push_results.record([push_results.Outcome(_result(devices[0]), event_id, on_accepted)])

    assert len(seen) == 1 and seen[0] is not None


def test_a_failing_callback_does_not_stop_the_others(fleet):
    event_id, devices = fleet
    called = []

    def on_accepted(device_id):
        called.append(device_id)
        raise RuntimeError("the caller's bug")

    push_results.record([push_results.Outcome(_result(d), event_id, on_accepted) for d in devices[:3]])

    assert called == [str(d.pk) for d in devices[:3]]


def test_results_arriving_together_from_another_thread_are_written_as_one_batch(fleet, batches):
    event_id, devices = fleet
    recorder = push_results.PushRecorder(interval=0.3)
    on_result = recorder.callback(event_id)

    sender = threading.Thread(target=lambda: [on_result(_result(d)) for d in devices])
    sender.start()
    sender.join()
    assert recorder.flush(timeout=10)

    assert batches == [len(devices)]
    assert Delivery.objects.filter(event_id=event_id, sent_at__isnull=False).count() == len(devices)


def test_a_batch_larger_than_the_limit_is_split(fleet, batches):
    event_id, devices = fleet
    recorder = push_results.PushRecorder(interval=0.3, batch=5)
    on_result = recorder.callback(event_id)

    for device in devices:
        on_result(_result(device))
    assert recorder.flush(timeout=10)

    assert sum(batches) == len(devices) and max(batches) == 5
    assert Delivery.objects.filter(event_id=event_id, sent_at__isnull=False).count() == len(devices)


def test_the_recorders_thread_keeps_its_connection_while_results_come_and_closes_it_when_they_stop(
        fleet, monkeypatch):
    event_id, devices = fleet
    monkeypatch.setattr(push_results, "IDLE_CLOSE_SECONDS", 0.2)
    opened = []

    def on_connect(sender, connection, **kwargs):
        if threading.current_thread().name == "fcm-record":
            opened.append(connection)
    connection_created.connect(on_connect)
    try:
        recorder = push_results.PushRecorder(interval=0.01)
        on_result = recorder.callback(event_id)
        for device in devices[:8]:  # eight batches, one after another
            on_result(_result(device))
            assert recorder.flush(timeout=10)
        assert len(opened) == 1
        time.sleep(0.5)  # longer than IDLE_CLOSE_SECONDS without a result
        on_result(_result(devices[8]))
        assert recorder.flush(timeout=10)
        assert len(opened) == 2
    finally:
        connection_created.disconnect(on_connect)
    assert Delivery.objects.filter(event_id=event_id, sent_at__isnull=False).count() == 9


def test_a_worker_shutting_down_writes_the_results_it_still_holds(fleet, monkeypatch):
    from asgiref.sync import async_to_sync

    from callpull import startup

    event_id, devices = fleet
    monkeypatch.setattr(push_results, "RECORDER", push_results.PushRecorder(interval=0.5))
    on_result = push_results.RECORDER.callback(event_id)
    for device in devices:
        on_result(_result(device))

    async_to_sync(startup.shutdown)()

    assert Delivery.objects.filter(event_id=event_id, sent_at__isnull=False).count() == len(devices)
