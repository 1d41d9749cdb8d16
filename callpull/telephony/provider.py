"""The voice provider, Twilio or any TwiML-compatible one. The only module that
imports the twilio SDK: webhook signatures, TwiML, and live-call updates over
the provider's REST API (`TWILIO_API_BASE`, the bundled simulator by default).
"""

import logging
from functools import lru_cache

from django.conf import settings
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse

log = logging.getLogger(__name__)

# Live-call updates happen while a caller waits: fail fast rather than hang.
REST_TIMEOUT_SECONDS = 5


class ProviderError(Exception):
    """A live-call update the provider refused or never answered."""


def signature_valid(url: str, params: dict, signature: str) -> bool:
    return bool(signature) and RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(url, params, signature)


# TwiML ---------------------------------------------------------------------

def twiml_conference(*, name: str, start_on_enter: bool, end_on_exit: bool, status_url: str,
                     wait_url: str | None = None, action_url: str | None = None, label: str | None = None,
                     muted: bool = False) -> str:
    """Put this call into the named conference (the call's anchor)."""
    response = VoiceResponse()
    dial = Dial(action=action_url, method="POST") if action_url else Dial()
    kwargs = {"start_conference_on_enter": start_on_enter, "end_conference_on_exit": end_on_exit,
              "beep": False, "muted": muted or None, "status_callback": status_url,
              "status_callback_event": "start end join leave", "status_callback_method": "POST"}
    if wait_url:
        kwargs.update(wait_url=wait_url, wait_method="GET")
    if label:
        kwargs["participant_label"] = label
    dial.conference(name, **kwargs)
    response.append(dial)
    return str(response)


def twiml_menu(*, prompt: str, action_url: str, digits: int = 1, timeout: int = 8) -> str:
    """Ask for a key press; without one, say goodbye."""
    response = VoiceResponse()
    gather = response.gather(input="dtmf", num_digits=digits, timeout=timeout, action=action_url, method="POST")
    gather.say(prompt)
    response.say("No choice was made. Goodbye.")
    response.hangup()
    return str(response)


def twiml_pin(*, prompt: str, action_url: str, no_input: str, max_digits: int = 12, timeout: int = 10) -> str:
    """Ask for a PIN ended by `#` (or `max_digits` keys); without one, say `no_input` and hang up."""
    response = VoiceResponse()
    gather = response.gather(input="dtmf", finish_on_key="#", num_digits=max_digits, timeout=timeout,
                             action=action_url, method="POST")
    gather.say(prompt)
    response.say(no_input)
    response.hangup()
    return str(response)


def twiml_hold(*, ringback_url: str) -> str:
    """Keep the caller hearing ringback until a live-call update moves them on."""
    response = VoiceResponse()
    response.play(ringback_url, loop=0)
    return str(response)


def twiml_forward(*, number: str) -> str:
    response = VoiceResponse()
    response.dial(number)
    return str(response)


def twiml_goodbye(message: str | None = None) -> str:
    response = VoiceResponse()
    if message:
        response.say(message)
    response.hangup()
    return str(response)


# Live-call updates -----------------------------------------------------------

@lru_cache(maxsize=1)
def _client() -> Client:
    http_client = TwilioHttpClient(timeout=REST_TIMEOUT_SECONDS)
    client = Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client)
    # The SDK has no public switch for its base URL; the simulator and tests need one.
    client.api.base_url = settings.TWILIO_API_BASE
    return client


def call_redirect(call_sid: str, url: str) -> None:
    """Make the live call fetch new TwiML from `url`."""
    try:
        _client().calls(call_sid).update(url=url, method="POST")
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"redirect of {call_sid} failed: {exc}") from exc


def _to_address(kind: str, address: str) -> str:
    return f"client:{address}" if kind == "client" else address


def participant_add(*, conference: str, kind: str, address: str, caller_id: str, label: str, status_url: str,
                    conference_status_url: str, timeout: int, muted: bool = False) -> str:
    """Dial `address` into the conference; returns the new leg's CallSid."""
    try:
        participant = _client().conferences(conference).participants.create(
            from_=caller_id, to=_to_address(kind, address), label=label, timeout=timeout, muted=muted,
            beep="false", start_conference_on_enter=True, end_conference_on_exit=False,
            status_callback=status_url, status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            conference_status_callback=conference_status_url, conference_status_callback_method="POST",
            conference_status_callback_event=["start", "end", "join", "leave"],
        )
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"adding {label} to {conference} failed: {exc}") from exc
    return participant.call_sid


def participant_remove(*, conference: str, call_sid: str) -> None:
    try:
        _client().conferences(conference).participants(call_sid).delete()
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"removing {call_sid} from {conference} failed: {exc}") from exc


def participant_mute(*, conference: str, call_sid: str, muted: bool = True) -> None:
    try:
        _client().conferences(conference).participants(call_sid).update(muted=muted)
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"muting {call_sid} in {conference} failed: {exc}") from exc


def participant_hold(*, conference: str, call_sid: str, hold: bool, hold_url: str | None = None) -> None:
    """Put a participant on hold (it hears `hold_url`, audio or TwiML, and nobody hears
    it) or take it off hold."""
    options = {"hold_url": hold_url, "hold_method": "GET"} if hold and hold_url else {}
    try:
        _client().conferences(conference).participants(call_sid).update(hold=hold, **options)
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"{'holding' if hold else 'unholding'} {call_sid} in {conference} failed: {exc}") \
            from exc


def call_hangup(call_sid: str) -> None:
    try:
        _client().calls(call_sid).update(status="completed")
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"hang-up of {call_sid} failed: {exc}") from exc


def call_place(*, to: str, from_: str, twiml: str, status_url: str | None = None,
               timeout: int | None = None) -> str:
    """Place an outbound call to `to` from our number `from_`; once answered it follows
    `twiml` (Twilio's CreateCall with `Twiml`). Returns the new call's CallSid."""
    options = {}
    if status_url:
        options.update(status_callback=status_url, status_callback_method="POST")
    if timeout is not None:
        options["timeout"] = timeout
    try:
        placed = _client().calls.create(to=to, from_=from_, twiml=twiml, **options)
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"placing a call to {to} failed: {exc}") from exc
    return placed.sid


# What the provider says a call is doing now (Twilio's call statuses).
ENDED_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def call_status(call_sid: str) -> str | None:
    """The call's status at the provider (`queued`, `ringing`, `in-progress`, or one of
    ENDED_STATUSES); None when the provider does not know the call (404)."""
    try:
        return _client().calls(call_sid).fetch().status
    except TwilioRestException as exc:
        if exc.status == 404:
            return None
        raise ProviderError(f"status of {call_sid} unavailable: {exc}") from exc
    except (TwilioException, OSError) as exc:
        raise ProviderError(f"status of {call_sid} unavailable: {exc}") from exc
