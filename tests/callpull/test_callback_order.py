"""Callbacks in any order, more than once, late (docs/MOVING.md, "Callbacks: order,
repeats, lateness").

One call, connected on the tablet (a `client` target), pulled to the desktop (a `sip`
target) and hung up, by the caller or by the desktop holding it. Every callback the
provider sends for that call is posted, signed, through the real webhook views: each
leg's status callbacks (initiated, ringing, answered, completed), the conference's
events (participant-join and -leave with ParticipantLabel = our leg id, the caller's
own join and leave, conference-start, conference-end), the caller's status callback
and its `<Dial>` action. Hypothesis delivers them in any order Twilio could, some of
them more than once, with reconciliation (the fake provider answering what has really
ended by then) run in between; the call must end as it does when they come in their
natural order, with the same legs' states and one timeline entry per real event.

What Twilio could do: a callback never comes before what caused it happened. The
tablet's callbacks follow the forwarded call (that dialled it); the pull is requested
once the call is connected; the desktop's callbacks follow the pull; the hang-up
happens after the pull (the desktop had joined by then); the tablet leaves once we removed it (or with the conference,
when the caller hung up); the caller's call ends when the caller hangs up or when we
hung it up. Within those limits the status and conference streams interleave freely,
and a callback that failed and was retried comes after the ones sent after it.
"""

from collections import Counter

import pytest
from django.core.cache import cache
from django.db import transaction
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from callpull import sweeper
from callpull.models import Call, CallLeg, Pull, TimelineEntry
from tests.callpull.conftest import conference_sid, forward, report, signed_post

pytestmark = pytest.mark.django_db

CALLER_SID = "CA" + "c" * 32
DURATION = "42"  # seconds the legs and the caller talked: Twilio sends CallDuration with `completed`

# The order they come in when nothing is late, retried or reordered.
NATURAL = {
    "caller": ["T.initiated", "T.ringing", "T.answered", "caller.join", "T.join", "conference.start", "pull",
               "D.initiated", "D.ringing", "D.answered", "D.join", "T.leave", "T.completed", "hang-up",
               "caller.leave", "D.leave", "conference.end", "dial.action", "D.completed", "caller.completed"],
    "holder": ["T.initiated", "T.ringing", "T.answered", "caller.join", "T.join", "conference.start", "pull",
               "D.initiated", "D.ringing", "D.answered", "D.join", "T.leave", "T.completed", "hang-up",
               "D.leave", "D.completed", "caller.leave", "conference.end", "dial.action", "caller.completed"],
}
# Not callbacks: the desktop asks for the call (an API request), and somebody hangs up
# (at the provider: only its callbacks reach us).
MARKERS = {"pull", "hang-up"}
STATUS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress", "completed": "completed"}


