"""What the voice provider's webhooks do to calls.

The voice webhook answers at once and never waits for a user: a matched
forwarded call joins its own conference (callpull.legs), hearing ringback until
a device's leg joins; devices are dialled in through the provider's REST API.
Retried webhooks (same CallSid) get the same answer. A call to a server number
that is no forwarded call may be a user dialling in to take over a live call
(callpull.moves): every such caller is asked for a PIN before hearing anything
else, whoever its caller id claims to be. On a line that accepts network
forwarding (no answer, unreachable, always) a call attributed exactly to it that
matches no ring report is its forwarded call, made on the spot (callpull.calls.
network_call), unless it comes from one of that user's own devices' numbers.
"""

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, Q

from callpull import actions, calls, joins, legs, moves
from callpull.models import Call, CallLeg, CallState, LegRole, LegState, Line, Pull, PullState, TimelineEntry
from callpull.statemachine import PENDING_STATES, Step, record, transition
from callpull.telephony import provider
from callpull.telephony.callbacks import ringback_url, webhook_url
from devices.models import Device
from devices.phone import parse_e164

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


def e164_or_none(raw: str | None) -> str | None:
    if raw is None or raw.strip().lower() in WITHHELD:
        return None
    return parse_e164(raw)


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
    return provider.digits_aloud(number[-4:]) if number else "a withheld number"


def _last4(number: str | None) -> str:
    """A phone number as the logs show it: its last four digits."""
    return f"…{number[-4:]}" if number else "withheld"


def _unmatched(*, to: str, forwarded_from: str | None) -> str:
    """A forwarded call that is no pending call's: the fallback of the line ForwardedFrom
    names or, when it names none, of the only line on the server number `To`, or the one
    fallback every line sharing `To` has; else a polite goodbye."""
    line = Line.objects.filter(number=forwarded_from).only("id", "fallback_number").first() \
        if forwarded_from else None
    if line is None:
        only = list(Line.objects.filter(server_number__number=to).only("id", "fallback_number")[:2]) if to else []
        line = only[0] if len(only) == 1 else None
        if len(only) > 1:  # a shared number: no line is guessed, only a fallback they all share is taken
            fallbacks = list(Line.objects.filter(server_number__number=to).order_by()
                             .values_list("fallback_number", flat=True).distinct()[:2])
            if len(fallbacks) == 1 and fallbacks[0]:
                log.info("call to shared %s unmatched: to the fallback its lines share", _last4(to))
                return provider.twiml_forward(number=fallbacks[0])
    if line is not None and line.fallback_number:
        log.info("forwarded call unmatched: to fallback line=%s", line.pk)
        return provider.twiml_forward(number=line.fallback_number)
    log.info("call to %s unmatched (forwarded_from=%s): polite hang-up", _last4(to), _last4(forwarded_from))
    return provider.twiml_goodbye(GOODBYE)


# The voice webhook ---------------------------------------------------------------

# The query a burst of forwarded calls runs most, written as SQL: the ORM spent ~0.9 ms
# of CPU building, compiling and hydrating it per webhook, SQLite ~0.07 ms running it.
# It is `_candidates_orm` below, newest first, _MATCH_MOST + 1 at most. Only the fields a
# claim and the ambiguity rules need are read, with the line's user and fallback.
# On SQLite the `+` keeps the planner off the unique provider_call_sid index: without
# statistics it took `IS NULL` for a near-unique lookup and read every call never
# forwarded (most of the history) instead of the line's recent pending calls through
# the (line, state, created_at) index. PostgreSQL plans from statistics (and has no
# unary + for text). The ForwardedFrom test is one unique-index probe of the lines,
# made once per query (the subquery does not depend on the row).
_CANDIDATES = ("SELECT c.id, c.state, c.answered_by_id, c.created_at, c.caller, l.user_id AS match_user_id,"
               " l.fallback_number AS match_fallback FROM callpull_call c"
               " JOIN callpull_line l ON l.id = c.line_id JOIN callpull_servernumber s ON s.id = l.server_number_id"
               " WHERE s.number = %s AND c.state IN ({states}) AND {sid} IS NULL AND c.created_at >= %s")
