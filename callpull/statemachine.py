"""The call's states and the only ways between them.

Each transition is one guarded UPDATE (`WHERE id = … AND state = <source>`), so
two requests racing for the same call (two devices answering, a webhook and the
sweeper) yield exactly one winner on SQLite and PostgreSQL alike, and the winner
writes the timeline entry.
"""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from callpull.models import TERMINAL_STATES, Call, TimelineEntry
from callpull.models import CallState as S

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


def record(call: Call, *, now: datetime, step: Step) -> None:
    """A timeline entry for something that happened without changing the state."""
    TimelineEntry.objects.create(call=call, at=now, event=step.event, device_id=step.device_id,
                                 detail=step.detail or {})