class World:
    """One call and what the provider has really done so far."""

    def __init__(self, *, fake, hung_up_by, handset_api, tablet_api, desktop_api, line, devices):
        self.fake, self.hung_up_by, self.desktop_api = fake, hung_up_by, desktop_api
        self.names = {device.pk: name for name, device in devices.items()}
        fake.actions.clear()
        fake.sids.clear()
        fake.statuses.clear()
        cache.clear()
        self.hooks = APIClient()
        self.call_id = report(handset_api, line).json()["call"]["id"]
        assert tablet_api.post(f"/api/v1/calls/{self.call_id}/answer").status_code == 200
        assert forward(self.hooks, sid=CALLER_SID, to=line.server_number.number).status_code == 200
        tablet_leg = CallLeg.objects.get(call_id=self.call_id)
        self.labels = {"T": str(tablet_leg.pk)}
        self.sids = {"T": fake.sids[str(tablet_leg.pk)]}
        self.done: Counter = Counter()  # deliveries (and markers) so far
        self.sent: dict[str, dict] = {}  # a callback's parameters, the same when it is retried
        self.sequence = 0

    # What has happened at the provider -------------------------------------------------

    def _asked(self, kind: str, sid: str | None) -> bool:
        return sid is not None and any(action[0] == kind and sid in action for action in self.fake.actions)

    def tablet_gone(self) -> bool:
        return self._asked("remove", self.sids["T"]) or (self.hung_up_by == "caller" and self.done["hang-up"] > 0)

    def caller_gone(self) -> bool:
        if self.hung_up_by == "caller":
            return self.done["hang-up"] > 0
        return self._asked("hangup", CALLER_SID)

    def ready(self, name: str) -> bool:
        leg, _, what = name.partition(".")
        if name == "pull":
            return self.done["T.join"] > 0
        if name in ("hang-up", "reconcile"):
            return self.done["pull"] > 0
        if leg == "T" and what in ("leave", "completed"):
            return self.tablet_gone()
        if leg == "D":
            return self.done["hang-up"] > 0 if what in ("leave", "completed") else self.done["pull"] > 0
        if name in ("caller.leave", "conference.end", "dial.action", "caller.completed"):
            return self.caller_gone()
        return True  # the tablet's dialling, the caller's join and the conference's start

    def _sync_provider(self) -> None:
        """What call_status answers: what has ended at the provider by now."""
        ended = {"T": self.tablet_gone(), "D": self.done["hang-up"] > 0}
        for leg, gone in ended.items():
            if gone and leg in self.sids:
                self.fake.statuses[self.sids[leg]] = "completed"
        if self.caller_gone():
            self.fake.statuses[CALLER_SID] = "completed"

    # Deliveries -------------------------------------------------------------------------

    def step(self, name: str) -> None:
        self._sync_provider()
        if name == "pull":
            response = self.desktop_api.post(f"/api/v1/calls/{self.call_id}/pull")
            assert response.status_code == 202, response.content
            desktop_leg = CallLeg.objects.get(call_id=self.call_id, device__name="Desktop")
            self.labels["D"] = str(desktop_leg.pk)
            self.sids["D"] = self.fake.sids[str(desktop_leg.pk)]
        elif name == "reconcile":
            sweeper.call_reconcile(self.call_id)
        elif name != "hang-up":
            path, params = self.sent.get(name) or self._callback(name)
            self.sent[name] = (path, params)
            response = signed_post(self.hooks, path, params)
            assert response.status_code in (200, 204), (name, response.status_code, response.content)
        self.done[name] += 1
        self._sync_provider()

    def _callback(self, name: str) -> tuple[str, dict]:
        leg, _, what = name.partition(".")
        self.sequence += 1
        if leg in ("T", "D") and what in STATUS:
            params = {"AccountSid": "AC" + "5" * 32, "CallSid": self.sids[leg], "CallStatus": STATUS[what],
                      "Direction": "outbound-api", "CallbackSource": "call-progress-events",
                      "SequenceNumber": str(self.sequence)}
            if what == "completed":
                params["CallDuration"] = DURATION
            return f"/telephony/twilio/status?call={self.call_id}&leg={self.labels[leg]}", params
        if name == "caller.completed":
            return "/telephony/twilio/status", {"AccountSid": "AC" + "5" * 32, "CallSid": CALLER_SID,
                                                "CallStatus": "completed", "CallDuration": DURATION,
                                                "Direction": "inbound"}
        if name == "dial.action":
            return f"/telephony/twilio/dial-status?call={self.call_id}", {
                "AccountSid": "AC" + "5" * 32, "CallSid": CALLER_SID, "DialCallStatus": "answered",
                "CallStatus": "completed"}
        params = {"AccountSid": "AC" + "5" * 32, "ConferenceSid": conference_sid(self.call_id),
                  "FriendlyName": f"callpull-{self.call_id}", "SequenceNumber": str(self.sequence)}
        if leg == "conference":
            params["StatusCallbackEvent"] = f"conference-{what}"
            if what == "end":
                params.update(ReasonConferenceEnded="participant-with-end-conference-on-exit-left",
                              CallSidEndingConference=CALLER_SID)
        else:
            params.update(StatusCallbackEvent=f"participant-{what}",
                          CallSid=CALLER_SID if leg == "caller" else self.sids[leg])
            if leg != "caller":
                params["ParticipantLabel"] = self.labels[leg]
            if what == "leave":
                hung_up = (leg == "caller") or (leg == "D" and self.hung_up_by == "holder")
                removed = leg == "T" and self._asked("remove", self.sids["T"])
                params["ReasonParticipantLeft"] = "participant_hung_up" if hung_up else \
                    "participant_updated_via_api" if removed else "moderator_ended_conference"
                params["ParticipantCallStatus"] = "completed" if hung_up else "in-progress"
        return f"/telephony/twilio/conference?call={self.call_id}", params

    # The outcome ------------------------------------------------------------------------

    def outcome(self) -> dict:
        call = Call.objects.get(pk=self.call_id)
        return {
            "state": call.state,
            "end_reason": call.end_reason,
            "held_by": self.names.get(call.held_by_id),
            "legs": sorted((self.names.get(leg.device_id), leg.role, leg.state, leg.joined_at is not None)
                           for leg in CallLeg.objects.filter(call=call)),
            "pulls": sorted(Pull.objects.filter(call=call).values_list("state", flat=True)),
            "timeline": Counter((entry.event, self.names.get(entry.device_id))
                                for entry in TimelineEntry.objects.filter(call=call)),
        }


