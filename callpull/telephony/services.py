"""What the voice provider's webhooks do to calls.

The voice webhook answers at once and never waits for a user: a matched
forwarded call joins its own conference (callpull.legs), hearing ringback until
a device's leg joins; devices are dialled in through the provider's REST API.
Retried webhooks (same CallSid) get the same answer. A call to a server number
that is no forwarded call may be a user dialling in to take over a live call
(callpull.moves): every such caller is asked for a PIN before hearing anything
else, whoever its caller id claims to be.
"""

import logging
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlencode

import phonenumbers
from django.conf import settings
from django.core import signing
from django.db import IntegrityError, connection

from callpull import legs, moves
from callpull.calls import announce_end
from callpull.models import Call, CallLeg, CallState, LegRole, LegState, Line, Pull, PullState
from callpull.statemachine import PENDING_STATES, Step, record, transition
from callpull.telephony import provider
from devices.models import Device

log = logging.getLogger(__name__)

GOODBYE = "Sorry, this call cannot be connected right now. Goodbye."
NOTHING_TO_TAKE = "There is no call to take over right now. Goodbye."
PIN_PROMPT = "Enter your PIN, then press hash."
PIN_WRONG = "That PIN is not right."
NO_PIN = "No PIN was entered. Goodbye."
# Wrong PINs a dial-in caller may enter in one call before a polite hang-up.
PIN_TRIES = 3
# The proof that a CallSid passed the PIN (the menu's action carries it) lasts this long.
DIAL_IN_PROOF_SECONDS = 300
_PROOF_SALT = "callpull.telephony.dial-in"
# What carriers put in From when the caller id is withheld.
WITHHELD = {"", "anonymous", "restricted", "unknown", "private", "unavailable", "+266696687", "+86282452253"}


def webhook_url(name: str, **query) -> str:
    url = f"{settings.PUBLIC_BASE_URL}/telephony/twilio/{name}"
    return f"{url}?{urlencode(query)}" if query else url


def ringback_url() -> str:
    static = settings.STATIC_URL if "://" in settings.STATIC_URL else \
        f"{settings.PUBLIC_BASE_URL}/{settings.STATIC_URL.strip('/')}/"
    return f"{static}callpull/ringback.wav"


def e164_or_none(raw: str | None) -> str | None:
    if raw is None or raw.strip().lower() in WITHHELD:
        return None
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# TwiML ---------------------------------------------------------------------------

def caller_twiml(call: Call) -> str:
    """The caller waits in the call's conference, hearing ringback until a device joins."""
    return provider.twiml_conference(
        name=call.conference_name, start_on_enter=False, end_on_exit=True, wait_url=ringback_url(),
        status_url=webhook_url("conference", call=call.pk), action_url=webhook_url("dial-status", call=call.pk))


def twiml_for(call: Call) -> str:
    if call.state in (CallState.FORWARDED, CallState.CONNECTED):
        return caller_twiml(call)
    return provider.twiml_goodbye(GOODBYE)


def join_twiml(pull: Pull) -> str:
    """A device that dialled in joins the conference (and so takes the call)."""
    return provider.twiml_conference(
        name=pull.call.conference_name, start_on_enter=True, end_on_exit=False, label=str(pull.leg_id),
        status_url=webhook_url("conference", call=pull.call_id))


def _pin_prompt(*, attempt: int) -> str:
    """The same words for every caller: nothing says whether the number is registered."""
    prompt = PIN_PROMPT if attempt == 1 else f"{PIN_WRONG} {PIN_PROMPT}"
    return provider.twiml_pin(prompt=prompt, action_url=webhook_url("dial-in-pin", attempt=attempt),
                              no_input=NO_PIN)


def _proof(*, call_sid: str, device_id, now: datetime) -> str:
    """That `call_sid` entered the right PIN for `device_id`'s account, at `now`."""
    return signing.dumps({"sid": call_sid, "device": str(device_id), "at": int(now.timestamp())}, salt=_PROOF_SALT)


def _proven(proof: str | None, *, call_sid: str, device_id, now: datetime) -> bool:
    try:
        found = signing.loads(proof or "", salt=_PROOF_SALT)
    except signing.BadSignature:
        return False
    if not isinstance(found, dict) or not call_sid or found.get("sid") != call_sid or \
            found.get("device") != str(device_id) or not isinstance(found.get("at"), int):
        return False
    return 0 <= now.timestamp() - found["at"] <= DIAL_IN_PROOF_SECONDS