_BY_LINE = " AND (l.number = %s OR NOT EXISTS (SELECT 1 FROM callpull_line f WHERE f.number = %s))"
# More pending calls than this that one forwarded call could be: it goes to none of them
# (whose the unread ones are is unknown, and no carrier forwards that many at once).
_MATCH_MOST = 20


def _candidates(*, to: str, caller: str | None, forwarded_from: str | None, now: datetime) -> list[Call]:
    """The pending calls a call to `to` from `caller` (None: withheld) may be: see
    docs/CALLS.md, "Matching a forwarded call". `forwarded_from` narrows them to its line
    when it names one of our lines and is ignored otherwise."""
    states = sorted(str(state) for state in PENDING_STATES)
    sid = "+c.provider_call_sid" if connection.vendor == "sqlite" else "c.provider_call_sid"
    sql = _CANDIDATES.format(states=", ".join(["%s"] * len(states)), sid=sid)
    since = connection.ops.adapt_datetimefield_value(now - timedelta(seconds=settings.CALL_MATCH_WINDOW_SECONDS))
    params = [to, *states, since]
    if forwarded_from:
        sql += _BY_LINE
        params += [forwarded_from, forwarded_from]
    if caller and forwarded_from:  # a call reported without caller id, on the line ForwardedFrom names
        sql += " AND (c.caller = %s OR (c.caller = '' AND l.number = %s))"
        params += [caller, forwarded_from]
    elif caller:
        sql += " AND c.caller = %s"
        params.append(caller)
    else:
        sql += " AND c.caller = ''"
    return list(Call.objects.raw(sql + f" ORDER BY c.created_at DESC LIMIT {_MATCH_MOST + 1}", params))


def _candidates_orm(*, to: str, caller: str | None, forwarded_from: str | None, now: datetime):
    """`_candidates` in the ORM (slower; a test holds them equal), newest first."""
    found = Call.objects.filter(line__server_number__number=to, state__in=PENDING_STATES,
                                provider_call_sid__isnull=True,
                                created_at__gte=now - timedelta(seconds=settings.CALL_MATCH_WINDOW_SECONDS))
    if forwarded_from:
        found = found.filter(Q(line__number=forwarded_from) | ~Exists(Line.objects.filter(number=forwarded_from)))
    if caller and forwarded_from:
        found = found.filter(Q(caller=caller) | Q(caller="", line__number=forwarded_from))
    else:
        found = found.filter(caller=caller or "")
    return found.order_by("-created_at")


def _choose(candidates: list[Call], *, caller: str | None) -> tuple[list[Call], str | None]:
    """The calls this one may be, newest first, or (the calls it could be, why it goes to
    none of them). Calls from `caller` come first; a call reported without a caller
    matches only when no call from `caller` does, and only when it is the only one."""
    if len(candidates) > _MATCH_MOST:
        return candidates, "too_many"
    exact = [call for call in candidates if caller and call.caller == caller]
    if exact:
        # One user's calls from this caller (one line, or the same user's lines): the same
        # person reaches the same user's devices whichever is claimed, newest first.
        return (exact, None) if len({call.match_user_id for call in exact}) == 1 else (exact, "several_users")
    return (candidates, None) if len(candidates) <= 1 else (candidates, "several_withheld")


