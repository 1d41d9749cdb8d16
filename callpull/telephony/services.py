"""What the voice provider's webhooks do to calls.

The voice webhook answers at once and never waits for a user: a forwarded call
whose device is chosen gets `<Dial>`; one still ringing on the devices is held
with ringback and redirected through the provider's REST API when a device
answers. Retried webhooks (same CallSid) get the same answer.
"""

import logging
from datetime import datetime, timedelta
from urllib.parse import urlencode

import phonenumbers
from django.conf import settings
from django.db import IntegrityError
from django.db.models import Q

from callpull.calls import all_devices, announce_end, notify
from callpull.models import Call, CallState, Line
from callpull.statemachine import PENDING_STATES, Step, record, transition
from callpull.telephony import provider

log = logging.getLogger(__name__)

GOODBYE = "Sorry, this call cannot be connected right now. Goodbye."
# What carriers put in From when the caller id is withheld.
WITHHELD = {"", "anonymous", "restricted", "unknown", "private", "unavailable", "+266696687", "+86282452253"}


def webhook_url(name: str, **query) -> str:
    url = f"{settings.PUBLIC_BASE_URL}/telephony/twilio/{name}"
    return f"{url}?{urlencode(query)}" if query else url


def ringback_url() -> str:
    static = settings.STATIC_URL if "://" in settings.STATIC_URL else \
        f"{settings.PUBLIC_BASE_URL}/{settings.STATIC_URL.strip('/')}/"
    return f"{static}callpull/ringback.wav"


def _e164_or_none(raw: str | None) -> str | None:
    if raw is None or raw.strip().lower() in WITHHELD:
        return None
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# TwiML for a call ------------------------------------------------------------

def _dial(call: Call) -> str:
    device = call.answered_by
    return provider.twiml_dial(
        kind=device.connect_type, address=device.connect_address,
        action_url=webhook_url("dial-status", call=call.pk),
        status_url=webhook_url("status", call=call.pk, leg="device"),
        timeout=settings.DIAL_TIMEOUT_SECONDS,
        caller_id=call.caller or None if device.connect_type == "number" else None,
    )


def twiml_for(call: Call) -> str:
    """The answer for a forwarded call in its current state."""
    if call.state in (CallState.FORWARDED, CallState.CONNECTED) and call.answered_by_id:
        return _dial(call)
    if call.state == CallState.FORWARDED:
        return provider.twiml_hold(ringback_url=ringback_url())
    return provider.twiml_goodbye(GOODBYE)


def _unmatched(*, to: str, forwarded_from: str | None) -> str:
    line = Line.objects.filter(number=forwarded_from).first() if forwarded_from else None
    if line is not None and line.fallback_number:
        log.info("forwarded call unmatched: to fallback line=%s", line.pk)
        return provider.twiml_forward(number=line.fallback_number)
    log.info("forwarded call unmatched: hang up to=%s forwarded_from=%s", to, forwarded_from)
    return provider.twiml_goodbye(GOODBYE)


# Webhooks --------------------------------------------------------------------

def _candidates(*, to: str, caller: str | None, forwarded_from: str | None, now: datetime):
    calls = Call.objects.select_related("line", "answered_by").filter(
        line__server_number__number=to, state__in=PENDING_STATES, provider_call_sid__isnull=True,
        created_at__gte=now - timedelta(seconds=settings.CALL_MATCH_WINDOW_SECONDS))
    if forwarded_from:
        calls = calls.filter(line__number=forwarded_from)
    if caller:
        calls = calls.filter(Q(caller=caller) | Q(caller=""))
    return calls.order_by("-created_at")


def forwarded_call_arrive(*, params: dict, now: datetime) -> str:
    """A call reached a server number: match it to the pending call and answer."""
    call_sid = params.get("CallSid", "")
    to = _e164_or_none(params.get("To")) or ""
    forwarded_from = _e164_or_none(params.get("ForwardedFrom"))
    caller = _e164_or_none(params.get("From"))
    known = Call.objects.select_related("line", "answered_by").filter(provider_call_sid=call_sid).first()
    if known is not None:
        return twiml_for(known)
    for call in _candidates(to=to, caller=caller, forwarded_from=forwarded_from, now=now)[:5]:
        held_until = max(call.created_at + timedelta(seconds=settings.CALL_RING_SECONDS), now + timedelta(seconds=5))
        dialing_until = now + timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + 5)
        try:
            won = transition(call, "forwarded_call_arrived", now=now,
                             step=Step("forwarded_call_arrived", detail={"call_sid": call_sid,
                                                                         "forwarded_from": forwarded_from}),
                             fields={"provider_call_sid": call_sid,
                                     "expires_at": dialing_until if call.answered_by_id else held_until},
                             guard={"provider_call_sid__isnull": True})
        except IntegrityError:  # the same CallSid claimed by a concurrent retry
            won = False
        if won:
            log.info("forwarded call matched call=%s sid=%s answered=%s", call.pk, call_sid,
                     bool(call.answered_by_id))
            if not call.answered_by_id:
                record(call, now=now, step=Step("caller_held"))
            return twiml_for(call)
        known = Call.objects.select_related("line", "answered_by").filter(provider_call_sid=call_sid).first()
        if known is not None:
            return twiml_for(known)
    return _unmatched(to=to, forwarded_from=forwarded_from)


