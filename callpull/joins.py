"""What a leg joining the conference does: it connects the forwarded call
(`device_connected`), completes a transfer (`transfer_completed`) or completes a
pull (`pull_completed`: the old device is dropped or muted). Above callpull.legs
and callpull.pulls; the telephony webhooks call `leg_joined`."""

import logging
from datetime import datetime

from callpull import actions
from callpull.events import all_devices, announce_pull, notify
from callpull.legs import hold_caller, holder_lost, leg_remove, mute_as_monitor
from callpull.models import AccountSettings, Call, CallLeg, CallState, LegRole, LegState, Pull
from callpull.pulls import open_pull
from callpull.statemachine import Step, leg_transition, pull_transition, record, transition

log = logging.getLogger(__name__)


def leg_joined(*, leg: CallLeg, now: datetime, call_sid: str | None = None) -> None:
    """The leg joined the conference: its `participant-join`, or a callback that proves
    it joined (docs/MOVING.md, "Callbacks: order, repeats, lateness"). It counts once,
    whenever it is heard: also after the call ended under it, then only on the record
    (its pull completed, `held_by`), nothing at the provider."""
    fields = {"joined_at": now}
    if call_sid:
        fields["provider_call_sid"] = call_sid
    if not leg_transition(leg, "joined", now=now, fields=fields):
        if leg_transition(leg, "joined_after_end", now=now, fields={"joined_at": now},
                          guard={"end_reason": "call_ended", "joined_at__isnull": True}):
            _joined(Call.objects.select_related("line").get(pk=leg.call_id), leg, now=now)
            return
        sid = call_sid or leg.provider_call_sid
        if sid and CallLeg.objects.filter(pk=leg.pk, state__in=[LegState.LEFT, LegState.FAILED],
                                          joined_at__isnull=True).exists():
            # Removed (or given up on) before it joined (its device was revoked, its pull
            # timed out, no callback came) and joined all the same: take it out again.
            actions.run_provider_action(actions.remove, leg.call_id, sid)
        return
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    if call.is_terminal:  # joined as the call ended: it counts, but nothing is left to carry
        leg_remove(leg, now=now, reason="call_ended")
    _joined(call, leg, now=now)


def _joined(call: Call, leg: CallLeg, *, now: datetime) -> None:
    """What a leg joining does: connect a forwarded call, complete a transfer or a pull."""
    record(call, now=now, step=Step("leg_joined", leg.device_id, {"role": leg.role}))
    if leg.role == LegRole.TRANSFER:
        transfer_completed(call, leg, now=now)
        return
    if call.state == CallState.FORWARDED:
        if transition(call, "device_connected", now=now, step=Step("connected", leg.device_id),
                      fields={"held_by_id": leg.device_id, "expires_at": None}):
            notify(call, "call.connected", all_devices(call), now=now, push=False)
        return
    pull = open_pull(leg)
    if pull is not None:
        pull_completed(pull, leg, now=now)


def transfer_completed(call: Call, leg: CallLeg, *, now: datetime) -> None:
    """The transfer target's leg joined: every other leg goes, the call is the number's now."""
    on_hold = holder_lost(call)  # the caller waits on hold since the holder was revoked
    for other in call.legs.filter(state__in=[LegState.DIALING, LegState.JOINED]).exclude(pk=leg.pk):
        leg_remove(other, now=now, reason="transferred")
    Call.objects.filter(pk=call.pk).update(held_by=None, transferred_to=leg.number, expires_at=None)
    call.held_by_id, call.transferred_to, call.expires_at = None, leg.number, None
    record(call, now=now, step=Step("transferred", detail={"number": leg.number}))
    if on_hold:
        hold_caller(call, hold=False)
    notify(call, "call.transferred", all_devices(call), now=now, push=False, number=leg.number)


def pull_completed(pull: Pull, leg: CallLeg, *, now: datetime) -> None:
    """The new device joined the conference: drop (or mute) the old one. A caller on
    hold (the holder was revoked) is taken off hold and talks to the new device."""
    if not pull_transition(pull, "completed", now=now):
        return
    call = Call.objects.select_related("line").get(pk=pull.call_id)
    if holder_lost(call):
        if not transition(call, "holder_restored", now=now,
                          step=Step("pull_completed", leg.device_id, {"pull": str(pull.pk),
                                                                      "previous": "holder_revoked"}),
                          fields={"held_by_id": leg.device_id, "expires_at": None},
                          guard={"held_by__isnull": True}, more_steps=(Step("caller_unheld", leg.device_id),)):
            call.refresh_from_db()
            if call.is_terminal:  # ended while the new device joined (the hold ran out)
                leg_remove(leg, now=now, reason="call_ended")
            return
        hold_caller(call, hold=False)
    else:
        monitor = AccountSettings.objects.filter(user_id=call.user_id, monitor_after_switch=True).exists()
        for old in call.legs.filter(state=LegState.JOINED, role=LegRole.DEVICE).exclude(pk=leg.pk):
            if monitor:
                mute_as_monitor(old, now=now)
            else:
                leg_remove(old, now=now, reason="switched")
        Call.objects.filter(pk=call.pk).update(held_by_id=leg.device_id)
        call.held_by_id = leg.device_id
        record(call, now=now, step=Step("pull_completed", leg.device_id,
                                        {"pull": str(pull.pk), "previous": "monitor" if monitor else "dropped"}))
    pull.refresh_from_db()
    pull.call = call
    announce_pull(pull, "pull.completed", now=now)
    log.info("pull completed pull=%s call=%s to=%s", pull.pk, call.pk, leg.device_id)