def _to_nobody(calls: list[Call], *, why: str, call_sid: str, to: str, caller: str | None) -> str:
    """A call that could be more than one user's pending call (or more than one withheld
    caller's) goes to none of them: to their lines' fallback when they all share one,
    else a polite goodbye. The pending calls go on as their own rules say."""
    fallbacks = {call.match_fallback for call in calls}
    fallback = fallbacks.pop() if len(fallbacks) == 1 else ""
    log.warning("forwarded call sid=%s to %s from %s could be %d pending calls of %d users (%s): given to "
                "nobody, %s", call_sid, _last4(to), _last4(caller), len(calls),
                len({call.match_user_id for call in calls}), why, "to their fallback" if fallback else "goodbye")
    if fallback:
        return provider.twiml_forward(number=fallback)
    return provider.twiml_goodbye(GOODBYE)


def _known(call_sid: str, *, dialled_in: bool = True) -> str | None:
    """The answer already given to this CallSid, for a retried webhook. A device's leg
    has this CallSid only when the call was dialled in (no ForwardedFrom naming a line):
    a forwarded call's retry (`dialled_in=False`) need not look for one."""
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


def _forwarded_from(raw: str | None, *, to: str) -> str | None:
    """ForwardedFrom as a hint at the line, or None: absent, withheld, or a server number of
    ours (some carriers put the number they forwarded to there)."""
    number = e164_or_none(raw)
    if number is None or number == to or number in settings.SERVER_NUMBERS:
        return None
    return number


def call_arrived(*, params: dict, now: datetime) -> str:
    """A call reached a server number: the forwarded call of a pending ring, or
    a device dialling in; otherwise the line's fallback or a polite goodbye."""
    call_sid = params.get("CallSid", "")
    to = e164_or_none(params.get("To")) or ""
    forwarded_from = _forwarded_from(params.get("ForwardedFrom"), to=to)
    caller = e164_or_none(params.get("From"))
    dialled_in = not forwarded_from  # or forwarded by a carrier that does not say from where
    if dialled_in:  # a retried dial-in must not claim a pending call: look for its leg first
        known = _known(call_sid)
        if known is not None:
            return known
    calls, ambiguous = _choose(_candidates(to=to, caller=caller, forwarded_from=forwarded_from, now=now),
                               caller=caller)
    if ambiguous:
        known = None if dialled_in else _known(call_sid, dialled_in=False)  # matched before it turned ambiguous
        return known if known is not None else \
            _to_nobody(calls, why=ambiguous, call_sid=call_sid, to=to, caller=caller)
    # A forwarded call's retry is found when its claim fails: the call it matched is no
    # longer pending, and claiming another one with the same CallSid breaks its uniqueness.
    for call in calls:
        if _claim(call, call_sid=call_sid, forwarded_from=forwarded_from, now=now):
            return caller_twiml(call)
        known = _known(call_sid, dialled_in=dialled_in)
        if known is not None:
            return known
    if not dialled_in:
        known = _known(call_sid, dialled_in=False)
        if known is not None:
            return known
    line = _exact_line(to=to, forwarded_from=forwarded_from)
    if line is not None and line.network_kinds_active() and not (
            dialled_in and caller and _users_own_number(line, caller)):
        answer = _network_forwarded(line, call_sid=call_sid, caller=caller, forwarded_from=forwarded_from,
                                    dialled_in=dialled_in, now=now)
        if answer is not None:
            return answer
    if dialled_in and caller:  # maybe a user dialling in: prove it first (a withheld caller id never can)
        log.info("dial-in sid=%s: asking for the PIN", call_sid)
        return _pin_prompt(attempt=1)
    return _unmatched(to=to, forwarded_from=forwarded_from)


def _exact_line(*, to: str, forwarded_from: str | None) -> Line | None:
    """The line a forwarded call is exactly attributed to: the one ForwardedFrom names,
    else the only line on the server number `To`; None on a shared number without
    ForwardedFrom (never a guess: docs/CALLS.md, "Network-forwarded calls")."""
    if forwarded_from:
        return Line.objects.filter(number=forwarded_from).first()
    only = list(Line.objects.filter(server_number__number=to)[:2]) if to else []
    return only[0] if len(only) == 1 else None