def _dial_in_twiml(outcome: str, detail, *, call_sid: str, now: datetime) -> str:
    """What a caller who entered the right PIN hears."""
    if outcome == "join":
        return join_twiml(detail)
    if outcome == "hold":
        return provider.twiml_hold(ringback_url=ringback_url())
    if outcome == "menu":
        device, calls = detail
        choices = " ".join(f"For the call with {_spoken(call.caller)}, press {i}." for i, call in enumerate(calls, 1))
        action = webhook_url("dial-in-choice", device=device.pk, proof=_proof(call_sid=call_sid, device_id=device.pk,
                                                                                now=now))
        return provider.twiml_menu(prompt=f"You have {len(calls)} calls. {choices}", action_url=action)
    return provider.twiml_goodbye(NOTHING_TO_TAKE)


def _spoken(number: str) -> str:
    return " ".join(number.lstrip("+")[-4:]) if number else "a withheld number"


def _unmatched(*, to: str, forwarded_from: str | None) -> str:
    line = Line.objects.filter(number=forwarded_from).first() if forwarded_from else None
    if line is not None and line.fallback_number:
        log.info("forwarded call unmatched: to fallback line=%s", line.pk)
        return provider.twiml_forward(number=line.fallback_number)
    log.info("call to %s unmatched (forwarded_from=%s): polite hang-up", to, forwarded_from)
    return provider.twiml_goodbye(GOODBYE)


# The voice webhook ---------------------------------------------------------------

# The query a burst of forwarded calls runs most, written as SQL: the ORM spent ~0.9 ms
# of CPU building, compiling and hydrating it per webhook, SQLite ~0.07 ms running it.
# It is Call.objects.filter(line__server_number__number=to, state__in=PENDING_STATES,
# provider_call_sid__isnull=True, created_at__gte=now - window), and line__number=
# forwarded_from when the carrier said, and Q(caller=caller) | Q(caller="") when the
# caller is known, newest first, five at most. Only the fields a claim needs are read.
# On SQLite the `+` keeps the planner off the unique provider_call_sid index: without
# statistics it took `IS NULL` for a near-unique lookup and read every call never
# forwarded (most of the history) instead of the line's recent pending calls through
# the (line, state, created_at) index. PostgreSQL plans from statistics (and has no
# unary + for text).
_CANDIDATES = ("SELECT c.id, c.state, c.answered_by_id, c.created_at FROM callpull_call c"
               " JOIN callpull_line l ON l.id = c.line_id JOIN callpull_servernumber s ON s.id = l.server_number_id"
               " WHERE s.number = %s AND c.state IN ({states}) AND {sid} IS NULL AND c.created_at >= %s")


def _candidates(*, to: str, caller: str | None, forwarded_from: str | None, now: datetime) -> list[Call]:
    states = sorted(str(state) for state in PENDING_STATES)
    sid = "+c.provider_call_sid" if connection.vendor == "sqlite" else "c.provider_call_sid"
    sql = _CANDIDATES.format(states=", ".join(["%s"] * len(states)), sid=sid)
    since = connection.ops.adapt_datetimefield_value(now - timedelta(seconds=settings.CALL_MATCH_WINDOW_SECONDS))
    params = [to, *states, since]
    if forwarded_from:
        sql += " AND l.number = %s"
        params.append(forwarded_from)
    if caller:
        sql += " AND (c.caller = %s OR c.caller = '')"
        params.append(caller)
    return list(Call.objects.raw(sql + " ORDER BY c.created_at DESC LIMIT 5", params))


def _known(call_sid: str, *, dialled_in: bool = True) -> str | None:
    """The answer already given to this CallSid, for a retried webhook. A device's leg
    has this CallSid only when the call was dialled in (no ForwardedFrom): a forwarded
    call's retry (`dialled_in=False`) need not look for one."""
    call = Call.objects.filter(provider_call_sid=call_sid).only("id", "state").first()
    if call is not None:
        return twiml_for(call)
    if not dialled_in:
        return None
    leg = CallLeg.objects.filter(provider_call_sid=call_sid).first()
    if leg is not None:
        pull = Pull.objects.select_related("call").filter(leg=leg).first()
        if pull is not None and pull.state == PullState.APPROVED:
            return join_twiml(pull)
        if pull is not None and pull.state == PullState.AWAITING_APPROVAL:
            return provider.twiml_hold(ringback_url=ringback_url())
        return provider.twiml_goodbye(NOTHING_TO_TAKE)
    return None


