"""The TwiML subset the simulated provider follows, parsed into plain objects.

Verbs: <Say>, <Play loop>, <Pause length>, <Hangup/>, <Reject reason>,
<Redirect method>, <Gather input numDigits timeout action method finishOnKey
actionOnEmptyResult> (DTMF) around <Say>, <Play> and <Pause>,
<Dial action method timeout timeLimit answerOnBridge callerId> with <Client>,
<Sip> and <Number> nouns (statusCallback, statusCallbackEvent,
statusCallbackMethod) or one <Conference> noun (startConferenceOnEnter,
endConferenceOnExit, muted, beep, waitUrl, waitMethod, statusCallback,
statusCallbackEvent, statusCallbackMethod, participantLabel); a <Dial> with
bare text dials that one number. Anything else is a TwiML error, as Twilio
would report it: the caller hears "an application error has occurred" and the
call ends.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

DIAL_EVENTS = ("initiated", "ringing", "answered", "completed")
# What <Conference statusCallbackEvent> may name (Twilio's list); the simulator sends the first six.
CONFERENCE_EVENTS = ("start", "end", "join", "leave", "mute", "hold", "modify", "speaker", "announcement")
BEEPS = ("true", "false", "onEnter", "onExit")
DTMF_KEYS = "0123456789*#"


class TwiMLError(ValueError):
    """The document is not TwiML the simulator can follow."""


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class Play:
    url: str
    loop: int  # 0: until something else happens


@dataclass(frozen=True)
class Pause:
    length: float


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class Reject:
    reason: str  # rejected | busy


@dataclass(frozen=True)
class Redirect:
    url: str
    method: str


def client_parameters(to: str) -> tuple[str, dict[str, str]]:
    """A REST `To` of `client:<identity>?name=value&…` (Twilio's custom parameters for a client
    callee, https://www.twilio.com/docs/voice/how-share-information-between-your-applications)
    as the address the device registered (`client:<identity>`) and the parameters its voice SDK
    receives with the call (`call.customParameters`). Any other `To`: as it is, no parameters."""
    if not to.startswith("client:") or "?" not in to:
        return to, {}
    address, query = to.split("?", 1)
    return address, dict(parse_qsl(query, keep_blank_values=True))


@dataclass(frozen=True)
class Noun:
    """One party to ring: kind is client, sip or number; `to` is what Twilio puts in
    the leg's To (`client:<identity>`, the SIP URI, the number)."""

    kind: str
    address: str
    status_callback: str | None = None
    status_callback_events: tuple[str, ...] = ()
    status_callback_method: str = "POST"

    @property
    def to(self) -> str:
        return f"client:{self.address}" if self.kind == "client" else self.address


@dataclass(frozen=True)
class Conference:
    """<Dial><Conference>name</Conference></Dial>: join (or create) the conference `name`.

    `wait_url` None means Twilio's default hold music; "" means silence."""

    name: str
    muted: bool = False
    beep: str = "true"
    start_conference_on_enter: bool = True
    end_conference_on_exit: bool = False
    wait_url: str | None = None
    wait_method: str = "POST"
    status_callback: str | None = None
    status_callback_events: tuple[str, ...] = ()
    status_callback_method: str = "POST"
    participant_label: str | None = None

    kind = "conference"

    @property
    def to(self) -> str:
        return f"conference:{self.name}"


@dataclass(frozen=True)
class Dial:
    nouns: tuple[Noun | Conference, ...]
    action: str | None = None
    method: str = "POST"
    timeout: float = 30.0
    time_limit: float = 14400.0
    answer_on_bridge: bool = False
    caller_id: str | None = None

    @property
    def conference(self) -> Conference | None:
        return self.nouns[0] if isinstance(self.nouns[0], Conference) else None


@dataclass(frozen=True)
class Gather:
    """<Gather input="dtmf">: play the nested verbs, collect keys, post them to `action`
    (None: the current document's URL)."""

    verbs: tuple[Say | Play | Pause, ...] = ()
    action: str | None = None
    method: str = "POST"
    timeout: float = 5.0
    num_digits: int | None = None
    finish_on_key: str = "#"
    action_on_empty_result: bool = False
    input: str = "dtmf"


Verb = Say | Play | Pause | Hangup | Reject | Redirect | Dial | Gather


@dataclass(frozen=True)
class Document:
    verbs: tuple[Verb, ...] = field(default_factory=tuple)


def parse(text: str) -> Document:
    """Parse a TwiML document; raise TwiMLError for anything outside the subset."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise TwiMLError(f"not XML: {exc}") from None
    if root.tag != "Response":
        raise TwiMLError(f"root element is <{root.tag}>, not <Response>")
    return Document(tuple(_verb(element) for element in root))


def _verb(element: ET.Element) -> Verb:
    text = (element.text or "").strip()
    attrs = element.attrib
    match element.tag:
        case "Say":
            return Say(text)
        case "Play":
            return Play(text, _number(attrs.get("loop", "1"), "Play loop", integer=True))
        case "Pause":
            return Pause(_number(attrs.get("length", "1"), "Pause length"))
        case "Hangup":
            return Hangup()
        case "Reject":
            reason = attrs.get("reason", "rejected")
            if reason not in ("rejected", "busy"):
                raise TwiMLError(f"<Reject reason={reason!r}> is not rejected or busy")
            return Reject(reason)
        case "Redirect":
            if not text:
                raise TwiMLError("<Redirect> without a URL")
            return Redirect(text, _method(attrs.get("method")))
        case "Dial":
            return _dial(element, text)
        case "Gather":
            return _gather(element)
    raise TwiMLError(f"<{element.tag}> is not supported by the simulator")


def _dial(element: ET.Element, text: str) -> Dial:
    nouns = [_noun(child) for child in element]
    if text and nouns:
        raise TwiMLError("<Dial> mixes a bare number with nouns")
    if any(isinstance(noun, Conference) for noun in nouns) and len(nouns) > 1:
        raise TwiMLError("<Dial><Conference> must be the only noun of its <Dial>")
    if text:
        nouns = [Noun("number", text)]
    if not nouns:
        raise TwiMLError("<Dial> names nobody to dial")
    attrs = element.attrib
    return Dial(
        nouns=tuple(nouns),
        action=attrs.get("action") or None,
        method=_method(attrs.get("method")),
        timeout=_number(attrs.get("timeout", "30"), "Dial timeout"),
        time_limit=_number(attrs.get("timeLimit", "14400"), "Dial timeLimit"),
        answer_on_bridge=attrs.get("answerOnBridge", "false").lower() == "true",
        caller_id=attrs.get("callerId") or None,
    )


def _noun(element: ET.Element) -> Noun | Conference:
    if element.tag == "Conference":
        return _conference(element)
    kinds = {"Client": "client", "Sip": "sip", "Number": "number"}
    if element.tag not in kinds:
        raise TwiMLError(f"<Dial><{element.tag}> is not supported by the simulator")
    address = (element.text or "").strip()
    identity = element.find("Identity")
    if element.tag == "Client" and identity is not None:
        address = (identity.text or "").strip()
    if not address:
        raise TwiMLError(f"<{element.tag}> without an address")
    attrs = element.attrib
    events = tuple(e for e in re.split(r"[\s,]+", attrs.get("statusCallbackEvent", "")) if e)
    unknown = set(events) - set(DIAL_EVENTS)
    if unknown:
        raise TwiMLError(f"statusCallbackEvent {' '.join(sorted(unknown))} is not one of {' '.join(DIAL_EVENTS)}")
    callback = attrs.get("statusCallback") or None
    if callback and not events:
        events = ("completed",)
    return Noun(kinds[element.tag], address, callback, events, _method(attrs.get("statusCallbackMethod")))


def _conference(element: ET.Element) -> Conference:
    name = (element.text or "").strip()
    if not name:
        raise TwiMLError("<Conference> without a name")
    attrs = element.attrib
    events = _events(attrs.get("statusCallbackEvent", ""), CONFERENCE_EVENTS, "<Conference> statusCallbackEvent")
    callback = attrs.get("statusCallback") or None
    if callback and not events:
        events = ("start", "end")
    beep = attrs.get("beep", "true")
    if beep not in BEEPS and beep.lower() not in ("true", "false"):
        raise TwiMLError(f"<Conference beep={beep!r}> is not one of {' '.join(BEEPS)}")
    return Conference(
        name=name,
        muted=_bool(attrs.get("muted"), False, "<Conference muted>"),
        beep=beep.lower() if beep.lower() in ("true", "false") else beep,
        start_conference_on_enter=_bool(attrs.get("startConferenceOnEnter"), True, "startConferenceOnEnter"),
        end_conference_on_exit=_bool(attrs.get("endConferenceOnExit"), False, "endConferenceOnExit"),
        wait_url=attrs.get("waitUrl"),
        wait_method=_method(attrs.get("waitMethod")),
        status_callback=callback,
        status_callback_events=events,
        status_callback_method=_method(attrs.get("statusCallbackMethod")),
        participant_label=attrs.get("participantLabel") or None,
    )


def _gather(element: ET.Element) -> Gather:
    attrs = element.attrib
    inputs = set((attrs.get("input") or "dtmf").split())
    if "dtmf" not in inputs or inputs - {"dtmf", "speech"}:
        raise TwiMLError(f"<Gather input={attrs.get('input')!r}>: the simulator collects DTMF only")
    verbs = []
    for child in element:
        if child.tag not in ("Say", "Play", "Pause"):
            raise TwiMLError(f"<Gather><{child.tag}> is not allowed (only Say, Play, Pause)")
        verbs.append(_verb(child))
    num_digits = attrs.get("numDigits")
    if num_digits is not None:
        num_digits = int(_number(num_digits, "Gather numDigits", integer=True))
        if num_digits < 1:
            raise TwiMLError("Gather numDigits must be at least 1")
    finish = attrs.get("finishOnKey", "#")
    if len(finish) > 1 or (finish and finish not in DTMF_KEYS):
        raise TwiMLError(f"Gather finishOnKey {finish!r} is not one of {DTMF_KEYS} or empty")
    return Gather(
        verbs=tuple(verbs),
        action=attrs.get("action") or None,
        method=_method(attrs.get("method")),
        timeout=_number(attrs.get("timeout", "5"), "Gather timeout"),
        num_digits=num_digits,
        finish_on_key=finish,
        action_on_empty_result=_bool(attrs.get("actionOnEmptyResult"), False, "actionOnEmptyResult"),
        input=" ".join(sorted(inputs)),
    )


def _events(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    events = tuple(e for e in re.split(r"[\s,]+", value) if e)
    unknown = set(events) - set(allowed)
    if unknown:
        raise TwiMLError(f"{what} {' '.join(sorted(unknown))} is not one of {' '.join(allowed)}")
    return events


def _bool(value: str | None, default: bool, what: str) -> bool:
    if value is None or value == "":
        return default
    if value.lower() not in ("true", "false"):
        raise TwiMLError(f"{what} {value!r} is not true or false")
    return value.lower() == "true"


def _method(value: str | None) -> str:
    method = (value or "POST").upper()
    if method not in ("GET", "POST"):
        raise TwiMLError(f"method {value!r} is not GET or POST")
    return method


def _number(value: str, what: str, *, integer: bool = False) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise TwiMLError(f"{what} {value!r} is not a number") from None
    if number < 0:
        raise TwiMLError(f"{what} {value!r} is negative")
    return number
