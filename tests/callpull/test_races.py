"""Races decided by guarded transitions, with real threads and connections
(SQLite here, PostgreSQL in CI's second pass)."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from callpull import calls
from callpull import services as line_services
from callpull.api.errors import status_for
from callpull.models import Call
from callpull.sweeper import calls_sweep
from devices.errors import ServiceError
from tests.conftest import make_device, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def run_together(functions):
    barrier = threading.Barrier(len(functions))

    def run(fn):
        barrier.wait()
        try:
            return fn()
        except ServiceError as exc:
            return exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(functions)) as pool:
        return list(pool.map(run, functions))


@pytest.fixture
def setup():
    user = make_user("ana")
    handset, _ = make_device(user, kind="handset")
    line, _ = line_services.line_register(device=handset, number="+15551234567", region=None, now=timezone.now())
    line_services.line_forwarding_confirm(line=line, state="active", target=line.server_number.number,
                                          now=timezone.now())
    tablets = [make_device(user, kind="tablet", connect_type="client", connect_address=f"t{i}")[0]
               for i in range(8)]
    return handset, line, tablets


def test_eight_devices_answering_at_once_yield_one_winner(setup):
    handset, line, tablets = setup
    call = calls.call_report(device=handset, report_id=uuid.uuid4(), line=str(line.pk), caller="+15550009999",
                             caller_name="", now=timezone.now()).call

    def answer(device):
        return lambda: calls.call_answer(call=Call.objects.select_related("line").get(pk=call.pk), device=device,
                                         now=timezone.now())

    results = run_together([answer(device) for device in tablets])
    winners = [r for r in results if not isinstance(r, ServiceError)]
    losers = [r for r in results if isinstance(r, ServiceError)]
    assert len(winners) == 1
    assert {(status_for(e), e.code) for e in losers} == {(409, "already_answered")}
    stored = Call.objects.get()
    assert stored.answered_by_id == winners[0].answered_by_id
    assert stored.timeline.filter(event="answered").count() == 1


def test_the_same_report_sent_concurrently_makes_one_call(setup):
    handset, line, _ = setup
    report_id = uuid.uuid4()

    def send():
        return calls.call_report(device=handset, report_id=report_id, line=str(line.pk), caller="+15550009999",
                                 caller_name="", now=timezone.now())

    results = run_together([send for _ in range(6)])
    assert Call.objects.count() == 1
    assert len({report.call.pk for report in results}) == 1
    assert sum(report.created for report in results) == 1


# --- over HTTP, with many devices and the provider's webhooks -------------------

def _http_setup(n_secondaries):
    from tests.conftest import client_for

    user = make_user("bea")
    handset, handset_token = make_device(user, kind="handset")
    line, _ = line_services.line_register(device=handset, number="+15551234567", region=None, now=timezone.now())
    line = line_services.line_forwarding_confirm(line=line, state="active", target=line.server_number.number,
                                                 now=timezone.now())
    secondaries = [make_device(user, kind="tablet", connect_type="client", connect_address=f"t{i}")
                   for i in range(n_secondaries)]
    return user, client_for(handset_token), line, [(d, client_for(t)) for d, t in secondaries]


def _live_call(fake_provider):
    """A call connected on the first tablet; two more tablets can pull it."""
    from rest_framework.test import APIClient

    from tests.callpull.conftest import forward, join_leg, report

    user, handset_api, line, secondaries = _http_setup(3)
    call_id = report(handset_api, line).json()["call"]["id"]
    assert secondaries[0][1].post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    forward(APIClient(), sid="CA" + "7" * 32, to=line.server_number.number)
    join_leg(APIClient(), call_id, fake_provider)
    assert Call.objects.get(pk=call_id).state == "connected"
    return call_id, secondaries


def test_fifty_devices_answering_over_http_yield_one_winner():
    from tests.callpull.conftest import report

    _, handset_api, line, secondaries = _http_setup(50)
    call_id = report(handset_api, line).json()["call"]["id"]
    responses = run_together([(lambda c=client: c.post(f"/api/v1/calls/{call_id}/answer"))
                              for _, client in secondaries])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 49, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"already_answered"}
    call = Call.objects.get(pk=call_id)
    winner = [r.status_code for r in responses].index(200)  # run_together keeps the order
    assert call.answered_by_id == secondaries[winner][0].pk
    assert call.timeline.filter(event="answered").count() == 1


def test_the_same_webhook_posted_concurrently_makes_one_leg(fake_provider):
    from rest_framework.test import APIClient

    from callpull.models import CallLeg
    from tests.callpull.conftest import forward, report

    _, handset_api, line, secondaries = _http_setup(1)
    call_id = report(handset_api, line).json()["call"]["id"]
    assert secondaries[0][1].post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    sid = "CA" + "8" * 32
    responses = run_together([lambda: forward(APIClient(), sid=sid, to=line.server_number.number)
                              for _ in range(8)])
    assert {r.status_code for r in responses} == {200}
    call = Call.objects.get(pk=call_id)
    assert call.state == "forwarded" and call.provider_call_sid == sid
    assert call.timeline.filter(event="forwarded_call_arrived").count() == 1
    assert CallLeg.objects.filter(call=call).count() == 1
    assert fake_provider.kinds().count("add") == 1


def test_pulls_racing_each_other_leave_one_open_pull(fake_provider):
    from callpull.models import Pull

    call_id, secondaries = _live_call(fake_provider)
    pullers = [client for _, client in secondaries[1:]] * 3
    responses = run_together([(lambda c=c: c.post(f"/api/v1/calls/{call_id}/pull")) for c in pullers])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [409] * (len(pullers) - 1), statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"pull_in_progress"}
    assert Pull.objects.filter(call_id=call_id).count() == 1


def test_a_pull_racing_the_holders_hang_up_leaves_no_half_moved_call(fake_provider):
    from rest_framework.test import APIClient

    from callpull.models import CallLeg, Pull, PullState
    from tests.callpull.conftest import conference

    call_id, secondaries = _live_call(fake_provider)
    holder_leg = CallLeg.objects.get(call_id=call_id, device=secondaries[0][0])
    puller = secondaries[1][1]
    responses = run_together([
        lambda: puller.post(f"/api/v1/calls/{call_id}/pull"),
        lambda: conference(APIClient(), call_id, "participant-leave", label=str(holder_leg.pk),
                           sid=holder_leg.provider_call_sid),
    ])
    assert all(r.status_code < 500 for r in responses), [r.content for r in responses]
    call = Call.objects.get(pk=call_id)
    pulls = list(Pull.objects.filter(call_id=call_id))
    if call.state == "connected":
        # The hang-up lost: the call is whole, held by one device with a live leg, or mid-move.
        assert call.held_by_id is not None
        assert CallLeg.objects.filter(call=call, device_id=call.held_by_id, state="joined").exists() or \
            any(p.state == PullState.APPROVED for p in pulls)
    else:
        # The hang-up won: the call ended, and then no pull is left open and no leg is still dialing it.
        assert call.state in ("completed", "missed", "failed"), call.state
        calls_sweep(now=timezone.now() + timedelta(minutes=10))
        assert not Pull.objects.filter(call_id=call_id, state__in=[PullState.AWAITING_APPROVAL,
                                                                   PullState.APPROVED]).exists()