def _users_own_number(line: Line, caller: str) -> bool:
    """Whether `caller` is the number of one of the line's user's devices: a call from it
    with no ForwardedFrom is the user dialling in (the PIN prompt), not a forwarded call."""
    return Device.objects.filter(user_id=line.user_id, phone_number=caller).exists()


def _network_forwarded(line: Line, *, call_sid: str, caller: str | None, forwarded_from: str | None,
                       dialled_in: bool, now: datetime) -> str | None:
    """A forwarded call no pending report's, on a line that accepts network forwarding:
    the call made on the spot (callpull.calls.network_call), or the report's call that
    committed meanwhile, claimed. None when the line no longer accepts it."""
    outcome, call = calls.network_call(line_id=line.pk, caller=caller, call_sid=call_sid,
                                       forwarded_from=forwarded_from, now=now)
    if outcome == "created":
        return twiml_for(call)
    if outcome == "pending":
        if _claim(call, call_sid=call_sid, forwarded_from=forwarded_from, now=now):
            return caller_twiml(call)
        return _known(call_sid, dialled_in=dialled_in)
    return None


def _claim(call: Call, *, call_sid: str, forwarded_from: str | None, now: datetime) -> bool:
    held_until = max(call.created_at + timedelta(seconds=settings.CALL_RING_SECONDS), now + timedelta(seconds=5))
    answered = call.answered_by_id is not None
    dialing_until = now + timedelta(seconds=(legs.dial_allowance(call.answered_by) if answered
                                             else settings.DIAL_TIMEOUT_SECONDS) + 5)
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


# Screened number legs (docs/MOVING.md) --------------------------------------------

# The key that takes the call, and how long after the whisper the person has to press it.
SCREEN_KEY = "1"
SCREEN_KEY_TIMEOUT_SECONDS = 8
SCREEN_PROMPT = "Call for {line}. Press 1 to take it."
SCREEN_TOO_LATE = "This call is no longer waiting. Goodbye."


def _screened_leg(call_id, leg_id, call_sid: str | None) -> CallLeg | None:
    """The leg `leg_id` of call `call_id` whose own call is `call_sid`. The provider may
    fetch the screen before the create request's answer gave the leg its CallSid: then
    the first CallSid asking for a leg that has none is its (only the provider, signing
    with our token, reaches this URL, and only through the call placed for that leg)."""
    try:
        call_id, leg_id = uuid.UUID(str(call_id)), uuid.UUID(str(leg_id))
    except ValueError:
        return None
    leg = CallLeg.objects.select_related("call__line").filter(pk=leg_id, call_id=call_id).first()
    if leg is None or not call_sid:
        return None
    if leg.provider_call_sid is None:
        try:
            with transaction.atomic():
                CallLeg.objects.filter(pk=leg.pk, provider_call_sid__isnull=True).update(provider_call_sid=call_sid)
        except IntegrityError:  # a CallSid some other leg has: not this leg's call
            return None
        leg.provider_call_sid = CallLeg.objects.values_list("provider_call_sid", flat=True).get(pk=leg.pk)
    return leg if leg.provider_call_sid == call_sid else None


def screen_answered(*, call_id: str | None, leg_id: str | None, params: dict, now: datetime) -> str:
    """A number leg's call was answered, by a person or by voicemail: say whom the call is
    for and wait for the key. A retried request gets the same answer and changes nothing."""
    leg = _screened_leg(call_id, leg_id, params.get("CallSid"))
    if leg is None:
        log.warning("screen refused: no such leg for this call call=%s leg=%s sid=%s", call_id, leg_id,
                    params.get("CallSid"))
        return provider.twiml_goodbye()
    if leg.state != LegState.DIALING or leg.call.is_terminal:  # removed while it rang, or the caller left
        return provider.twiml_goodbye(SCREEN_TOO_LATE)
    line = provider.digits_aloud(leg.call.line.number)
    return provider.twiml_screen(prompt=SCREEN_PROMPT.format(line=line),
                                 action_url=webhook_url("screen", call=leg.call_id, leg=leg.pk, step="key"),
                                 timeout=SCREEN_KEY_TIMEOUT_SECONDS)


