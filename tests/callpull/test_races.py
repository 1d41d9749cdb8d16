"""Races decided by guarded transitions, with real threads and connections
(SQLite here, PostgreSQL in CI's second pass)."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.utils import timezone

from callpull import calls
from callpull import services as line_services
from callpull.models import Call
from devices.errors import ApiError
from tests.conftest import make_device, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def run_together(functions):
    barrier = threading.Barrier(len(functions))

    def run(fn):
        barrier.wait()
        try:
            return fn()
        except ApiError as exc:
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
    call, _, _ = calls.call_report(device=handset, report_id=uuid.uuid4(), line=str(line.pk), caller="+15550009999",
                                   caller_name="", now=timezone.now())

    def answer(device):
        return lambda: calls.call_answer(call=Call.objects.select_related("line").get(pk=call.pk), device=device,
                                         now=timezone.now())

    results = run_together([answer(device) for device in tablets])
    winners = [r for r in results if not isinstance(r, ApiError)]
    losers = [r for r in results if isinstance(r, ApiError)]
    assert len(winners) == 1
    assert {(e.status_code, e.code) for e in losers} == {(409, "already_answered")}
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
    assert len({call.pk for call, _, _ in results}) == 1
    assert sum(created for _, _, created in results) == 1