def play(world: World, order: list[str]) -> dict:
    for name in order:
        assert world.ready(name), f"{name} cannot happen yet"
        world.step(name)
    return world.outcome()


def shuffled(world: World, data, *, retries: int, reconciliations: int) -> list[str]:
    """Deliver everything in an order hypothesis picks among those Twilio could send:
    `retries` callbacks sent again some time after they first came, `reconciliations`
    sweeps asking the provider in between."""
    pending = list(NATURAL[world.hung_up_by]) + ["reconcile"] * reconciliations
    order = []
    while pending:
        ready = sorted({name for name in pending if world.ready(name)})
        # Stuck: what would cause the rest never happened (the tablet was never removed,
        # the caller never hung up), so the call is left as it should not be.
        assert ready, f"after {order} the backend never caused {pending}"
        name = data.draw(st.sampled_from(ready), label="next")
        pending.remove(name)
        world.step(name)
        order.append(name)
        if retries and name not in MARKERS | {"reconcile"} and data.draw(st.booleans(), label="retried"):
            retries -= 1
            pending.append(name)
    return order


@pytest.fixture
def setup(fake_provider, handset, handset_api, tablet, tablet_api, desktop, desktop_api, line):
    def world(hung_up_by):
        return World(fake=fake_provider, hung_up_by=hung_up_by, handset_api=handset_api, tablet_api=tablet_api,
                     desktop_api=desktop_api, line=line,
                     devices={"handset": handset[0], "tablet": tablet[0], "desktop": desktop[0]})
    return world


def rolled_back(fn):
    with transaction.atomic():
        try:
            return fn()
        finally:
            transaction.set_rollback(True)


@pytest.mark.parametrize("hung_up_by", ["caller", "holder"])
def test_callbacks_in_any_order_repeated_or_late_end_the_call_the_same_way(setup, hung_up_by):
    natural = rolled_back(lambda: play(setup(hung_up_by), NATURAL[hung_up_by]))
    assert natural["state"] == "completed" and natural["end_reason"] == "completed"
    assert natural["held_by"] == "desktop" and natural["pulls"] == ["completed"]
    # Who hung up, as the timeline tells it: the caller, or the desktop that held the call.
    ends = {entry for entry in natural["timeline"] if entry[0] in ("caller_hung_up", "ended", "leg_left")}
    assert ends == ({("caller_hung_up", None)} if hung_up_by == "caller" else
                    {("leg_left", "desktop"), ("ended", "desktop")})
    assert all(count == 1 for count in natural["timeline"].values()), natural["timeline"]

    # No shrinking: a failure names the whole order it delivered, and shrinking one
    # takes minutes (each example posts some 25 callbacks).
    @hsettings(max_examples=50, deadline=None, derandomize=True, database=None,
               phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(data=st.data(), retries=st.integers(0, 5), reconciliations=st.integers(0, 2))
    def any_order(data, retries, reconciliations):
        def run():
            world = setup(hung_up_by)
            order = shuffled(world, data, retries=retries, reconciliations=reconciliations)
            outcome = world.outcome()
            assert outcome == natural, f"delivered {order}"
        rolled_back(run)

    any_order()