def call_arrived(*, params: dict, now: datetime) -> str:
    """A call reached a server number: the forwarded call of a pending ring, or
    a device dialling in; otherwise the line's fallback or a polite goodbye."""
    call_sid = params.get("CallSid", "")
    to = e164_or_none(params.get("To")) or ""
    forwarded_from = e164_or_none(params.get("ForwardedFrom"))
    caller = e164_or_none(params.get("From"))
    dialled_in = not forwarded_from
    if dialled_in:  # a retried dial-in must not claim a pending call: look for its leg first
        known = _known(call_sid)
        if known is not None:
            return known
    # A forwarded call's retry is found when its claim fails: the call it matched is no
    # longer pending, and claiming another one with the same CallSid breaks its uniqueness.
    for call in _candidates(to=to, caller=caller, forwarded_from=forwarded_from, now=now):
        if _claim(call, call_sid=call_sid, forwarded_from=forwarded_from, now=now):
            return caller_twiml(call)
        known = _known(call_sid, dialled_in=dialled_in)
        if known is not None:
            return known
    if not dialled_in:
        known = _known(call_sid, dialled_in=False)
        if known is not None:
            return known
    if dialled_in and caller:  # maybe a user dialling in: prove it first (a withheld caller id never can)
        log.info("dial-in sid=%s: asking for the PIN", call_sid)
        return _pin_prompt(attempt=1)
    return _unmatched(to=to, forwarded_from=forwarded_from)


def _claim(call: Call, *, call_sid: str, forwarded_from: str | None, now: datetime) -> bool:
    held_until = max(call.created_at + timedelta(seconds=settings.CALL_RING_SECONDS), now + timedelta(seconds=5))
    dialing_until = now + timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + 5)
    answered = call.answered_by_id is not None
    try:
        # A caller nobody answered yet is held: that entry is written with the transition's.
        won = transition(call, "forwarded_call_arrived", now=now,
                         step=Step("forwarded_call_arrived", detail={"call_sid": call_sid,
                                                                     "forwarded_from": forwarded_from}),
                         fields={"provider_call_sid": call_sid,
                                 "expires_at": dialing_until if answered else held_until},
                         guard={"provider_call_sid__isnull": True},
                         more_steps=() if answered else (Step("caller_held"),))
    except IntegrityError:  # the same CallSid claimed by a concurrent retry
        return False
    if not won:
        return False
    log.info("forwarded call matched call=%s sid=%s answered=%s", call.pk, call_sid, answered)
    if answered:
        legs.leg_dial(call=call, now=now, role=LegRole.DEVICE, device=call.answered_by)
    return True


def dial_in_pin(*, attempt: str | None, params: dict, now: datetime) -> str:
    """A dial-in caller entered a PIN (`Digits`) at try `attempt` (1 to PIN_TRIES)."""
    call_sid = params.get("CallSid", "")
    known = _known(call_sid)  # a retried webhook after the PIN was right: the same answer
    if known is not None:
        return known
    caller = e164_or_none(params.get("From"))
    if not caller:
        return provider.twiml_goodbye(GOODBYE)
    tries = int(attempt) if attempt and attempt.isdigit() and 1 <= int(attempt) <= PIN_TRIES else PIN_TRIES
    outcome, detail = moves.dial_in_arrive(caller=caller, pin=params.get("Digits") or "", call_sid=call_sid, now=now)
    if outcome == "limited":
        return provider.twiml_goodbye(GOODBYE)
    if outcome == "wrong_pin":
        if tries < PIN_TRIES:
            return _pin_prompt(attempt=tries + 1)
        return provider.twiml_goodbye(f"{PIN_WRONG} Goodbye.")
    log.info("dial-in %s sid=%s", outcome, call_sid)
    return _dial_in_twiml(outcome, detail, call_sid=call_sid, now=now)


def dial_in_choice(*, device_id: str | None, proof: str | None, params: dict, now: datetime) -> str:
    """The menu's key press. Only a caller that passed the PIN gets here: the menu's
    action carries a signed proof bound to its CallSid and device."""
    call_sid = params.get("CallSid", "")
    try:
        device = Device.objects.select_related("user").filter(pk=uuid.UUID(str(device_id))).first()
    except ValueError:
        device = None
    caller = e164_or_none(params.get("From"))
    if device is None or not caller or device.phone_number != caller or \
            not _proven(proof, call_sid=call_sid, device_id=device.pk, now=now):
        log.warning("dial-in choice refused: no valid proof of the PIN sid=%s", call_sid)
        return provider.twiml_goodbye(NOTHING_TO_TAKE)
    calls = list(moves.movable_calls_for(user=device.user))
    digits = params.get("Digits", "")
    if not digits.isdigit() or not 1 <= int(digits) <= len(calls):
        return _dial_in_twiml("menu", (device, calls), call_sid=call_sid, now=now) if calls else \
            provider.twiml_goodbye(NOTHING_TO_TAKE)
    outcome, pull = moves.dial_in_take(device=device, call=calls[int(digits) - 1], call_sid=call_sid, now=now)
    return _dial_in_twiml(outcome, pull, call_sid=call_sid, now=now)


