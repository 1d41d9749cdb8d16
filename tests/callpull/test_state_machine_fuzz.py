"""Random sequences of what handsets, secondaries, the provider and the sweeper do
to calls, on a frozen clock that only moves forward, checking after every step
that the call lifecycle keeps its promises:

- the state is a known one and only moves along TRANSITIONS (a step may chain
  several transitions, so: the new state is reachable from the old one);
- a terminal call never changes again, and its answered_by never changes;
- once set, answered_by never changes to another device;
- the handset is never told to reject unless forwarding was active and a
  secondary device was reached (it acknowledged the ring, or it answered), or a
  device declined the call "everywhere" (the user's explicit reject);
- after every deadline has passed and a sweep runs, every call is terminal or
  connected.
"""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from rest_framework.test import APIClient

from callpull import services as line_services
from callpull.models import TERMINAL_STATES, Call, CallState, TimelineEntry
from callpull.statemachine import TRANSITIONS
from callpull.sweeper import calls_sweep
from devices.models import DeviceConnection
from notifications.fanout import delivery_ack
from notifications.models import Delivery
from tests.callpull.conftest import conference, forward, leg_status, report
from tests.conftest import client_for, make_device, make_user

pytestmark = pytest.mark.django_db

KNOWN = {state.value for state in CallState}
EDGES: dict[str, set[str]] = {}
for routes in TRANSITIONS.values():
    for source, target in routes.items():
        EDGES.setdefault(str(source), set()).add(str(target))


def reachable(source: str) -> set[str]:
    seen, todo = {source}, [source]
    while todo:
        for target in EDGES.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