def screen_key(*, call_id: str | None, leg_id: str | None, params: dict, now: datetime) -> str:
    """The key pressed after the whisper (`Digits`, empty when none came in time). SCREEN_KEY
    joins the call's conference (the leg's `participant-join` then completes the pull or
    transfer, or connects the call); no key counts as not answered (`no-answer`), another
    key as refused (`not_accepted`): the leg fails and the call stays where it was. A
    retried request gets the same answer, and a leg fails once."""
    leg = _screened_leg(call_id, leg_id, params.get("CallSid"))
    if leg is None:
        log.warning("screen key refused: no such leg for this call call=%s leg=%s sid=%s", call_id, leg_id,
                    params.get("CallSid"))
        return provider.twiml_goodbye()
    digits = params.get("Digits") or ""
    if digits != SCREEN_KEY:
        log.info("number leg not taken leg=%s call=%s: %s", leg.pk, leg.call_id, "wrong key" if digits else "no key")
        legs.leg_failed(leg=leg, reason="not_accepted" if digits else "no-answer", now=now)
        return provider.twiml_goodbye()
    if leg.state not in (LegState.DIALING, LegState.JOINED) or leg.call.is_terminal:
        return provider.twiml_goodbye(SCREEN_TOO_LATE)
    log.info("number leg taken leg=%s call=%s: joining", leg.pk, leg.call_id)
    return provider.twiml_conference(
        name=leg.call.conference_name, start_on_enter=True, end_on_exit=False, label=str(leg.pk),
        status_url=webhook_url("conference", call=leg.call_id))


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


# A participant-leave with one of these ParticipantCallStatus was answered: it had joined.
ANSWERED = {"in-progress", "completed"}


def dial_finished(*, call_id: str, params: dict, now: datetime) -> str:
    """The caller's `<Dial><Conference>` ended: the caller left the conference (hung up,
    or was hung up), which ended with it. The same news as the caller's status callback
    or the conference's end, whichever of them comes first; the answer hangs up."""
    call = _call_for_callback(call_id, params)
    if call is not None and not call.is_terminal:
        status = params.get("CallStatus")
        legs.caller_gone(call, status=status if status in provider.ENDED_STATUSES else "completed", now=now)
    return provider.twiml_goodbye()


def _leg(call_id, leg_ref: str | None, call_sid: str | None) -> CallLeg | None:
    legs_of_call = CallLeg.objects.select_related("call").filter(call_id=call_id)
    try:
        by_ref = legs_of_call.filter(pk=uuid.UUID(str(leg_ref))).first() if leg_ref else None
    except ValueError:
        by_ref = None
    return by_ref or (legs_of_call.filter(provider_call_sid=call_sid).first() if call_sid else None)


def _joins_on_answer(leg: CallLeg) -> bool:
    """Whether the provider puts the leg into the conference as soon as it answers: a
    device's `client` or `sip` target, added through the Participants API. A number leg
    first hears a screening prompt (and may never join), a dial-in first proves itself:
    for them an answered call proves no join."""
    device = leg.device
    return leg.role != LegRole.TRANSFER and device is not None and device.connect_type in ("client", "sip")


def _leg_completed(leg: CallLeg, *, call_sid: str | None, now: datetime) -> None:
    """A leg's call ended after it was answered (`completed`; an unanswered one ends
    `no-answer`, `busy`, `failed` or `canceled`). It may come before the leg's
    participant-join: a leg that joins when it answers joined then, whenever its join
    is heard; any other leg not heard joining failed (`ended_before_joining`)."""
    if leg.state == LegState.JOINED:
        legs.leg_left(leg=leg, now=now)
    elif legs.join_unheard(leg) and _joins_on_answer(leg):
        joins.leg_joined(leg=leg, now=now, call_sid=call_sid)
        legs.leg_left(leg=leg, now=now)
    elif leg.state == LegState.DIALING:
        legs.leg_failed(leg=leg, reason="ended_before_joining", now=now)


