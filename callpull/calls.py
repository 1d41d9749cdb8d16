"""The ring flow: a handset reports a ringing call, the user's other devices ring,
one answers, the handset is told to reject so the carrier forwards the call to
our server number, and the provider connects it (callpull.telephony).

Rules that protect users, enforced here:
- the handset is told to reject only when forwarding on the line is `active` and
  at least one secondary device was reached (it acknowledged the `call.ringing`
  frame, or FCM accepted a push for it, or it answered), never before;
- on a line forwarded on no answer but not on busy, the secondaries ring at once and
  the handset is never told to reject (with busy forwarding off the caller would hear
  busy): the carrier forwards the call itself after the line's timer;
- every state change is a guarded transition (callpull.statemachine);
- a call that cannot be helped rings on the handset as if we did not exist.

A call the carrier forwards with no ring report (forwarding on no answer,
unreachable, always; simultaneous ring) is made by `network_call` when the voice
webhook brings it; a report for the same ring joins it (docs/CALLS.md,
"Network-forwarded calls"). Both decide under the line's row lock: never two calls.

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
from callpull.mmi import DEFAULT_NO_ANSWER_TIMER
from callpull.models import Call, CallState, ForwardingKind, ForwardingState, Line, Policy, TimelineEntry
from callpull.representations import call_timeline
from callpull.statemachine import PENDING_STATES, Step, record, transition
from callpull.verification import require_verified_target
from devices.errors import ServiceError, not_found, one_or_not_found
from devices.models import Device, DeviceKind
from devices.phone import to_e164
from notifications import metrics
from notifications.fanout import Outgoing, any_receipt, fanout_prepare, fanout_send, pushable, with_sockets
from notifications.models import Delivery

log = logging.getLogger(__name__)

KEEP_RINGING = "keep_ringing"
# A report joining a call the network forwarded first: the handset keeps ringing.
FORWARDED_BY_NETWORK = "forwarded_by_network"
# A report on a line forwarded on no answer but not on busy: the secondaries ring, the
# handset keeps ringing and the carrier forwards the call after the line's timer.
FORWARDED_ON_NO_ANSWER = "forwarded_on_no_answer"
# A network-forwarded call of a line with several network kinds active: which one is unknown.
NETWORK = "network"
# The states of a network-forwarded call a late ring report joins (any before its end).
NETWORK_JOINABLE = (CallState.FORWARDED, CallState.CONNECTED)
REJECT = "reject"
AWAITING_DELIVERY = "awaiting_delivery"


@dataclass(frozen=True)
class Instruction:
    action: str
    reason: str = ""

    def to_dict(self) -> dict:
        return {"action": self.action, "reason": self.reason} if self.reason else {"action": self.action}


# Lookups ---------------------------------------------------------------------

def _line_for(*, user_id, ref: str, lock: bool = False) -> Line:
    # Unique either way: no ordering, no LIMIT to plan.
    lines = Line.objects.filter(user_id=user_id).order_by()
    if lock:  # the line's row lock (on SQLite the IMMEDIATE transaction's write lock): see call_report
        lines = lines.select_for_update()
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


def forwards_on_no_answer(line: Line) -> bool:
    """Whether a ring on `line` reaches the server number without the handset rejecting
    it: busy forwarding is not active but forwarding on no answer is, so the carrier
    forwards the call itself once the line's timer ran out."""
    return line.forwarding_state != ForwardingState.ACTIVE and line.no_answer_state == ForwardingState.ACTIVE


def no_answer_timer(line: Line) -> int:
    """The line's no-answer timer T in seconds (3GPP TS 22.030), the default when unknown."""
    return line.no_answer_timer or DEFAULT_NO_ANSWER_TIMER


