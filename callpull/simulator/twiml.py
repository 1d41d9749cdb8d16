"""The TwiML subset the simulated provider follows, parsed into plain objects.

Verbs: <Say>, <Play loop>, <Pause length>, <Hangup/>, <Reject reason>,
<Redirect method>, <Dial action method timeout timeLimit answerOnBridge callerId>
with <Client>, <Sip> and <Number> nouns (statusCallback, statusCallbackEvent,
statusCallbackMethod); a <Dial> with bare text dials that one number. Anything
else is a TwiML error, as Twilio would report it: the caller hears "an
application error has occurred" and the call ends.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

DIAL_EVENTS = ("initiated", "ringing", "answered", "completed")


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
class Dial:
    nouns: tuple[Noun, ...]
    action: str | None = None
    method: str = "POST"
    timeout: float = 30.0
    time_limit: float = 14400.0
    answer_on_bridge: bool = False
    caller_id: str | None = None


Verb = Say | Play | Pause | Hangup | Reject | Redirect | Dial


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
    raise TwiMLError(f"<{element.tag}> is not supported by the simulator")


def _dial(element: ET.Element, text: str) -> Dial:
    nouns = [_noun(child) for child in element]
    if text and nouns:
        raise TwiMLError("<Dial> mixes a bare number with nouns")
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


def _noun(element: ET.Element) -> Noun:
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