def _leg_progress(leg: CallLeg, *, status: str, now: datetime) -> None:
    """`leg_initiated` / `leg_ringing`, once per leg however often (and late) the callback
    comes. The leg's row lock (on SQLite the transaction's write lock) orders a callback
    and its retry, so the second finds the first's entry."""
    event = f"leg_{status}"
    with transaction.atomic():
        list(CallLeg.objects.select_for_update().filter(pk=leg.pk).values_list("pk", flat=True))
        if TimelineEntry.objects.filter(call_id=leg.call_id, event=event, detail__leg=str(leg.pk)).exists():
            return
        record(leg.call, now=now, step=Step(event, leg.device_id, {"role": leg.role, "leg": str(leg.pk)}))


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
        sid = params.get("CallSid")
        if found.provider_call_sid and sid and sid != found.provider_call_sid:
            # Another call's news under this leg's URL (a second placed call for the leg, should
            # a retried create have gone through after all): not this leg's to change.
            log.info("status callback ignored: CallSid is not the leg's leg=%s", found.pk)
            return
        if status in provider.UNANSWERED_STATUSES:
            legs.leg_failed(leg=found, reason=status, now=now)
        elif status == "completed":
            _leg_completed(found, call_sid=params.get("CallSid") or None, now=now)
        elif status in ("initiated", "ringing") and found.role != LegRole.MONITOR:
            _leg_progress(found, status=status, now=now)
        return
    sid = params.get("CallSid")
    call = Call.objects.select_related("line").filter(provider_call_sid=sid).first()
    if call is None:
        dial_in = CallLeg.objects.select_related("call").filter(provider_call_sid=sid).first()
        if dial_in is not None and status in provider.ENDED_STATUSES:  # a device that dialled in hung up
            if dial_in.state == LegState.DIALING:
                legs.leg_failed(leg=dial_in, reason="hung_up", now=now)
            else:
                legs.leg_left(leg=dial_in, now=now)
        return
    if status not in provider.ENDED_STATUSES or call.is_terminal:
        return
    legs.caller_gone(call, status=status, now=now)


def conference_event(*, call_id: str | None, params: dict, now: datetime) -> None:
    """Conference status callbacks: legs joining and leaving the call's anchor."""
    try:
        call_id = uuid.UUID(str(call_id))
    except ValueError:
        return
    # Twilio updates and removes participants only under the conference's SID: keep it (once).
    actions.conference_sid_learnt(call_id, params.get("ConferenceSid"))
    event = params.get("StatusCallbackEvent", "")
    found = _leg(call_id, params.get("ParticipantLabel"), params.get("CallSid"))
    if event == "participant-join" and found is not None:
        joins.leg_joined(leg=found, now=now, call_sid=params.get("CallSid"))
    elif event == "participant-leave" and found is not None:
        # A leave heard before the join: the participant was answered, so it had joined.
        if legs.join_unheard(found) and params.get("ParticipantCallStatus") in ANSWERED:
            joins.leg_joined(leg=found, now=now, call_sid=params.get("CallSid"))
        legs.leg_left(leg=found, now=now)
    elif event in ("participant-leave", "conference-end"):
        # The caller left the conference (and, having endConferenceOnExit, ended it): the
        # caller's end, whether or not its own status callback came yet.
        call = Call.objects.select_related("line").filter(pk=call_id).first()
        who = params.get("CallSid") if event == "participant-leave" else params.get("CallSidEndingConference")
        if call is not None and call.provider_call_sid and who == call.provider_call_sid and not call.is_terminal:
            legs.caller_gone(call, status="completed", now=now)
