"""A ring report and the network's forwarded call for the same ring, at the same time,
make one call: real threads and connections (SQLite here, PostgreSQL in CI's second
pass). The line's row lock decides (docs/CALLS.md, "Exactly once")."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.utils import timezone

from callpull import calls
from callpull import services as line_services
from callpull.models import Call
from callpull.telephony import services as telephony
from tests.conftest import make_device, make_user

pytestmark = pytest.mark.django_db(transaction=True)
ROUNDS = 25


def run_together(functions):
    barrier = threading.Barrier(len(functions))

    def run(fn):
        barrier.wait()
        try:
            return fn()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(functions)) as pool:
        return list(pool.map(run, functions))


@pytest.fixture
def setup():
    user = make_user("ana")
    handset, _ = make_device(user, kind="handset")
    make_device(user, kind="tablet", connect_type="client", connect_address="t1")
    line, _ = line_services.line_register(device=handset, number="+15551234567", region=None, now=timezone.now())
    for kind in ("busy", "no_answer"):
        line_services.line_forwarding_confirm(line=line, kind=kind, state="active", target=line.server_number.number,
                                              timer=20 if kind == "no_answer" else None, now=timezone.now())
    return handset, line


def _report(handset, line, caller):
    return lambda: calls.call_report(device=handset, report_id=uuid.uuid4(), line=str(line.pk), caller=caller,
                                     caller_name="", now=timezone.now())


def _webhook(line, caller, sid, forwarded_from):
    params = {"CallSid": sid, "To": line.server_number.number, "From": caller, "CallStatus": "ringing"}
    if forwarded_from:
        params["ForwardedFrom"] = line.number
    return lambda: telephony.call_arrived(params=params, now=timezone.now())


@pytest.mark.parametrize("forwarded_from", [True, False], ids=["forwarded_from", "to_only"])
def test_a_report_and_the_forwarded_call_at_once_make_one_call_every_time(setup, forwarded_from):
    handset, line = setup
    for round_ in range(ROUNDS):
        caller = f"+1555000{round_:04d}"
        sid = f"CA{round_:032d}"
        jobs = [_report(handset, line, caller), _webhook(line, caller, sid, forwarded_from)]
        if round_ % 2:
            jobs.reverse()
        results = run_together(jobs)
        report, twiml = (results[0], results[1]) if not round_ % 2 else (results[1], results[0])
        [call] = Call.objects.filter(caller=caller)
        assert report.call.pk == call.pk, round_
        assert f"callpull-{call.pk}" in twiml, (round_, twiml)  # the caller is in that call's conference
        assert call.provider_call_sid == sid and call.state == "forwarded"
        # Whoever came first: the report made it (busy) and the webhook claimed it, or
        # the webhook made it (no_answer) and the report joined it.
        assert (call.forwarding_kind, report.created) in {("busy", True), ("no_answer", False)}, round_


def test_the_same_forwarded_call_posted_at_once_makes_one_call(setup):
    _, line = setup
    sid = "CA" + "8" * 32
    results = run_together([_webhook(line, "+15550001111", sid, True) for _ in range(4)])
    [call] = Call.objects.all()
    assert all(f"callpull-{call.pk}" in twiml for twiml in results)
    assert call.timeline.filter(event="forwarded_by_network").count() == 1
