"""The ring flow: a handset reports a ringing call, the user's other devices ring,
one answers, the handset is told to reject so the carrier forwards the call to
our server number, and the provider connects it (callpull.telephony).

Rules that protect users, enforced here:
- the handset is told to reject only when forwarding on the line is `active` and
  at least one secondary device was reached (it acknowledged the `call.ringing`
  frame, or FCM accepted a push for it, or it answered), never before;
- every state change is a guarded transition (callpull.statemachine);
- a call that cannot be helped rings on the handset as if we did not exist.

Who hears about a call is callpull.events; an answered call's device is dialled
by callpull.legs; calls whose deadline passed are ended by callpull.sweeper.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from callpull import legs
from callpull.events import announce_end, call_event, handset, notify, ring_targets, ring_targets_query
from callpull.models import Call, CallState, ForwardingState, Line, Policy, TimelineEntry
from callpull.representations import call_timeline
from callpull.statemachine import PENDING_STATES, Step, record, transition
from callpull.verification import require_verified_target
from devices.errors import ServiceError, not_found, one_or_not_found
from devices.models import Device, DeviceKind
from devices.phone import to_e164
from notifications import apns, fcm, metrics
from notifications.fanout import Outgoing, any_receipt, fanout_prepare, fanout_send, with_sockets
from notifications.models import Delivery

log = logging.getLogger(__name__)

KEEP_RINGING = "keep_ringing"
REJECT = "reject"
AWAITING_DELIVERY = "awaiting_delivery"


@dataclass(frozen=True)
class Instruction:
    action: str
    reason: str = ""

    def to_dict(self) -> dict:
        return {"action": self.action, "reason": self.reason} if self.reason else {"action": self.action}


# Lookups ---------------------------------------------------------------------

def _line_for(*, user_id, ref: str) -> Line:
    # Unique either way: no ordering, no LIMIT to plan.
    lines = Line.objects.filter(user_id=user_id).order_by()
    try:
        found = list(lines.filter(pk=uuid.UUID(str(ref))))
    except ValueError:
        found = []
    if not found:
        try:
            found = list(lines.filter(number=to_e164(str(ref), field="line")))
        except ServiceError:
            found = []
    if not found:
        raise not_found("line")
    return found[0]


def call_for_user(*, user, call_id) -> Call:
    return one_or_not_found(Call.objects.select_related("line").filter(user=user), call_id, "call")


def instruction_of(call: Call) -> Instruction:
    if call.reject_sent_at is not None:
        return Instruction(REJECT)
    return Instruction(KEEP_RINGING, call.keep_ringing_reason or "policy_on_answer")


# The ring report -------------------------------------------------------------

@dataclass(frozen=True)
class Report:
    """What a ring report did: the call, what the handset does, whether this
    report created the call, and the call's timeline as this report wrote it
    (None when other requests wrote to it too: read it from the database)."""
    call: Call
    instruction: Instruction
    created: bool
    timeline: list[dict] | None = None


def call_report(*, device: Device, report_id, line: str, caller: str | None, caller_name: str,
                now: datetime) -> Report:
    """Record a ringing call, ring the secondaries, and say what the handset does.

    Idempotent on `report_id`: a repeat returns the same call and instruction
    with `created` False. The call and its delivery records are written in one
    transaction before any frame leaves, so a report cut off by the database
    either left nothing (its retry starts afresh) or rang (its retry finishes
    it: the instruction follows from the receipts so far).
    """
    # A repeat is told apart by the unique (user, report_id) constraint, not by a
    # read first: repeats are rare, and every first report would pay for that read.
    try:
        line_obj = _line_for(user_id=device.user_id, ref=line)
        caller_e164 = to_e164(caller, line_obj.region or None, field="caller") if caller else ""
    except ServiceError:
        existing = _reported(device=device, report_id=report_id)
        if existing is None:
            raise
        return Report(existing, _finish_report(existing), False)
    try:
        with transaction.atomic():
            call = Call.objects.create(
                user_id=device.user_id, line=line_obj, report_id=report_id, reported_by=device,
                caller=caller_e164, caller_name=(caller_name or "")[:100], policy=line_obj.policy,
                created_at=now, expires_at=now + timedelta(seconds=settings.CALL_RING_SECONDS),
            )
            reported = Step("reported", device.pk, {"caller": caller_e164 or None})
            record(call, now=now, step=reported)
            decided, outgoing = _ring_prepare(call, now=now)
    except IntegrityError:  # the same report again, or concurrently
        existing = _reported(device=device, report_id=report_id)
        if existing is None:
            raise
        return Report(existing, _finish_report(existing), False)
    metrics.ring_created()

    instruction = decided or _ring_send(call, outgoing)
    stored_at = timezone.now()
    instruction, step = _store_instruction(call, instruction, now=stored_at, transport="http")
    log.info("call reported call=%s line=%s policy=%s instruction=%s/%s", call.pk, line_obj.pk, call.policy,
             instruction.action, instruction.reason)
    timeline = None
    if step is not None:  # nobody else wrote to this call yet: the timeline is what this report wrote
        steps = [_unsaved(call, now, reported), _unsaved(call, stored_at, step)]
        timeline = call_timeline(call, steps=steps, deliveries=outgoing.deliveries if outgoing else [])
    return Report(call, instruction, True, timeline)


def _reported(*, device: Device, report_id) -> Call | None:
    return Call.objects.select_related("line").filter(user_id=device.user_id, report_id=report_id).first()


def _unsaved(call: Call, at: datetime, step: Step) -> TimelineEntry:
    return TimelineEntry(call=call, at=at, event=step.event, device_id=step.device_id, detail=step.detail or {})


def _ring_prepare(call: Call, *, now: datetime) -> tuple[Instruction | None, Outgoing | None]:
    """Who rings, recorded: (an instruction already decided, or what to send)."""
    if call.line.forwarding_state != ForwardingState.ACTIVE:
        # No way to bring the call to another device: leave it to the handset.
        return Instruction(KEEP_RINGING, "forwarding_not_active"), None
    targets, online = with_sockets(ring_targets_query(call), now)
    pushable = ((fcm.enabled() and any(d.fcm_token for d in targets))
                or (apns.enabled() and any(d.apns_voip_token for d in targets)))
    if not online and not pushable:
        return Instruction(KEEP_RINGING, "no_reachable_device"), None
    # `immediate`: the first receipt decides. An ack within RING_ACK_WAIT_SECONDS goes
    # into this answer; a later ack, or FCM accepting a push, sends call.reject.
    on_accepted = (lambda device_id: _reject_if_awaiting(call.pk)) if call.policy == Policy.IMMEDIATE else None
    outgoing = fanout_prepare(**call_event(call, "call.ringing", targets, now=now, online=online,
                                           on_fcm_accepted=on_accepted))
    return None, outgoing


def _ring_send(call: Call, outgoing: Outgoing) -> Instruction:
    immediate = call.policy == Policy.IMMEDIATE
    wait = settings.RING_ACK_WAIT_SECONDS if immediate else 0
    if wait and outgoing.result.websocket:
        _connection_back_to_pool()
    result = fanout_send(outgoing, wait_ack=wait)
    if not result.websocket and not result.fcm and not result.apns:
        return Instruction(KEEP_RINGING, "no_reachable_device")
    if not immediate:
        return Instruction(KEEP_RINGING, "policy_on_answer")
    if result.acked:
        return Instruction(REJECT)
    return Instruction(KEEP_RINGING, AWAITING_DELIVERY)


def _connection_back_to_pool() -> None:
    """With a connection pool (PostgreSQL), give this thread's connection back while
    the report waits for a receipt: it asks nothing of the database for up to
    RING_ACK_WAIT_SECONDS, and reports holding theirs through the wait emptied the
    pool at 50 reports/s (the requests left waiting answered 503 after
    DATABASE_POOL_TIMEOUT_SECONDS). The next query takes one from the pool again."""
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def _finish_report(call: Call) -> Instruction:
    """A repeated report. When the first one rang but could not store its
    instruction (the database went away after the frames left), decide it now from
    what was recorded; else answer what was decided."""
    if call.reject_sent_at is not None or call.keep_ringing_reason or call.state != CallState.RINGING:
        return instruction_of(call)
    immediate = call.policy == Policy.IMMEDIATE
    if call.line.forwarding_state != ForwardingState.ACTIVE:
        instruction = Instruction(KEEP_RINGING, "forwarding_not_active")
    elif not Delivery.objects.filter(ref=call.pk, event_type="call.ringing").exists():
        instruction = Instruction(KEEP_RINGING, "no_reachable_device")
    else:
        reached = any_receipt(ref=call.pk, event_type="call.ringing")
        if not reached:
            # The first attempt may have failed before or while its frames left (the
            # channel layer went away): ring the sockets again (apps de-duplicate by
            # call id; its pushes went out before the frames).
            result = notify(call, "call.ringing", ring_targets(call), now=timezone.now(), push=False,
                            wait_ack=settings.RING_ACK_WAIT_SECONDS if immediate else 0)
            reached = bool(result.acked)
        if not immediate:
            instruction = Instruction(KEEP_RINGING, "policy_on_answer")
        elif reached:
            instruction = Instruction(REJECT)
        else:
            instruction = Instruction(KEEP_RINGING, AWAITING_DELIVERY)
    instruction, _ = _store_instruction(call, instruction, now=timezone.now(), transport="http")
    log.info("call report finished on a retry call=%s instruction=%s/%s", call.pk, instruction.action,
             instruction.reason)
    return instruction


def _store_instruction(call: Call, instruction: Instruction, *, now: datetime,
                       transport: str) -> tuple[Instruction, Step | None]:
    """Store the report's instruction, once: when another request stored one first
    (a concurrent repeat), answer that one. Returns the instruction that holds, and
    the timeline step written for it when that step is the only thing written to
    the call since (else None)."""
    undecided = Call.objects.filter(pk=call.pk, reject_sent_at__isnull=True, keep_ringing_reason="")
    if instruction.action == REJECT:
        if not undecided.update(reject_sent_at=now):
            call.refresh_from_db()
            return instruction_of(call), None
        call.reject_sent_at = now
        metrics.first_receipt((now - call.created_at).total_seconds())  # a reject in the answer follows a receipt
        step = Step("reject_instructed", call.reported_by_id, {"transport": transport})
        record(call, now=now, step=step)
        return instruction, step
    if not undecided.update(keep_ringing_reason=instruction.reason):
        call.refresh_from_db()
        return instruction_of(call), None
    call.keep_ringing_reason = instruction.reason
    step = Step("keep_ringing", call.reported_by_id, {"reason": instruction.reason})
    record(call, now=now, step=step)
    if instruction.reason == AWAITING_DELIVERY and any_receipt(ref=call.pk, event_type="call.ringing"):
        # A receipt came in after the wait and before `awaiting_delivery` was stored,
        # so its handler saw nothing to do: reject now, over WebSocket and FCM.
        _reject_if_awaiting(call.pk)
        return instruction, None
    return instruction, step


def _send_reject(call: Call, *, now: datetime, reason: str) -> bool:
    """Tell the handset to reject (WebSocket and FCM), once per call, and only
    when forwarding is active. True if this call sent it."""
    if call.line.forwarding_state != ForwardingState.ACTIVE:
        return False
    won = Call.objects.filter(pk=call.pk, reject_sent_at__isnull=True).update(
        reject_sent_at=now, expires_at=now + timedelta(seconds=settings.CALL_FORWARD_WAIT_SECONDS))
    if not won:
        return False
    call.reject_sent_at = now
    result = notify(call, "call.reject", handset(call), now=now, reason=reason)
    record(call, now=timezone.now(), step=Step("reject_instructed", call.reported_by_id,
                                    {"transport": "+".join(name for name, used in (
                                        ("websocket", result.websocket), ("fcm", result.fcm)) if used) or "none",
                                     "reason": reason,
                                     "websocket": bool(result.websocket), "fcm": bool(result.fcm)}))
    return True


def _reject_if_awaiting(*call_ids) -> None:
    """`immediate`, answered `awaiting_delivery`: a secondary was reached since
    (an ack, or FCM accepted a push), so the handset may reject now."""
    now = timezone.now()
    for call in (Call.objects.select_related("line")
                 .filter(pk__in=call_ids, state=CallState.RINGING, keep_ringing_reason=AWAITING_DELIVERY,
                         reject_sent_at__isnull=True)):
        if _send_reject(call, now=now, reason="delivered"):
            metrics.first_receipt((now - call.created_at).total_seconds())
            log.info("reject sent after delivery call=%s", call.pk)


def on_deliveries_acked(sender, receipts, **kwargs) -> None:
    rung = {receipt.ref for receipt in receipts if receipt.event_type == "call.ringing" and receipt.ref}
    if rung:
        _reject_if_awaiting(*rung)


# Answer, decline, handset events ---------------------------------------------

def call_answer(*, call: Call, device: Device, now: datetime) -> Call:
    """`device` takes the call. Exactly one device wins; the others get 409."""
    if not device.connect_type:
        raise ServiceError("no_connect_target", "This device has no connect target: set `connect` on it first.")
    require_verified_target(device=device)
    if call.keep_ringing_reason == "forwarding_not_active":
        raise ServiceError("forwarding_not_active",
                           "Forwarding is not active on this line: take the call on the handset.")
    held = call.state == CallState.FORWARDED
    wait = settings.DIAL_TIMEOUT_SECONDS + 5 if held else settings.CALL_FORWARD_WAIT_SECONDS
    won = transition(call, "answer", now=now, step=Step("answered", device.pk),
                     fields={"answered_by": device, "expires_at": now + timedelta(seconds=wait)},
                     guard={"answered_by": None})
    if not won:
        call.refresh_from_db()
        if call.answered_by_id is not None:
            raise ServiceError("already_answered", "Another device already answered this call.")
        raise ServiceError("call_not_ringing", f"The call is {call.state}; it cannot be answered.")
    log.info("call answered call=%s device=%s held=%s", call.pk, device.pk, held)
    others = [d for d in ring_targets(call) if d.pk != device.pk]
    notify(call, "call.answered_elsewhere", others, now=now,
           device={"id": str(device.pk), "name": device.name, "kind": device.kind})
    if call.state == CallState.FORWARDED:  # the caller waits in the conference: dial the device in
        legs.leg_dial(call=call, now=now, role="device", device=device)
    else:
        _send_reject(call, now=now, reason="answered")
    return call


def call_decline(*, call: Call, device: Device, scope: str, now: datetime) -> Call:
    if scope == "device":
        if call.is_terminal:
            raise ServiceError("call_ended", "The call has ended.")
        record(call, now=now, step=Step("declined_on_device", device.pk))
        return call
    was_held = call.state == CallState.FORWARDED
    if not transition(call, "declined", now=now, step=Step("declined", device.pk), guard={"answered_by": None}):
        call.refresh_from_db()
        raise ServiceError("call_not_ringing", f"The call is {call.state}; it cannot be declined.")
    announce_end(call, now=now, reason="declined")
    if was_held:
        legs.release_caller(call, now=now)
    else:
        # The handset stops ringing; the carrier forwards to us and the
        # unmatched call gets the line's fallback or a polite hang-up.
        _send_reject(call, now=now, reason="declined")
    return call


def call_handset_event(*, call: Call, device: Device, event: str, now: datetime) -> Call:
    if event == "rejected":
        if call.is_terminal:
            raise ServiceError("call_ended", "The call has ended.")
        record(call, now=now, step=Step("handset_rejected", device.pk))
        # From now on the forwarded call should arrive within the forward wait.
        Call.objects.filter(pk=call.pk, state__in=PENDING_STATES, provider_call_sid__isnull=True).update(
            expires_at=now + timedelta(seconds=settings.CALL_FORWARD_WAIT_SECONDS))
        call.refresh_from_db(fields=["expires_at"])
        return call
    transitions = {"answered": "answered_on_handset", "caller_hung_up": "caller_hung_up",
                   "reject_failed": "reject_failed"}
    if not transition(call, transitions[event], now=now, step=Step(f"handset_{event}", device.pk)):
        call.refresh_from_db()
        raise ServiceError("invalid_state", f"The call is {call.state}; '{event}' does not apply.")
    if event == "answered":
        notify(call, "call.answered_elsewhere", [d for d in ring_targets(call)], now=now,
               device={"id": str(device.pk), "name": device.name, "kind": device.kind})
    else:
        announce_end(call, now=now, reason=event)
    return call


# Catching up a device that connects late --------------------------------------

def on_device_connected(sender, device: Device, **kwargs) -> None:
    """Send `call.ringing` for calls still ringing for a device that just connected."""
    if device.kind == DeviceKind.HANDSET or not device.ring_enabled:
        return
    now = timezone.now()
    ringing = (Call.objects.select_related("line")
               .filter(user_id=device.user_id, expires_at__gt=now)
               .filter(Q(state=CallState.RINGING) | Q(state=CallState.FORWARDED, answered_by__isnull=True))
               .exclude(keep_ringing_reason="forwarding_not_active")
               .exclude(timeline__event="declined_on_device", timeline__device=device))
    for call in ringing:
        notify(call, "call.ringing", [device], now=now, push=False, online={device.pk})
