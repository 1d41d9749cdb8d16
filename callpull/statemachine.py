"""The states of a call, of its legs and of its pulls, and the only ways between them.

Each transition is one guarded UPDATE (`WHERE id = … AND state IN <sources>`), so
two requests racing for the same call (two devices answering, a webhook and the
sweeper) yield exactly one winner on SQLite and PostgreSQL alike, and the winner
writes the timeline entry. Calls: TRANSITIONS and `transition`; legs (CallLeg):
LEG_TRANSITIONS and `leg_transition` (`legs_transition` for all legs of a call);
pulls: PULL_TRANSITIONS and `pull_transition`.
"""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from callpull.models import PULL_FINAL_STATES, TERMINAL_STATES, Call, CallLeg, Pull, TimelineEntry
from callpull.models import CallState as S
from callpull.models import LegState as L
from callpull.models import PullState as P

# transition name → {source state: target state}
TRANSITIONS: dict[str, dict[str, str]] = {
    "answer": {S.RINGING: S.ANSWERING, S.FORWARDED: S.FORWARDED},  # FORWARDED: held, nobody had answered
    "forwarded_call_arrived": {S.RINGING: S.FORWARDED, S.ANSWERING: S.FORWARDED},
    "device_connected": {S.FORWARDED: S.CONNECTED},
    "hung_up": {S.CONNECTED: S.COMPLETED, S.FORWARDED: S.COMPLETED},  # FORWARDED: answered, callback lost
    "caller_hung_up": {S.RINGING: S.MISSED, S.ANSWERING: S.MISSED, S.FORWARDED: S.MISSED,
                       S.CONNECTED: S.COMPLETED},
    "ring_timeout": {S.RINGING: S.MISSED, S.FORWARDED: S.MISSED},
    "forward_timeout": {S.RINGING: S.FAILED, S.ANSWERING: S.FAILED},
    "dial_unanswered": {S.FORWARDED: S.MISSED},
    "dial_failed": {S.FORWARDED: S.FAILED},
    "declined": {S.RINGING: S.DECLINED, S.FORWARDED: S.DECLINED},
    "answered_on_handset": {S.RINGING: S.ANSWERED_ON_HANDSET, S.ANSWERING: S.ANSWERED_ON_HANDSET},
    "reject_failed": {S.RINGING: S.FAILED, S.ANSWERING: S.FAILED},
    # The device holding the call was revoked: its leg is gone, the caller waits on hold
    # (held_by cleared, a deadline set) for another device of the user to pull the call.
    "holder_revoked": {S.CONNECTED: S.CONNECTED},
    # Another device took the call on hold (its pull completed): held_by set, deadline cleared.
    "holder_restored": {S.CONNECTED: S.CONNECTED},
    # Nobody took the call on hold within HOLDER_LOST_HOLD_SECONDS: the caller is let go.
    "holder_timeout": {S.CONNECTED: S.COMPLETED},
}

PENDING_STATES = frozenset({S.RINGING, S.ANSWERING})  # waiting for the forwarded call


@dataclass(frozen=True)
class Step:
    """What a transition wrote on the timeline."""

    event: str
    device_id: object = None
    detail: dict | None = None


def transition(call: Call, name: str, *, now: datetime, step: Step, fields: dict | None = None,
               guard: dict | None = None, more_steps: tuple[Step, ...] = ()) -> bool:
    """Move `call` along `name` if its state allows; True when this caller won.

    `fields` are written in the same UPDATE; `guard` adds conditions to it (for
    example `answered_by=None`). A terminal target stamps ended_at and clears the
    deadline. The winner writes `step` and then `more_steps` on the timeline, in
    the same transaction. On success `call` is updated in place.
    """
    routes = TRANSITIONS[name]
    sources = sorted(routes, key=lambda state: state != call.state)  # the known state first
    for source in sources:
        target = routes[source]
        values = {"state": target, **(fields or {})}
        if target in TERMINAL_STATES:
            values.setdefault("ended_at", now)
            values.setdefault("end_reason", name)
            values["expires_at"] = None
        with transaction.atomic():
            won = Call.objects.filter(pk=call.pk, state=source, **(guard or {})).update(**values)
            if won and more_steps:
                TimelineEntry.objects.bulk_create([_entry(call, now, each) for each in (step, *more_steps)])
            elif won:
                _entry(call, now, step).save(force_insert=True)
        if won:
            for key, value in values.items():
                setattr(call, key, value)
            return True
    return False


def _entry(call: Call, now: datetime, step: Step) -> TimelineEntry:
    return TimelineEntry(call=call, at=now, event=step.event, device_id=step.device_id, detail=step.detail or {})


def _entry_of(call_id, now: datetime, step: Step) -> TimelineEntry:
    return TimelineEntry(call_id=call_id, at=now, event=step.event, device_id=step.device_id, detail=step.detail or {})


def record(call: Call, *, now: datetime, step: Step) -> None:
    """A timeline entry for something that happened without changing the state."""
    TimelineEntry.objects.create(call=call, at=now, event=step.event, device_id=step.device_id,
                                 detail=step.detail or {})


# Legs ------------------------------------------------------------------------------

