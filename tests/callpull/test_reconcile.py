"""Reconciliation: a connected call whose callbacks went missing is checked against
the provider's REST API and ended when the provider says it ended. The provider is
the fake in conftest; time moves with time-machine (the once-per-period guard lives
in the cache, whose clock is time.time)."""

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from callpull.models import Call, CallLeg
from callpull.sweeper import calls_sweep
from tests.callpull.conftest import forward, join_leg, report, signed_post

pytestmark = pytest.mark.django_db
SID = "CA" + "7" * 32


@pytest.fixture(autouse=True)
def _own_cache(settings):
    # The guard is a cache key with a TTL: a cache of this test's own, on time-machine's clock.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "reconcile-tests"}}
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def connected(client, handset_api, line, tablet, tablet_api, online, fake_provider):
    """A call the tablet took and is talking on; returns (call, the tablet's leg, a function that
    opens the tablet's socket: presence goes stale while time travels, so open it after)."""
    socket = online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    assert tablet_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    forward(client, sid=SID)
    join_leg(client, call_id, fake_provider)
    call = Call.objects.get()
    assert call.state == "connected"
    socket.frames()
    fake_provider.actions.clear()
    return call, CallLeg.objects.get(), lambda: online(tablet[0])


def quiet_for(seconds):
    """Travel `seconds` past the call's last timeline entry and sweep, as the sweeper would."""
    return time_machine.travel(timezone.now() + timedelta(seconds=seconds), tick=False)


def sweep():
    calls_sweep(now=timezone.now())


def asked(fake_provider):
    return [action[1] for action in fake_provider.actions if action[0] == "status"]


def test_a_hang_up_whose_callback_was_lost_is_found_and_ends_the_call(connected, fake_provider):
    call, leg, open_socket = connected
    fake_provider.statuses[SID] = "completed"
    with quiet_for(settings.CALL_RECONCILE_SECONDS + 1):
        socket = open_socket()
        sweep()
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("completed", "completed")
    entry = call.timeline.get(event="caller_hung_up")
    assert entry.detail == {"call_status": "completed", "found_by": "reconciliation"}
    assert CallLeg.objects.get().state == "left"
    assert socket.types() == ["call.ended"]
    assert asked(fake_provider) == [SID]


@pytest.mark.parametrize("status", ["failed", "no-answer", "canceled", "busy"])
def test_any_ended_status_at_the_provider_ends_the_call(connected, fake_provider, status):
    call, _, _ = connected
    fake_provider.statuses[SID] = status
    with quiet_for(settings.CALL_RECONCILE_SECONDS + 1):
        sweep()
    call.refresh_from_db()
    assert call.state == "completed"
    assert call.timeline.get(event="caller_hung_up").detail["call_status"] == status


def test_a_call_the_provider_does_not_know_is_not_live(connected, fake_provider):
    call, _, _ = connected
    fake_provider.statuses[SID] = None  # 404 at the provider
    with quiet_for(settings.CALL_RECONCILE_SECONDS + 1):
        sweep()
    call.refresh_from_db()
    assert call.state == "completed"
    assert call.timeline.get(event="caller_hung_up").detail == {"call_status": "not_found",
                                                                 "found_by": "reconciliation"}


def test_a_call_heard_from_recently_is_not_asked_about(connected, fake_provider):
    call, _, _ = connected
    fake_provider.statuses[SID] = "completed"
    with quiet_for(settings.CALL_RECONCILE_SECONDS - 5):
        sweep()
    assert asked(fake_provider) == []
    assert Call.objects.get().state == "connected"


def test_a_live_call_stays_connected_and_is_asked_again_only_after_the_period(connected, fake_provider):
    call, leg, _ = connected
    leg_sid = fake_provider.sids[str(leg.pk)]
    period = settings.CALL_RECONCILE_SECONDS
    with quiet_for(period + 1):
        sweep()
        sweep()  # the next sweep, a moment later: already asked
    assert asked(fake_provider) == [SID, leg_sid]
    assert Call.objects.get().state == "connected"
    with quiet_for(period + 1 + period // 2):
        sweep()
    assert asked(fake_provider) == [SID, leg_sid]
    with quiet_for(2 * period + 2):
        sweep()
    assert asked(fake_provider) == [SID, leg_sid, SID, leg_sid]
    call.refresh_from_db()
    assert call.state == "connected"
    assert not call.timeline.filter(event__in=["caller_hung_up", "leg_left", "ended"]).exists()


def test_the_holding_device_gone_at_the_provider_ends_the_call_and_releases_the_caller(connected, fake_provider):
    call, leg, open_socket = connected
    fake_provider.statuses[fake_provider.sids[str(leg.pk)]] = "completed"
    with quiet_for(settings.CALL_RECONCILE_SECONDS + 1):
        socket = open_socket()
        sweep()
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert call.timeline.get(event="leg_left").detail == {"role": "device", "found_by": "reconciliation"}
    assert call.timeline.get(event="ended").detail == {"by": "device", "found_by": "reconciliation"}
    assert ("hangup", SID) in fake_provider.actions  # the caller is not left alone in the conference
    assert socket.types() == ["call.ended"]


def test_a_provider_out_of_reach_leaves_the_call_and_the_sweep_goes_on(connected, fake_provider, handset_api, line):
    call, _, _ = connected
    fake_provider.refuse = True
    with quiet_for(settings.CALL_RECONCILE_SECONDS + settings.CALL_RING_SECONDS + 1):
        report(handset_api, line, caller="+15550008888")  # rings, nobody answers
    with quiet_for(2 * (settings.CALL_RECONCILE_SECONDS + settings.CALL_RING_SECONDS) + 2):
        sweep()
    call.refresh_from_db()
    assert call.state == "connected"
    unanswered = Call.objects.get(caller="+15550008888")
    assert (unanswered.state, unanswered.end_reason) == ("missed", "no_answer")


def test_a_status_callback_after_reconciliation_changes_nothing(client, connected, fake_provider):
    call, _, open_socket = connected
    fake_provider.statuses[SID] = "completed"
    with quiet_for(settings.CALL_RECONCILE_SECONDS + 1):
        socket = open_socket()
        sweep()
        assert socket.types() == ["call.ended"]
        response = signed_post(client, "/telephony/twilio/status", {"CallSid": SID, "CallStatus": "completed"})
        assert response.status_code == 204
        assert socket.types() == []
    assert Call.objects.get().timeline.filter(event="caller_hung_up").count() == 1