def _ring_window(line: Line) -> int:
    """How long a reported call rings before it is missed: CALL_RING_SECONDS, and on a line
    forwarded on no answer at least until the carrier's forward is due (T) plus
    CALL_FORWARD_WAIT_SECONDS, so that the forward finds the call still pending."""
    if forwards_on_no_answer(line):
        return max(settings.CALL_RING_SECONDS, no_answer_timer(line) + settings.CALL_FORWARD_WAIT_SECONDS)
    return settings.CALL_RING_SECONDS


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
    # The line is read under its row lock: a network-forwarded call for the same ring
    # (calls.network_call, which takes the same lock) is either seen here, and joined,
    # or waits for this report's call and is matched to it: never two calls.
    try:
        with transaction.atomic():
            line_obj = _line_for(user_id=device.user_id, ref=line, lock=True)
            caller_e164 = to_e164(caller, line_obj.region or None, field="caller") if caller else ""
            joined = _join_network_call(line_obj, device=device, report_id=report_id, caller=caller_e164,
                                        now=now) if line_obj.network_kinds_active() else None
            if joined is None:
                call = Call.objects.create(
                    user_id=device.user_id, line=line_obj, report_id=report_id, reported_by=device,
                    caller=caller_e164, caller_name=(caller_name or "")[:100], policy=line_obj.policy,
                    forwarding_kind=ForwardingKind.NO_ANSWER if forwards_on_no_answer(line_obj)
                    else ForwardingKind.BUSY,
                    created_at=now, expires_at=now + timedelta(seconds=_ring_window(line_obj)),
                )
                reported = Step("reported", device.pk, {"caller": caller_e164 or None})
                record(call, now=now, step=reported)
                decided, outgoing = _ring_prepare(call, now=now)
    except ServiceError:
        existing = _reported(device=device, report_id=report_id)
        if existing is None:
            raise
        return Report(existing, _finish_report(existing), False)
    except IntegrityError:  # the same report again, or concurrently
        existing = _reported(device=device, report_id=report_id)
        if existing is None:
            raise
        return Report(existing, _finish_report(existing), False)
    if joined is not None:
        log.info("call reported after the network forwarded it: joined call=%s line=%s", joined.pk, line_obj.pk)
        return Report(joined, instruction_of(joined), False)
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


def _join_network_call(line: Line, *, device: Device, report_id, caller: str, now: datetime) -> Call | None:
    """The call the network already forwarded for this ring (same line, same caller, not
    ended, within CALL_MATCH_WINDOW_SECONDS), which this report joins: it takes the
    report's id (so that a repeat finds it) and the handset keeps ringing (the carrier
    has the call in hand: simultaneous ring). None when there is none. Called under the
    line's row lock."""
    found = (Call.objects.select_related("line")
             .filter(line=line, reported_by__isnull=True, caller=caller, state__in=NETWORK_JOINABLE,
                     created_at__gte=now - timedelta(seconds=settings.CALL_MATCH_WINDOW_SECONDS))
             .exclude(forwarding_kind=ForwardingKind.BUSY).order_by("-created_at").first())
    if found is None:
        return None
    if not Call.objects.filter(pk=found.pk, reported_by__isnull=True).update(
            reported_by=device, report_id=report_id, keep_ringing_reason=FORWARDED_BY_NETWORK):
        return None
    found.reported_by, found.report_id, found.keep_ringing_reason = device, report_id, FORWARDED_BY_NETWORK
    record(found, now=now, step=Step("reported", device.pk, {"caller": caller or None, "joined": True}))
    return found


def network_call(*, line_id, caller: str | None, call_sid: str, forwarded_from: str | None,
                 now: datetime) -> tuple[str, Call | None]:
    """A call the carrier forwarded to the line `line_id` (attributed exactly: its own
    server number, or ForwardedFrom names it) that matched no pending ring report.

    Under the line's row lock (the lock a ring report takes): ("pending", call) when a
    report's call from this caller committed meanwhile (claim it as any forwarded call);
    ("created", call) when the line accepts network forwarding (no_answer, unreachable
    or always active): the call is made on the spot, `forwarded`, the caller held, and
    every ring target rings over every transport; else ("refused", None). A retried
    webhook (same CallSid) finds its call: ("created", call), nothing rung twice."""
    try:
        with transaction.atomic():
            line = Line.objects.select_for_update().filter(pk=line_id).first()
            kinds = line.network_kinds_active() if line is not None else []
            if not kinds or _declined_before_the_forward(line, caller=caller or "", now=now):
                return "refused", None
            pending = (Call.objects.select_related("line")
                       .filter(line=line, state__in=PENDING_STATES, provider_call_sid__isnull=True,
                               caller=caller or "",
                               created_at__gte=now - timedelta(seconds=settings.CALL_MATCH_WINDOW_SECONDS))
                       .order_by("-created_at").first())
            if pending is not None:
                return "pending", pending
            call = Call.objects.create(
                user_id=line.user_id, line=line, report_id=uuid.uuid4(), reported_by=None, caller=caller or "",
                policy=line.policy, state=CallState.FORWARDED, provider_call_sid=call_sid,
                forwarding_kind=kinds[0] if len(kinds) == 1 else NETWORK, created_at=now,
                expires_at=now + timedelta(seconds=settings.CALL_RING_SECONDS))
            TimelineEntry.objects.bulk_create([
                TimelineEntry(call=call, at=now, event="forwarded_by_network",
                              detail={"kinds": kinds, "call_sid": call_sid, "forwarded_from": forwarded_from,
                                      "caller": caller or None}),
                TimelineEntry(call=call, at=now, event="caller_held")])
    except IntegrityError:  # the same CallSid, created by a concurrent retry of this webhook
        found = Call.objects.select_related("line").filter(provider_call_sid=call_sid).first()
        return ("created", found) if found is not None else ("refused", None)
    metrics.ring_created()
    log.info("network-forwarded call created call=%s line=%s kind=%s sid=%s", call.pk, line.pk,
             call.forwarding_kind, call_sid)
    notify(call, "call.ringing", ring_targets(call), now=now)
    return "created", call


