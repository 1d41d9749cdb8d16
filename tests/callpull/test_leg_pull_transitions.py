"""The leg and pull state machines (callpull.statemachine, LEG_TRANSITIONS and
PULL_TRANSITIONS): one guarded UPDATE per transition, its timeline entry written by
the winner only, and nothing written when the state does not allow it."""

from datetime import timedelta

import pytest
from django.utils import timezone

from callpull.models import Call, CallLeg, LegState, Pull, PullState, TimelineEntry
from callpull.statemachine import (
    LEG_TRANSITIONS,
    PULL_TRANSITIONS,
    Step,
    leg_transition,
    legs_transition,
    pull_transition,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def call(line, handset):
    now = timezone.now()
    return Call.objects.create(user=line.user, line=line, report_id="6f2b1c1e-0000-4000-8000-000000000001",
                               reported_by=handset[0], policy=line.policy, state="connected", created_at=now)


def leg_of(call, device=None, state=LegState.DIALING) -> CallLeg:
    return CallLeg.objects.create(call=call, device=device, role="device", state=state, created_at=timezone.now())


def events(call) -> list[tuple[str, dict]]:
    return [(e.event, e.detail) for e in TimelineEntry.objects.filter(call=call)]


def test_every_route_names_states_of_its_machine():
    for routes, states in ((LEG_TRANSITIONS, set(LegState)), (PULL_TRANSITIONS, set(PullState))):
        for name, route in routes.items():
            assert set(route) | set(route.values()) <= states, name


def test_a_leg_fails_once_and_the_winner_writes_the_entry(call, tablet):
    leg, now = leg_of(call, tablet[0]), timezone.now()
    step = Step("leg_failed", tablet[0].pk, {"role": "device", "reason": "busy"})
    assert leg_transition(leg, "failed", now=now, reason="busy", step=step)
    assert not leg_transition(leg, "failed", now=now, reason="busy", step=step)  # a repeated callback
    stored = CallLeg.objects.get(pk=leg.pk)
    assert (stored.state, stored.end_reason, stored.ended_at) == ("failed", "busy", now)
    assert (leg.state, leg.end_reason) == ("failed", "busy")  # updated in place
    assert events(call) == [("leg_failed", {"role": "device", "reason": "busy"})]


def test_a_state_the_transition_does_not_leave_from_changes_nothing(call, tablet):
    leg = leg_of(call, tablet[0])
    assert not leg_transition(leg, "left", now=timezone.now(), reason="hung_up", step=Step("leg_left"))
    assert CallLeg.objects.get(pk=leg.pk).state == "dialing" and events(call) == []


def test_a_stale_copy_still_moves_from_the_state_stored(call, tablet):
    leg = leg_of(call, tablet[0])
    CallLeg.objects.filter(pk=leg.pk).update(state=LegState.JOINED)  # joined elsewhere; `leg` still says dialing
    assert not leg_transition(leg, "hung_up_dialling", now=timezone.now(), reason="switched")
    assert leg_transition(leg, "removed", now=timezone.now(), reason="switched")
    assert CallLeg.objects.get(pk=leg.pk).state == "left"


def test_a_join_heard_after_the_end_keeps_the_leg_left_and_its_end(call, tablet):
    ended = timezone.now() - timedelta(seconds=5)
    leg = leg_of(call, tablet[0])
    assert legs_transition(call, "call_ended", now=ended, reason="call_ended") == 1
    leg.refresh_from_db()
    guard = {"end_reason": "call_ended", "joined_at__isnull": True}
    now = timezone.now()
    assert leg_transition(leg, "joined_after_end", now=now, fields={"joined_at": now}, guard=guard)
    assert not leg_transition(leg, "joined_after_end", now=now, fields={"joined_at": now}, guard=guard)
    stored = CallLeg.objects.get(pk=leg.pk)
    assert (stored.state, stored.ended_at, stored.joined_at, stored.end_reason) == ("left", ended, now, "call_ended")


def test_the_call_ending_takes_only_its_live_legs(call, tablet, desktop):
    dialling, joined, failed = leg_of(call, tablet[0]), leg_of(call, desktop[0], LegState.JOINED), \
        leg_of(call, None, LegState.FAILED)
    assert legs_transition(call, "call_ended", now=timezone.now(), reason="call_ended") == 2
    states = dict(CallLeg.objects.values_list("pk", "state"))
    assert (states[dialling.pk], states[joined.pk], states[failed.pk]) == ("left", "left", "failed")


def test_a_pull_ends_with_its_deadline_cleared_and_fails_from_either_open_state(call, tablet):
    now = timezone.now()
    for state in (PullState.AWAITING_APPROVAL, PullState.APPROVED):
        pull = Pull.objects.create(call=call, requested_by=tablet[0], state=state, created_at=now,
                                   expires_at=now + timedelta(seconds=30))
        assert pull_transition(pull, "failed", now=now, fields={"reason": "timeout"},
                               step=Step("pull_failed", tablet[0].pk, {"pull": str(pull.pk), "reason": "timeout"}))
        stored = Pull.objects.get(pk=pull.pk)
        assert (stored.state, stored.ended_at, stored.expires_at, stored.reason) == ("failed", now, None, "timeout")
        assert not pull_transition(pull, "approved", now=now)
    assert [event for event, _ in events(call)] == ["pull_failed", "pull_failed"]


def test_an_approved_pull_keeps_its_new_deadline(call, tablet):
    now = timezone.now()
    pull = Pull.objects.create(call=call, requested_by=tablet[0], state=PullState.AWAITING_APPROVAL, created_at=now)
    deadline = now + timedelta(seconds=40)
    assert pull_transition(pull, "approved", now=now, fields={"decided_at": now, "expires_at": deadline})
    stored = Pull.objects.get(pk=pull.pk)
    assert (stored.state, stored.expires_at, stored.ended_at) == ("approved", deadline, None)
    assert not pull_transition(pull, "denied", now=now)
