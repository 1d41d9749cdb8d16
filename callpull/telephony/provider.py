"""The voice provider, Twilio or any TwiML-compatible one. The only module that
imports the twilio SDK: webhook signatures, TwiML, and live-call updates over
the provider's REST API (`TWILIO_API_BASE`, the bundled simulator by default).
"""

import logging
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlencode

from django.conf import settings
from requests.exceptions import ReadTimeout
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import VoiceGrant
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse

log = logging.getLogger(__name__)

# Live-call updates happen while a caller waits: fail fast rather than hang.
REST_TIMEOUT_SECONDS = 5


class ProviderError(Exception):
    """A live-call update the provider refused or never answered.

    `status` and `code`: the provider's HTTP status and error code, when it answered.
    `transient`: worth another try (no answer, a timeout, HTTP 5xx or 429).
    `gone`: the call or participant is already over (404 / 20404, or 400 21220 "Call is
    not in-progress"): the request is moot, not a failure."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None,
                 transient: bool = False, gone: bool = False):
        super().__init__(message)
        self.status, self.code, self.transient, self.gone = status, code, transient, gone

    @property
    def kind(self) -> str:
        """A short name for the timeline: `unreachable`, `http_<status>` or `refused`."""
        if self.status is not None:
            return f"http_{self.status}"
        return "unreachable" if self.transient else "refused"


# Twilio's error codes for a request about a call that is over (https://www.twilio.com/docs/errors/20404,
# https://www.twilio.com/docs/errors/21220), and for a participant label already in the
# conference (https://www.twilio.com/docs/errors/16025).
NOT_FOUND, NOT_IN_PROGRESS, LABEL_TAKEN = 20404, 21220, 16025


def _failure(what: str, exc: Exception) -> ProviderError:
    """`exc` (from the SDK or the network) as a ProviderError saying what it means."""
    if isinstance(exc, TwilioRestException):
        status, code = exc.status, exc.code
        return ProviderError(f"{what} failed: HTTP {status} (code {code}): {exc.msg}", status=status, code=code,
                             transient=status >= 500 or status == 429,
                             gone=status == 404 or code == NOT_FOUND or (status == 400 and code == NOT_IN_PROGRESS))
    # No answer: the SDK's HTTP client raises requests' ConnectionError / Timeout (OSErrors).
    return ProviderError(f"{what} failed: {exc}", transient=isinstance(exc, OSError))


def signature_valid(url: str, params: dict, signature: str) -> bool:
    return bool(signature) and RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(url, params, signature)


# Access Tokens ---------------------------------------------------------------

def voice_access_token(*, identity: str, issued_at: int, ttl_seconds: int, push_credential_sid: str | None = None,
                       outgoing_application_sid: str | None = None) -> str:
    """A Twilio Access Token (a JWT signed HS256 with the API key's secret; `iss` the API key,
    `sub` the account; https://www.twilio.com/docs/iam/access-tokens) letting a voice SDK
    register `identity` and take incoming calls; with `push_credential_sid` the SDK's own
    incoming-call push, with `outgoing_application_sid` outgoing calls through that TwiML app.
    Valid from `issued_at` (epoch seconds) for `ttl_seconds`."""
    grant = VoiceGrant(incoming_allow=True, push_credential_sid=push_credential_sid or None,
                       outgoing_application_sid=outgoing_application_sid or None)
    token = AccessToken(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_API_KEY_SID, settings.TWILIO_API_KEY_SECRET,
                        grants=[grant], identity=identity, nbf=issued_at, valid_until=issued_at + ttl_seconds)
    return token.to_jwt()


# TwiML ---------------------------------------------------------------------

def digits_aloud(digits: str) -> str:
    """Digits one by one ("1 5 5 5"), for <Say>: read slowly and singly, never as a number."""
    return " ".join(digits.lstrip("+"))


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


def twiml_screen(*, prompt: str, action_url: str, timeout: int) -> str:
    """Whisper `prompt` to whoever answered a number leg and wait `timeout` seconds for one
    key. The action is requested with the key, and with `Digits` empty when none came
    (`actionOnEmptyResult`); `finishOnKey=""` makes `#` a key like any other. The
    `<Hangup/>` after the `<Gather>` is only reached if the action is not requested."""
    response = VoiceResponse()
    gather = response.gather(input="dtmf", num_digits=1, timeout=timeout, finish_on_key="",
                             action_on_empty_result=True, action=action_url, method="POST")
    gather.say(prompt)
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

TWILIO_API = "https://api.twilio.com"


class ApiBaseHttpClient(TwilioHttpClient):
    """twilio's HTTP client, sending what the SDK addresses to TWILIO_API to `api_base`
    instead (the simulator, a test's fake): the SDK has no setting for its base URL, and
    a custom HTTP client is its documented extension point (docs/PROVIDER.md)."""

    def __init__(self, api_base: str, **kwargs):
        super().__init__(**kwargs)
        self.api_base = api_base.rstrip("/")

    def address(self, url: str) -> str:
        """`url` moved from TWILIO_API to `api_base`; any other URL as it is."""
        if url == TWILIO_API or url.startswith(TWILIO_API + "/"):
            return self.api_base + url[len(TWILIO_API):]
        return url

    def request(self, method, url, *args, **kwargs):
        return super().request(method, self.address(url), *args, **kwargs)


@lru_cache(maxsize=1)
def _client() -> Client:
    api_base = settings.TWILIO_API_BASE.rstrip("/")
    if api_base == TWILIO_API:
        http_client = TwilioHttpClient(timeout=REST_TIMEOUT_SECONDS)
    else:
        http_client = ApiBaseHttpClient(api_base, timeout=REST_TIMEOUT_SECONDS)
    return Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client)


def call_redirect(call_sid: str, url: str) -> None:
    """Make the live call fetch new TwiML from `url`."""
    try:
        _client().calls(call_sid).update(url=url, method="POST")
    except (TwilioException, OSError) as exc:
        raise _failure(f"redirect of {call_sid}", exc) from exc


def _to_address(kind: str, address: str, parameters: dict[str, str] | None = None) -> str:
    """What `To` says: `client:<identity>`, with `parameters` as its query string (Twilio's
    custom parameters for a client callee, which its Voice SDKs hand to the app:
    docs/PROVIDER.md, "Client legs' parameters"); a SIP URI or number as it is."""
    if kind != "client":
        return address
    return f"client:{address}?{urlencode(parameters)}" if parameters else f"client:{address}"


class Added(NamedTuple):
    """A participant just added: its leg's CallSid and the conference's SID (CF…)."""

    call_sid: str
    conference_sid: str


def participant_add(*, conference: str, kind: str, address: str, caller_id: str, label: str, status_url: str,
                    conference_status_url: str, timeout: int, muted: bool = False,
                    parameters: dict[str, str] | None = None) -> Added:
    """Dial `address` into the conference named `conference` (its friendly name: Twilio
    creates a participant under a friendly name, and creates the conference if it is new).
    `parameters`: custom parameters a `client` callee's voice SDK receives with the call."""
    try:
        participant = _client().conferences(conference).participants.create(
            from_=caller_id, to=_to_address(kind, address, parameters), label=label, timeout=timeout, muted=muted,
            beep="false", start_conference_on_enter=True, end_conference_on_exit=False,
            status_callback=status_url, status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            conference_status_callback=conference_status_url, conference_status_callback_method="POST",
            conference_status_callback_event=["start", "end", "join", "leave"],
        )
    except (TwilioException, OSError) as exc:
        raise _failure(f"adding {label} to {conference}", exc) from exc
    return Added(call_sid=participant.call_sid, conference_sid=participant.conference_sid or "")


def conference_sid_for(name: str) -> str | None:
    """The SID of the live conference named `name` (`in-progress`, else one still
    waiting to start, `init`); None when there is none (it ended, or never began)."""
    try:
        for status in ("in-progress", "init"):
            found = _client().conferences.list(friendly_name=name, status=status, limit=1)
            if found:
                return found[0].sid
    except (TwilioException, OSError) as exc:
        raise _failure(f"looking up conference {name}", exc) from exc
    return None


def _participant(conference_sid: str, call_sid: str):
    """A participant, under its conference's SID (`CF…`): Twilio fetches, updates and
    deletes participants only that way (twilio_api_v2010.json, ConferenceSid
    `^CF[0-9a-fA-F]{32}$`); under a friendly name it answers 404."""
    return _client().conferences(conference_sid).participants(call_sid)


def participant_remove(*, conference_sid: str, call_sid: str) -> None:
    try:
        _participant(conference_sid, call_sid).delete()
    except (TwilioException, OSError) as exc:
        raise _failure(f"removing {call_sid} from {conference_sid}", exc) from exc


def participant_mute(*, conference_sid: str, call_sid: str, muted: bool = True) -> None:
    try:
        _participant(conference_sid, call_sid).update(muted=muted)
    except (TwilioException, OSError) as exc:
        raise _failure(f"muting {call_sid} in {conference_sid}", exc) from exc


def participant_hold(*, conference_sid: str, call_sid: str, hold: bool, hold_url: str | None = None) -> None:
    """Put a participant on hold (it hears `hold_url`, audio or TwiML, and nobody hears
    it) or take it off hold."""
    options = {"hold_url": hold_url, "hold_method": "GET"} if hold and hold_url else {}
    try:
        _participant(conference_sid, call_sid).update(hold=hold, **options)
    except (TwilioException, OSError) as exc:
        raise _failure(f"{'holding' if hold else 'unholding'} {call_sid} in {conference_sid}", exc) from exc


def call_hangup(call_sid: str) -> None:
    try:
        _client().calls(call_sid).update(status="completed")
    except (TwilioException, OSError) as exc:
        raise _failure(f"hang-up of {call_sid}", exc) from exc


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


def call_place_url(*, to: str, from_: str, url: str, status_url: str, timeout: int) -> str:
    """Place an outbound call to `to` from our number `from_`; once answered it fetches its
    TwiML from `url` (POST). Its progress (initiated, ringing, answered, completed) goes to
    `status_url`; unanswered after `timeout` seconds of ringing it ends `no-answer`
    (Twilio's CreateCall with `Url`). Returns the new call's CallSid."""
    try:
        placed = _client().calls.create(
            to=to, from_=from_, url=url, method="POST", timeout=timeout,
            status_callback=status_url, status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"])
    except (TwilioException, OSError) as exc:
        error = _failure(f"placing a call to {to}", exc)
        if isinstance(exc, ReadTimeout):  # the request went out and may have placed the call: never twice
            error.transient = False
        raise error from exc
    return placed.sid


# What the provider says a call is doing now (Twilio's call statuses).
ENDED_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# The ended statuses of a call that was never answered (all but `completed`).
UNANSWERED_STATUSES = ENDED_STATUSES - {"completed"}


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