def join_after_approval(*, pull_id: str, params: dict) -> str:
    pull = Pull.objects.select_related("call", "leg").filter(pk=pull_id).first()
    if pull is None or pull.leg is None or pull.leg.provider_call_sid != params.get("CallSid"):
        return provider.twiml_goodbye()
    if pull.state != PullState.APPROVED:
        return provider.twiml_goodbye(NOTHING_TO_TAKE)
    return join_twiml(pull)


def fallback_twiml(*, call_id: str, params: dict) -> str:
    call = _call_for_callback(call_id, params)
    if call is not None and call.line.fallback_number:
        return provider.twiml_forward(number=call.line.fallback_number)
    return provider.twiml_goodbye(GOODBYE)


# Callbacks -----------------------------------------------------------------------

def _call_for_callback(call_id: str | None, params: dict) -> Call | None:
    try:
        call_id = uuid.UUID(str(call_id))
    except ValueError:
        return None
    call = Call.objects.select_related("line").filter(pk=call_id).first()
    if call is None or call.provider_call_sid != params.get("CallSid"):
        return None
    return call


def dial_finished(*, call_id: str, params: dict, now: datetime) -> str:
    """The caller's `<Dial><Conference>` ended: the conference is over."""
    call = _call_for_callback(call_id, params)
    if call is not None and call.state == CallState.CONNECTED:
        if transition(call, "hung_up", now=now, step=Step("ended", call.held_by_id,
                                                          {"dial_status": params.get("DialCallStatus")}),
                      fields={"end_reason": "completed"}):
            announce_end(call, now=now, reason="completed")
    return provider.twiml_goodbye()


LEG_FAILED = {"busy", "no-answer", "failed", "canceled"}
PARENT_ENDED = {"completed", "busy", "failed", "no-answer", "canceled"}


def _leg(call_id, leg_ref: str | None, call_sid: str | None) -> CallLeg | None:
    legs_of_call = CallLeg.objects.select_related("call").filter(call_id=call_id)
    try:
        by_ref = legs_of_call.filter(pk=uuid.UUID(str(leg_ref))).first() if leg_ref else None
    except ValueError:
        by_ref = None
    return by_ref or (legs_of_call.filter(provider_call_sid=call_sid).first() if call_sid else None)


def status_changed(*, call_id: str | None, leg: str | None, params: dict, now: datetime) -> None:
    """Status callbacks of a device or transfer leg (`leg=`), or of the forwarded call."""
    status = params.get("CallStatus", "")
    if leg:
        try:
            call_id = uuid.UUID(str(call_id))
        except ValueError:
            return
        found = _leg(call_id, leg, None)
        if found is None:
            return
        if status in LEG_FAILED:
            legs.leg_failed(leg=found, reason=status, now=now)
        elif status == "completed":
            if found.state == LegState.DIALING:
                legs.leg_failed(leg=found, reason="ended_before_joining", now=now)
            else:
                legs.leg_left(leg=found, now=now)
        elif status in ("initiated", "ringing") and found.role != LegRole.MONITOR:
            record(found.call, now=now, step=Step(f"leg_{status}", found.device_id, {"role": found.role}))
        return
    sid = params.get("CallSid")
    call = Call.objects.select_related("line").filter(provider_call_sid=sid).first()
    if call is None:
        dial_in = CallLeg.objects.select_related("call").filter(provider_call_sid=sid).first()
        if dial_in is not None and status in PARENT_ENDED:  # a device that dialled in hung up
            if dial_in.state == LegState.DIALING:
                legs.leg_failed(leg=dial_in, reason="hung_up", now=now)
            else:
                legs.leg_left(leg=dial_in, now=now)
        return
    if status not in PARENT_ENDED or call.is_terminal:
        return
    legs.caller_gone(call, status=status, now=now)


def conference_event(*, call_id: str | None, params: dict, now: datetime) -> None:
    """Conference status callbacks: legs joining and leaving the call's anchor."""
    try:
        call_id = uuid.UUID(str(call_id))
    except ValueError:
        return
    event = params.get("StatusCallbackEvent", "")
    found = _leg(call_id, params.get("ParticipantLabel"), params.get("CallSid"))
    if event == "participant-join" and found is not None:
        legs.leg_joined(leg=found, now=now, call_sid=params.get("CallSid"))
    elif event == "participant-leave" and found is not None:
        legs.leg_left(leg=found, now=now)