class CallLifecycle(RuleBasedStateMachine):
    fake = None  # the FakeProvider, set by the test

    def __init__(self):
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self._clock_ctx = time_machine.travel(datetime(2026, 1, 5, 12, 0, tzinfo=UTC), tick=False)
        self.clock = self._clock_ctx.start()
        self.fake.actions.clear()
        self.fake.sids.clear()
        user = make_user(f"sm{uuid.uuid4().hex[:10]}")
        self.handset, token = make_device(user, kind="handset", name="Pixel")
        self.handset_api = client_for(token)
        self.secondaries = []
        for i in range(3):
            device, device_token = make_device(user, kind="tablet", name=f"Tablet {i}", connect_type="client",
                                               connect_address=f"tablet-{uuid.uuid4().hex[:8]}")
            self.secondaries.append((device, client_for(device_token)))
        line, _ = line_services.line_register(device=self.handset, number="+15551234567", region=None,
                                              now=timezone.now())
        self.line = line_services.line_forwarding_confirm(line=line, state="active",
                                                          target=line.server_number.number, now=timezone.now())
        self.webhooks = APIClient()
        self.calls: list[str] = []
        self.seen: dict[str, tuple[str, object]] = {}  # call → (state, answered_by)
        self.rejects_seen: set = set()

    def teardown(self):
        self._clock_ctx.stop()
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    # --- the world -----------------------------------------------------------

    @initialize(online=st.lists(st.integers(0, 2), max_size=3, unique=True))
    def start(self, online):
        """Some secondaries online, then the first call rings."""
        for index in online:
            self.set_online(index, True)
        self.handset_reports(False)

    @rule(active=st.booleans())
    def set_forwarding(self, active):
        self.line = line_services.line_forwarding_confirm(
            line=self.line, state="active" if active else "inactive",
            target=self.line.server_number.number if active else None, now=timezone.now())

    @rule(index=st.integers(0, 2), online=st.booleans())
    def set_online(self, index, online):
        device = self.secondaries[index][0]
        if online:
            DeviceConnection.objects.create(device=device, channel_name=f"sm.{uuid.uuid4().hex}", worker="test",
                                            connected_at=timezone.now(), seen_at=timezone.now())
        else:
            DeviceConnection.objects.filter(device=device).delete()

    @rule(policy=st.sampled_from(["on_answer", "immediate"]))
    def set_policy(self, policy):
        self.line.policy = policy
        self.line.save(update_fields=["policy"])

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), index=st.integers(0, 2))
    def secondary_acks(self, data, index):
        """The app acknowledges the newest `call.ringing` it was sent for a call."""
        call_id = data.draw(st.sampled_from(self.calls))
        device = self.secondaries[index][0]
        sent = (Delivery.objects.filter(ref=call_id, device=device, event_type="call.ringing")
                .order_by("-queued_at").first())
        if sent is not None:
            delivery_ack(event_id=sent.event_id, device=device, now=timezone.now())

    @rule(seconds=st.sampled_from([1, 5, 15, 30, 60]))
    def time_passes(self, seconds):
        self.clock.shift(timedelta(seconds=seconds))

    # --- the call ------------------------------------------------------------

    @precondition(lambda self: len(self.calls) < 3)
    @rule(repeat=st.booleans())
    def handset_reports(self, repeat):
        report_id = uuid.uuid4()
        response = report(self.handset_api, self.line, report_id=report_id)
        assert response.status_code == 201, response.content
        if repeat:
            again = report(self.handset_api, self.line, report_id=report_id)
            assert again.status_code == 200 and again.json()["call"]["id"] == response.json()["call"]["id"]
        self.calls.append(response.json()["call"]["id"])

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), index=st.integers(0, 2))
    def secondary_answers(self, data, index):
        self.secondary_answers_call(data.draw(st.sampled_from(self.calls)), index)

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), index=st.integers(0, 2), scope=st.sampled_from(["device", "everywhere"]))
    def secondary_declines(self, data, index, scope):
        call_id = data.draw(st.sampled_from(self.calls))
        response = self.secondaries[index][1].post(f"/api/v1/calls/{call_id}/decline", {"scope": scope},
                                                   format="json")
        assert response.status_code in (200, 409), response.content

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), event=st.sampled_from(["rejected", "answered", "caller_hung_up", "reject_failed"]))
    def handset_event(self, data, event):
        call_id = data.draw(st.sampled_from(self.calls))
        response = self.handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": event},
                                         format="json")
        assert response.status_code in (200, 409), response.content

    @precondition(lambda self: self.calls)
    @rule()
    def forwarded_call_arrives(self):
        response = forward(self.webhooks, sid="CA" + uuid.uuid4().hex, to=self.line.server_number.number)
        assert response.status_code == 200, response.content

    @precondition(lambda self: self.calls and self.fake.sids)
    @rule(data=st.data(), event=st.sampled_from(["participant-join", "participant-leave"]))
    def conference_event(self, data, event):
        call_id = data.draw(st.sampled_from(self.calls))
        label = data.draw(st.sampled_from(sorted(self.fake.sids)))
        response = conference(self.webhooks, call_id, event, label=label, sid=self.fake.sids[label])
        assert response.status_code < 500, response.content

    @precondition(lambda self: self.calls and self.fake.sids)
    @rule(data=st.data(), status=st.sampled_from(["no-answer", "busy", "failed", "completed"]))
    def leg_callback(self, data, status):
        call_id = data.draw(st.sampled_from(self.calls))
        label = data.draw(st.sampled_from(sorted(self.fake.sids)))
        response = leg_status(self.webhooks, call_id, label, status, sid=self.fake.sids[label])
        assert response.status_code < 500, response.content

    @precondition(lambda self: self.calls)
    @rule(index=st.integers(0, 2))
    def the_usual_path(self, index):
        """A secondary answers the newest call, the forwarded call arrives, its leg joins."""
        call_id = self.calls[-1]
        self.secondary_answers_call(call_id, index)
        forward(self.webhooks, sid="CA" + uuid.uuid4().hex, to=self.line.server_number.number)
        if self.fake.sids:
            label = list(self.fake.sids)[-1]
            conference(self.webhooks, call_id, "participant-join", label=label, sid=self.fake.sids[label])

    def secondary_answers_call(self, call_id, index):
        response = self.secondaries[index][1].post(f"/api/v1/calls/{call_id}/answer")
        assert response.status_code in (200, 409), response.content

    @rule()
    def sweep(self):
        calls_sweep(now=timezone.now())

    # --- what must always hold -------------------------------------------------

    @invariant()
    def lifecycle_holds(self):
        secondary_ids = [device.pk for device, _ in self.secondaries]
        for call in Call.objects.filter(pk__in=self.calls):
            key = str(call.pk)
            assert call.state in KNOWN, call.state
            if key in self.seen:
                before, answered_by = self.seen[key]
                if before in TERMINAL_STATES:
                    assert call.state == before, f"terminal call moved {before} → {call.state}"
                assert call.state in reachable(before), f"illegal {before} → {call.state}"
                if answered_by is not None:
                    assert call.answered_by_id == answered_by, "answered_by changed"
            self.seen[key] = (call.state, call.answered_by_id)
            for entry in TimelineEntry.objects.filter(call=call, event="reject_instructed"):
                if entry.pk in self.rejects_seen:
                    continue
                self.rejects_seen.add(entry.pk)
                assert self.line.forwarding_state == "active", "reject while forwarding was not active"
                # Reached: a secondary acknowledged the ring, or it answered; or the user declined
                # "everywhere" from a device (an explicit "reject it", the contract's decline scope).
                acked = Delivery.objects.filter(ref=call.pk, event_type="call.ringing", device_id__in=secondary_ids,
                                                delivered_at__isnull=False).exists()
                reached = acked or call.answered_by_id or entry.detail.get("reason") == "declined"
                assert reached, "reject although no secondary device was reached"

    def check_deadlines(self):
        """Every deadline passed, the sweeper ran: nothing is left pending."""
        self.clock.shift(timedelta(seconds=settings.CALL_RING_SECONDS + settings.CALL_FORWARD_WAIT_SECONDS
                                   + settings.CALL_MATCH_WINDOW_SECONDS + 600))
        calls_sweep(now=timezone.now())
        for call in Call.objects.filter(pk__in=self.calls):
            assert call.state in TERMINAL_STATES or call.state == CallState.CONNECTED, \
                f"call {call.pk} still {call.state} after its deadlines"



def test_call_lifecycle_state_machine(fake_provider):
    CallLifecycle.fake = fake_provider

    class Run(CallLifecycle):
        def teardown(self):
            try:
                self.check_deadlines()
                self.lifecycle_holds()
            finally:
                super().teardown()

    run_state_machine_as_test(Run, settings=hsettings(
        max_examples=50, stateful_step_count=30, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck)))