# transition name → {source state: target state}. A leg that ends (left, failed) gets
# ended_at; its end_reason is the transition's `reason`.
LEG_TRANSITIONS: dict[str, dict[str, str]] = {
    "joined": {L.DIALING: L.JOINED},  # its participant-join, or a callback that proves it
    # Its join heard after the call ended under it (the leg left with the call, never
    # having joined): only joined_at is written, the leg stays left.
    "joined_after_end": {L.LEFT: L.LEFT},
    "failed": {L.DIALING: L.FAILED},  # never joined: unanswered, busy, refused, no callback, a dial-in let go
    "hung_up_dialling": {L.DIALING: L.LEFT},  # taken out before it joined: its own call is hung up
    "removed": {L.JOINED: L.LEFT},  # taken out of the conference by us
    "left": {L.JOINED: L.LEFT},  # left the conference on its own
    "call_ended": {L.DIALING: L.LEFT, L.JOINED: L.LEFT},  # the call ended and took it along
}

LEG_ENDED_STATES = frozenset({L.LEFT, L.FAILED})


def _leg_values(name: str, source: str, *, now: datetime, reason: str | None, fields: dict | None) -> dict:
    target = LEG_TRANSITIONS[name][source]
    values = {"state": target, **(fields or {})}
    if target in LEG_ENDED_STATES and source not in LEG_ENDED_STATES:
        values.setdefault("ended_at", now)
    if reason is not None:
        values["end_reason"] = reason
    return values


def _by_target(routes: dict[str, str], known: str | None) -> list[tuple[str, list[str]]]:
    """The routes grouped by target state, the known state's group first: one UPDATE per
    target (one for every leg and pull transition)."""
    groups: dict[str, list[str]] = {}
    for source in sorted(routes, key=lambda state: state != known):
        groups.setdefault(routes[source], []).append(source)
    return list(groups.items())


def _guarded(model, obj, routes: dict[str, str], values_for, *, call_id, now: datetime, guard: dict | None,
             step: Step | None) -> bool:
    """The one guarded UPDATE of a leg or pull transition (see `leg_transition`)."""
    for _, sources in _by_target(routes, obj.state):
        values = values_for(sources[0])
        guarded = model.objects.filter(pk=obj.pk, state__in=sources, **(guard or {}))
        if step is None:
            won = guarded.update(**values)
        else:
            with transaction.atomic():
                won = guarded.update(**values)
                if won:
                    _entry_of(call_id, now, step).save(force_insert=True)
        if won:
            for key, value in values.items():
                setattr(obj, key, value)
            return True
    return False


def leg_transition(leg: CallLeg, name: str, *, now: datetime, reason: str | None = None, fields: dict | None = None,
                   guard: dict | None = None, step: Step | None = None) -> bool:
    """Move `leg` along `name` (LEG_TRANSITIONS) if its state allows; True when this caller won.

    `reason` becomes its end_reason, `fields` are written in the same UPDATE, `guard` adds
    conditions to it. The winner writes `step` (if any) on the call's timeline, in the same
    transaction. On success `leg` is updated in place."""
    return _guarded(CallLeg, leg, LEG_TRANSITIONS[name],
                    lambda source: _leg_values(name, source, now=now, reason=reason, fields=fields),
                    call_id=leg.call_id, now=now, guard=guard, step=step)


def legs_transition(call: Call, name: str, *, now: datetime, reason: str | None = None) -> int:
    """Move every leg of `call` that `name` applies to (one UPDATE per target state, no
    timeline entry: the call's own step says why); returns how many moved."""
    moved = 0
    for _, sources in _by_target(LEG_TRANSITIONS[name], None):
        values = _leg_values(name, sources[0], now=now, reason=reason, fields=None)
        moved += CallLeg.objects.filter(call_id=call.pk, state__in=sources).update(**values)
    return moved


# Pulls -----------------------------------------------------------------------------

# transition name → {source state: target state}. A pull that ends (denied, completed,
# failed) gets ended_at and loses its deadline.
PULL_TRANSITIONS: dict[str, dict[str, str]] = {
    "approved": {P.AWAITING_APPROVAL: P.APPROVED},  # by its holder, or at once when the holder was revoked
    "denied": {P.AWAITING_APPROVAL: P.DENIED},  # by its holder, or nobody decided in time
    "completed": {P.APPROVED: P.COMPLETED},  # the new device's leg joined
    "failed": {P.AWAITING_APPROVAL: P.FAILED, P.APPROVED: P.FAILED},  # its leg failed, timed out, requester revoked
}


def pull_transition(pull: Pull, name: str, *, now: datetime, fields: dict | None = None,
                    step: Step | None = None) -> bool:
    """Move `pull` along `name` (PULL_TRANSITIONS) if its state allows; True when this
    caller won. `fields` are written in the same UPDATE; the winner writes `step` (if any)
    on the call's timeline in the same transaction. On success `pull` is updated in place."""
    def values_for(source: str) -> dict:
        target = PULL_TRANSITIONS[name][source]
        values = {"state": target, **(fields or {})}
        if target in PULL_FINAL_STATES:
            values.setdefault("ended_at", now)
            values["expires_at"] = None
        return values

    return _guarded(Pull, pull, PULL_TRANSITIONS[name], values_for, call_id=pull.call_id, now=now,
                    guard=None, step=step)
