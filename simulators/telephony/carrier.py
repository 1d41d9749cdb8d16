"""The simulated GSM carrier: call forwarding on busy for each line, and calls to handsets.

A line is a handset's own number. Its user dials MMI strings (3GPP TS 22.030,
service code 67 = call forwarding on busy):

    **67*<number>#   register (and activate) forwarding to <number>
    *67*<number>#    the same (activation with a number)
    *67#             activate the registered number again
    #67#             deactivate, keeping the number
    *#67#            interrogate: active or not, and to where
    ##67#            erase

A call to a line rings the handset. When the handset rejects it (user busy) and
forwarding is active, the carrier forwards it: if the target is one of the
provider's numbers, the provider sees an inbound call From the caller, To the
target, ForwardedFrom the line. Without forwarding the caller hears busy.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from simulators.telephony.provider import MAX_CALLS, Provider, SimulatorError, iso

E164 = re.compile(r"^\+[1-9][0-9]{5,14}$")
_MMI = re.compile(r"^(?P<procedure>\*\*|\*#|##|\*|#)(?P<code>[0-9]+)(?:\*(?P<number>[^*#]*))?(?:\*[0-9]*)*#$")
CFB = "67"


def check_e164(value, what: str) -> str:
    if not isinstance(value, str) or not E164.match(value):
        raise SimulatorError(400, "invalid_phone_number", f"{what} must be an E.164 number like +15551234567.")
    return value


@dataclass
class Forwarding:
    target: str | None = None
    active: bool = False

    def as_json(self) -> dict:
        return {"service": "cfb", "active": self.active, "target": self.target}


@dataclass
class CarrierCall:
    id: str
    line: str
    caller: str | None
    caller_name: str | None
    created_at: datetime
    state: str = "ringing"
    ended_at: datetime | None = None
    forwarded_to: str | None = None
    provider_call_sid: str | None = None
    events: list[dict] = field(default_factory=list)

    def record(self, event: str, **detail) -> None:
        self.events.append({"at": iso(datetime.now(UTC)), "event": event, **detail})


class Carrier:
    def __init__(self, provider: Provider):
        self.provider = provider
        self.forwarding: dict[str, Forwarding] = {}
        self.calls: dict[str, CarrierCall] = {}

    def reset(self) -> None:
        self.forwarding.clear()
        self.calls.clear()

    # -- MMI -----------------------------------------------------------------------

    def dial_mmi(self, line, code) -> dict:
        """Apply an MMI string dialled on `line`; answer what the network would display."""
        line = check_e164(line, "line")
        if not isinstance(code, str):
            raise SimulatorError(400, "invalid_mmi", "code must be a string such as *#67#.")
        match = _MMI.match(code.replace(" ", ""))
        if not match:
            raise SimulatorError(400, "invalid_mmi", f"{code!r} is not an MMI supplementary-service code.")
        if match["code"] != CFB:
            raise SimulatorError(400, "unsupported_service",
                                 f"Service code {match['code']} is not simulated; only 67 (forwarding on busy) is.")
        procedure, number = match["procedure"], match["number"]
        forwarding = self.forwarding.setdefault(line, Forwarding())
        if procedure in ("**", "*") and number:
            forwarding.target = check_e164(number, "the forwarding number")
            forwarding.active = True
            operation = "registration"
        elif procedure == "*" and number is None:
            if not forwarding.target:
                raise SimulatorError(400, "no_forwarding_number", "No forwarding number is registered on this line.")
            forwarding.active = True
            operation = "activation"
        elif procedure == "#" and number is None:
            forwarding.active = False
            operation = "deactivation"
        elif procedure == "*#" and number is None:
            operation = "interrogation"
        elif procedure == "##" and number is None:
            forwarding.target, forwarding.active = None, False
            operation = "erasure"
        else:
            raise SimulatorError(400, "invalid_mmi", f"{code!r} is not a valid code for forwarding on busy.")
        return {"line": line, "code": code, "operation": operation, **forwarding.as_json()}

    def forwarding_of(self, line: str) -> dict:
        return {"line": line, **self.forwarding.get(line, Forwarding()).as_json()}

    # -- calls to a handset --------------------------------------------------------

    def get(self, call_id: str) -> CarrierCall:
        call = self.calls.get(call_id)
        if call is None:
            raise SimulatorError(404, "not_found", f"No carrier call {call_id}.")
        return call

    def place_call(self, *, line, caller, caller_name=None) -> CarrierCall:
        """Someone calls `line`: the handset rings."""
        line = check_e164(line, "line")
        if caller is not None:
            check_e164(caller, "caller")
        if caller_name is not None and not isinstance(caller_name, str):
            raise SimulatorError(400, "invalid_input", "caller_name must be a string.")
        call = CarrierCall(id=str(uuid.uuid4()), line=line, caller=caller, caller_name=caller_name,
                           created_at=datetime.now(UTC))
        call.record("ringing", caller=caller or "withheld")
        if len(self.calls) >= MAX_CALLS:
            ended = [key for key, old in self.calls.items() if old.ended_at]
            for key in ended[:len(self.calls) - MAX_CALLS + 1]:
                del self.calls[key]
        self.calls[call.id] = call
        return call

    def _require(self, call: CarrierCall, *states: str) -> None:
        if call.state not in states:
            raise SimulatorError(409, "wrong_state", f"The call is {call.state}, not {' or '.join(states)}.")

    def reject(self, call: CarrierCall, *, retry_webhook: bool = False) -> CarrierCall:
        """The handset rejects (user busy): forward on busy, or the caller hears busy."""
        self._require(call, "ringing")
        call.record("rejected on handset")
        forwarding = self.forwarding.get(call.line)
        if not forwarding or not forwarding.active or not forwarding.target:
            call.state = "busy"
            call.ended_at = datetime.now(UTC)
            call.record("busy", reason="no forwarding on busy")
            return call
        call.state = "forwarded"
        call.forwarded_to = forwarding.target
        if forwarding.target in self.provider.config.server_numbers:
            leg = self.provider.inbound_call(from_=call.caller, to=forwarding.target, forwarded_from=call.line,
                                             caller_name=call.caller_name, retry_webhook=retry_webhook)
            call.provider_call_sid = leg.sid
            call.record("forwarded", to=forwarding.target, provider_call_sid=leg.sid)
        else:
            call.record("forwarded", to=forwarding.target, note="not a provider number: leaves the simulation")
        return call

    def answer(self, call: CarrierCall) -> CarrierCall:
        self._require(call, "ringing")
        call.state = "answered_on_handset"
        call.record("answered on handset")
        return call

    def hangup(self, call: CarrierCall) -> CarrierCall:
        """The caller hangs up, whatever the call had become."""
        self._require(call, "ringing", "answered_on_handset", "forwarded")
        call.record("caller hung up")
        if call.state == "ringing":
            call.state = "missed"
        else:
            call.state = "completed"
        call.ended_at = datetime.now(UTC)
        if call.provider_call_sid:
            leg = self.provider.calls.get(call.provider_call_sid)
            if leg is not None and not leg.ended:
                self.provider.hangup(leg, "caller")
        return call

    def as_json(self, call: CarrierCall) -> dict:
        leg = self.provider.calls.get(call.provider_call_sid) if call.provider_call_sid else None
        return {
            "id": call.id, "line": call.line, "caller": call.caller, "caller_name": call.caller_name,
            "state": call.state, "created_at": iso(call.created_at), "ended_at": iso(call.ended_at),
            "forwarded_to": call.forwarded_to, "provider_call_sid": call.provider_call_sid,
            "provider_call_status": leg.status if leg else None, "events": list(call.events),
        }