def _call_for_callback(call_id: str | None, params: dict) -> Call | None:
    if not call_id:
        return None
    call = Call.objects.select_related("line", "answered_by").filter(pk=call_id).first()
    if call is None or call.provider_call_sid != params.get("CallSid", params.get("ParentCallSid")):
        return None
    return call


def connect_twiml(*, call_id: str, params: dict) -> str:
    """Where a held call is redirected once a device answered."""
    call = _call_for_callback(call_id, params)
    return twiml_for(call) if call is not None else provider.twiml_goodbye(GOODBYE)


def fallback_twiml(*, call_id: str, params: dict) -> str:
    call = _call_for_callback(call_id, params)
    if call is not None and call.line.fallback_number:
        return provider.twiml_forward(number=call.line.fallback_number)
    return provider.twiml_goodbye(GOODBYE)


DIAL_UNANSWERED = {"busy", "no-answer", "canceled"}


def dial_finished(*, call_id: str, params: dict, now: datetime) -> str:
    """The `<Dial>` ended: the conversation is over, or the device never answered."""
    call = _call_for_callback(call_id, params)
    if call is None:
        return provider.twiml_goodbye()
    status = params.get("DialCallStatus", "")
    detail = {"dial_status": status, "duration": params.get("DialCallDuration")}
    if status in ("completed", "answered"):
        if transition(call, "hung_up", now=now, step=Step("ended", call.answered_by_id, detail),
                      fields={"end_reason": "completed"}):
            announce_end(call, now=now, reason="completed")
        return provider.twiml_goodbye()
    name = "dial_unanswered" if status in DIAL_UNANSWERED else "dial_failed"
    if transition(call, name, now=now, step=Step("dial_ended", call.answered_by_id, detail),
                  fields={"end_reason": f"device_{status.replace('-', '_') or 'failed'}"}):
        announce_end(call, now=now, reason=call.end_reason)
        if call.line.fallback_number:
            return provider.twiml_forward(number=call.line.fallback_number)
    return provider.twiml_goodbye(GOODBYE)


PARENT_ENDED = {"completed", "busy", "failed", "no-answer", "canceled"}


def status_changed(*, call_id: str | None, leg: str | None, params: dict, now: datetime) -> None:
    """Status callbacks: the device leg (`leg=device`) or the forwarded call itself."""
    status = params.get("CallStatus", "")
    if leg == "device":
        call = _call_for_callback(call_id, {"CallSid": params.get("ParentCallSid")})
        if call is None:
            return
        if status == "in-progress":
            if transition(call, "device_connected", now=now,
                          step=Step("connected", call.answered_by_id, {"dial_call_sid": params.get("CallSid")}),
                          fields={"expires_at": None}):
                notify(call, "call.connected", all_devices(call), now=now, push=False)
        elif status in ("initiated", "ringing"):
            record(call, now=now, step=Step(f"device_{status}", call.answered_by_id))
        return
    call = Call.objects.select_related("line").filter(provider_call_sid=params.get("CallSid")).first()
    if call is None or status not in PARENT_ENDED or call.is_terminal:
        return
    held = call.state == CallState.FORWARDED and not call.answered_by_id
    if transition(call, "caller_hung_up", now=now, step=Step("caller_hung_up", detail={"call_status": status}),
                  fields={"end_reason": "completed" if call.state == CallState.CONNECTED else "caller_hung_up"}):
        log.info("forwarded call ended by the provider call=%s status=%s held=%s", call.pk, status, held)
        announce_end(call, now=now, reason=call.end_reason)


# Live-call updates -------------------------------------------------------------

def connect_held_call(call: Call, *, now: datetime) -> None:
    """A device answered while the caller was held: move the live call to it."""
    try:
        provider.call_redirect(call.provider_call_sid, webhook_url("connect", call=call.pk))
    except provider.ProviderError as exc:
        log.warning("redirect failed call=%s: %s", call.pk, exc)
        if transition(call, "dial_failed", now=now, step=Step("redirect_failed", detail={"error": str(exc)}),
                      fields={"end_reason": "provider_error"}):
            announce_end(call, now=now, reason="provider_error")
        return
    record(call, now=now, step=Step("caller_redirected", call.answered_by_id))


def release_held_call(call: Call, *, now: datetime) -> None:
    """Nobody takes a held call: to the line's fallback, else hang up politely."""
    try:
        if call.line.fallback_number:
            provider.call_redirect(call.provider_call_sid, webhook_url("fallback", call=call.pk))
            record(call, now=now, step=Step("sent_to_fallback", detail={"number": call.line.fallback_number}))
        else:
            provider.call_hangup(call.provider_call_sid)
            record(call, now=now, step=Step("caller_released"))
    except provider.ProviderError as exc:
        log.warning("releasing held call failed call=%s: %s", call.pk, exc)