def _declined_before_the_forward(line: Line, *, caller: str, now: datetime) -> bool:
    """Whether this forwarded call is the ring a device already declined everywhere: a
    reported call from `caller` on `line` that rang on the carrier's no-answer timer
    (the handset is never told to reject there, so the carrier still forwards it after
    T) and was declined, created recently enough for this to be its forward (within T +
    CALL_FORWARD_WAIT_SECONDS). Such a forward is no new call: it gets the line's
    fallback, as a declined call's forward does on busy."""
    since = now - timedelta(seconds=no_answer_timer(line) + settings.CALL_FORWARD_WAIT_SECONDS)
    return Call.objects.filter(line=line, caller=caller, state=CallState.DECLINED, reported_by__isnull=False,
                               provider_call_sid__isnull=True, keep_ringing_reason=FORWARDED_ON_NO_ANSWER,
                               created_at__gte=since).exists()


def _reported(*, device: Device, report_id) -> Call | None:
    return Call.objects.select_related("line").filter(user_id=device.user_id, report_id=report_id).first()


def _unsaved(call: Call, at: datetime, step: Step) -> TimelineEntry:
    return TimelineEntry(call=call, at=at, event=step.event, device_id=step.device_id, detail=step.detail or {})


def _ring_prepare(call: Call, *, now: datetime) -> tuple[Instruction | None, Outgoing | None]:
    """Who rings, recorded: (an instruction already decided, or what to send)."""
    on_timer = forwards_on_no_answer(call.line)
    if call.line.forwarding_state != ForwardingState.ACTIVE and not on_timer:
        # No way to bring the call to another device: leave it to the handset.
        return Instruction(KEEP_RINGING, "forwarding_not_active"), None
    targets, online = with_sockets(ring_targets_query(call), now)
    if not online and not pushable("call.ringing", targets):
        return Instruction(KEEP_RINGING, "no_reachable_device"), None
    # `immediate`: the first receipt decides. An ack within RING_ACK_WAIT_SECONDS goes
    # into this answer; a later ack, or FCM accepting a push, sends call.reject. A line
    # forwarded on no answer never has the handset reject: no receipt decides anything.
    on_accepted = (lambda device_id: _reject_if_awaiting(call.pk)) \
        if call.policy == Policy.IMMEDIATE and not on_timer else None
    outgoing = fanout_prepare(**call_event(call, "call.ringing", targets, now=now, online=online,
                                           on_fcm_accepted=on_accepted))
    return None, outgoing


def _ring_send(call: Call, outgoing: Outgoing) -> Instruction:
    on_timer = forwards_on_no_answer(call.line)
    immediate = call.policy == Policy.IMMEDIATE and not on_timer
    wait = settings.RING_ACK_WAIT_SECONDS if immediate else 0
    if wait and outgoing.result.websocket:
        _connection_back_to_pool()
    result = fanout_send(outgoing, wait_ack=wait)
    if not result.websocket and not result.pushed:
        return Instruction(KEEP_RINGING, "no_reachable_device")
    if on_timer:
        return Instruction(KEEP_RINGING, FORWARDED_ON_NO_ANSWER)
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
    on_timer = forwards_on_no_answer(call.line)
    immediate = call.policy == Policy.IMMEDIATE and not on_timer
    if call.line.forwarding_state != ForwardingState.ACTIVE and not on_timer:
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
        if on_timer:
            instruction = Instruction(KEEP_RINGING, FORWARDED_ON_NO_ANSWER)
        elif not immediate:
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
    if held:
        wait = settings.DIAL_TIMEOUT_SECONDS + 5
    elif forwards_on_no_answer(call.line):
        # No reject goes to the handset: the carrier forwards the call once the line's
        # timer T runs out (it started about when the handset began to ring, so T from
        # now is the latest it is due).
        wait = no_answer_timer(call.line) + settings.CALL_FORWARD_WAIT_SECONDS
    else:
        wait = settings.CALL_FORWARD_WAIT_SECONDS
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
        if event == "answered" and call.keep_ringing_reason == FORWARDED_BY_NETWORK:
            # A report that joined a network-forwarded call (simultaneous ring): the user
            # picked up on the handset, so the carrier hangs up (or already hung up) the
            # forwarded leg, and that ends the call. Recorded, nothing else to do.
            record(call, now=now, step=Step("handset_answered", device.pk, {"state": str(call.state)}))
            log.info("handset answered a network-forwarded call call=%s state=%s", call.pk, call.state)
            return call
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
