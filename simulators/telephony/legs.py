"""A call or leg of the simulated provider (`Leg`), how a simulated device reacts to a call
(`Behaviour`), and a <Gather> collecting keys (`Gathering`): the state that the TwiML engine
(provider.py) and the conference engine (conference.py) both act on, apart from either.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from simulators.telephony import twiml
from simulators.telephony.common import API_VERSION, Callback, Fetch, Inline, iso, rfc2822

ENDED = ("completed", "busy", "no-answer", "failed", "canceled")
BEHAVIOURS = ("answer", "no-answer", "busy", "fail")


@dataclass(frozen=True)
class Behaviour:
    """How a simulated device (a dialled client, SIP address or number) reacts to a call."""

    action: str = "answer"
    answer_after: float | None = None  # None: SIMULATOR_ANSWER_DELAY_SECONDS
    hangup_after: float | None = None  # the device hangs up this long after answering
    press: str | None = None  # keys it presses in every <Gather> it hears (None: none, like voicemail)
    press_after: float | None = None  # seconds into the <Gather> it presses them (None: at once)
    # A `client:` device registered with an Access Token (tokens.py): its identity, and when the
    # token expires (epoch seconds). None: registered without one.
    token_identity: str | None = None
    token_expires_at: int | None = None

    def as_json(self) -> dict:
        token = None if self.token_identity is None else {
            "identity": self.token_identity,
            "expires_at": datetime.fromtimestamp(self.token_expires_at, UTC).isoformat().replace("+00:00", "Z")}
        return {"behaviour": self.action, "answer_after": self.answer_after, "hangup_after": self.hangup_after,
                "press": self.press, "press_after": self.press_after, "access_token": token}


class Leg:
    """One call or call leg, as the provider sees it."""

    def __init__(self, *, sid: str, account_sid: str, direction: str, from_: str, to: str,
                 status: str, now: datetime, parent: Leg | None = None,
                 forwarded_from: str | None = None, caller_name: str | None = None):
        self.sid = sid
        self.account_sid = account_sid
        self.direction = direction
        self.from_ = from_
        self.to = to
        self.status = status
        self.parent = parent
        self.forwarded_from = forwarded_from
        self.caller_name = caller_name
        self.created_at = now
        self.updated_at = now
        self.answered_at: datetime | None = None
        self.ended_at: datetime | None = None
        self._started = time.monotonic()
        self.events: list[dict] = []
        self.children: list[Leg] = []
        self.callback: Callback | None = None
        self.sequence = 0
        self.activity = status
        self.hangup_by: str | None = None
        self.redirect: Fetch | Inline | None = None
        self.wake = asyncio.Event()
        self.runner: asyncio.Task | None = None
        self.outbox: asyncio.Task | None = None
        self.unanswered_status: str | None = None  # how it ends if never answered
        self.bridged: Leg | None = None
        self.participant = None  # its current conference.Participant, if in (or joining) a conference
        self.participations: list = []  # every conference.Participant it has been
        self.gathering: Gathering | None = None  # a <Gather> waiting for keys
        # The custom parameters a `client` callee's voice SDK receives with this call (from the
        # query of a participant create's `To`: twiml.client_parameters).
        self.parameters: dict[str, str] = {}

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def duration(self) -> int:
        if not self.answered_at:
            return 0
        return int(((self.ended_at or datetime.now(UTC)) - self.answered_at).total_seconds())

    def record(self, event: str, **detail) -> dict:
        entry = {"t_ms": round((time.monotonic() - self._started) * 1000, 1),
                 "at": iso(datetime.now(UTC)), "event": event, **detail}
        self.events.append(entry)
        return entry

    def params(self) -> dict[str, str]:
        """The parameters Twilio sends with every request about this call."""
        params = {
            "AccountSid": self.account_sid, "CallSid": self.sid, "From": self.from_, "To": self.to,
            "Caller": self.from_, "Called": self.to, "CallStatus": self.status,
            "Direction": self.direction, "ApiVersion": API_VERSION,
        }
        if self.parent:
            params["ParentCallSid"] = self.parent.sid
        if self.forwarded_from:
            params["ForwardedFrom"] = self.forwarded_from
        if self.caller_name:
            params["CallerName"] = self.caller_name
        return params

    def as_json(self) -> dict:
        return {
            "sid": self.sid, "parent_call_sid": self.parent.sid if self.parent else None,
            "direction": self.direction, "from": self.from_, "to": self.to,
            "forwarded_from": self.forwarded_from, "caller_name": self.caller_name,
            "parameters": dict(self.parameters),
            "status": self.status, "activity": self.activity,
            "created_at": iso(self.created_at), "answered_at": iso(self.answered_at),
            "ended_at": iso(self.ended_at), "duration": self.duration if self.ended else None,
            "hung_up_by": self.hangup_by, "children": [child.sid for child in self.children],
            "conference": self.participant.summary() if self.participant else None,
            "conferences": [participant.summary() for participant in self.participations],
            "said": [event["text"] for event in self.events if event["event"] == "say"],
            "digits": [event["digits"] for event in self.events if event["event"] == "digits"],
            "events": list(self.events),
        }

    def as_resource(self) -> dict:
        """The Twilio REST representation of the call."""
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}"
        return {
            "sid": self.sid, "account_sid": self.account_sid,
            "parent_call_sid": self.parent.sid if self.parent else None,
            "to": self.to, "to_formatted": self.to, "from": self.from_, "from_formatted": self.from_,
            "status": self.status, "direction": self.direction,
            "date_created": rfc2822(self.created_at), "date_updated": rfc2822(self.updated_at),
            "start_time": rfc2822(self.answered_at or self.created_at), "end_time": rfc2822(self.ended_at),
            "duration": str(self.duration) if self.ended else None,
            "forwarded_from": self.forwarded_from, "caller_name": self.caller_name,
            "answered_by": None, "api_version": API_VERSION, "group_sid": None,
            "phone_number_sid": None, "price": None, "price_unit": "USD", "queue_time": "0",
            "trunk_sid": None, "uri": base + ".json", "subresource_uris": {},
        }


class Gathering:
    """A <Gather> collecting keys: what arrived so far and the event that says more did."""

    def __init__(self, gather: twiml.Gather):
        self.gather = gather
        self.keys: list[str] = []
        self.arrived = asyncio.Event()
