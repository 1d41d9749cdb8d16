"""The simulated GSM carrier: call forwarding per line, the handset's power, simultaneous ring,
and calls to handsets.

A line is a handset's own number. Its user sets call forwarding with MMI strings
(3GPP TS 22.030 §6.5 and Annex B; the services are 3GPP TS 22.082's):

    service code  kind          3GPP service
    21            always        CFU, call forwarding unconditional
    67            busy          CFB, call forwarding on mobile subscriber busy
    61            no_answer     CFNRy, call forwarding on no reply (with its timer T, 5..30 s)
    62            unreachable   CFNRc, call forwarding on mobile subscriber not reachable
    004           (group)       all conditional call forwarding: 67 + 61 + 62
    002           (group)       all call forwarding: 21 + 67 + 61 + 62

    **SC*<number>#            register (and activate) forwarding to <number>
    **SC*<number>*<BS>#       the same for a basic service group (10, 11 or 19: groups with telephony)
    **61*<number>*<BS>*<T>#   no reply with its timer T; **61*<number>**<T># without BS; T absent: 20
    *SC*<number>#             the same as ** (activation with a number is a registration)
    *SC#                      activate the registered number again
    #SC#                      deactivate, keeping the number
    *#SC#                     interrogate: active or not, to where (and T)
    ##SC#                     erase

A call to a line (`place_call`):
- `always` active: forwarded at once; the handset never rings;
- handset off: with `unreachable` active forwarded at once, else the caller hears "not
  reachable" (with simultaneous ring set, the parallel call rings alone);
- otherwise the handset rings; with `no_answer` active and nothing done within T seconds
  (times the config's `carrier_timer_scale`), it stops ringing and the call is forwarded;
  a reject (user busy) forwards on busy; with simultaneous ring set, the number is called
  at once in parallel and the first to answer wins: the handset answering hangs the
  parallel call up (the provider sees the caller hang up), the parallel call answered
  stops the handset ringing.

A forwarded (or parallel) call to one of the provider's numbers reaches the provider as an
inbound call From the caller, To the target, ForwardedFrom the line. Timers and watchers
run on the simulator's event loop and are cancelled by `reset()`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from simulators.telephony.legs import Leg
from simulators.telephony.provider import MAX_CALLS, Provider, SimulatorError, iso

log = logging.getLogger("simulators.telephony")

E164 = re.compile(r"^\+[1-9][0-9]{5,14}$")
_MMI = re.compile(r"^(?P<procedure>\*\*|\*#|##|\*|#)(?P<code>[0-9]+)(?P<rest>(?:\*[^*#]*)*)#$")

# kind → (service code, 3GPP service)
SERVICES = {
    "always": ("21", "cfu"),
    "busy": ("67", "cfb"),
    "no_answer": ("61", "cfnry"),
    "unreachable": ("62", "cfnrc"),
}
KIND_OF_CODE = {code: kind for kind, (code, _) in SERVICES.items()}
GROUPS = {
    "002": ("all", ("always", "busy", "no_answer", "unreachable")),
    "004": ("all_conditional", ("busy", "no_answer", "unreachable")),
}
TIMERS = (5, 10, 15, 20, 25, 30)  # 3GPP TS 22.082: the no reply condition timer, 5 to 30 s in steps of 5
DEFAULT_TIMER = 20
# Basic service groups (3GPP TS 22.030 Annex C) that include telephony: all teleservices,
# telephony, all teleservices except SMS. Calls in the simulation are telephony.
TELEPHONY_GROUPS = ("10", "11", "19")
PROCEDURES = {"**": "registration", "*": "activation", "#": "deactivation", "*#": "interrogation",
              "##": "erasure"}
POLL_SECONDS = 0.02  # how often a parallel call's state is looked at


def check_e164(value, what: str) -> str:
    if not isinstance(value, str) or not E164.match(value):
        raise SimulatorError(400, "invalid_phone_number", f"{what} must be an E.164 number like +15551234567.")
    return value


@dataclass
class Forwarding:
    kind: str = "busy"
    target: str | None = None
    active: bool = False
    timer: int | None = None  # no_answer only: T in seconds

    @property
    def forwards(self) -> bool:
        return self.active and self.target is not None

    def as_json(self) -> dict:
        body = {"service": SERVICES[self.kind][1], "active": self.active, "target": self.target}
        if self.kind == "no_answer":
            body["timer"] = self.timer
        return body


@dataclass
class LineState:
    forwarding: dict[str, Forwarding] = field(
        default_factory=lambda: {kind: Forwarding(kind=kind) for kind in SERVICES})
    handset_on: bool = True
    simultaneous_ring: str | None = None


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
    forwarded_because: str | None = None  # busy, no_answer, unreachable, always, simultaneous_ring
    provider_call_sid: str | None = None
    handset_ringing: bool = False
    simultaneous_ring_to: str | None = None
    events: list[dict] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def record(self, event: str, **detail) -> None:
        self.events.append({"at": iso(datetime.now(UTC)), "event": event, **detail})


class Carrier:
    def __init__(self, provider: Provider):
        self.provider = provider
        self.lines: dict[str, LineState] = {}
        self.calls: dict[str, CarrierCall] = {}
        self._tasks: set[asyncio.Task] = set()

    async def reset(self) -> None:
        """Forget every line and call; cancel every timer (nothing fires after this)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.lines.clear()
        self.calls.clear()

    def _line(self, line: str) -> LineState:
        return self.lines.setdefault(line, LineState())

    def _spawn(self, call: CarrierCall, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        call.tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator carrier task failed", exc_info=task.exception())

    # -- MMI -----------------------------------------------------------------------

    def dial_mmi(self, line, code) -> dict:
        """Apply an MMI string dialled on `line`; answer what the network would display."""
        line = check_e164(line, "line")
        if not isinstance(code, str):
            raise SimulatorError(400, "invalid_mmi", "code must be a string such as *#67#.")
        match = _MMI.match(code.replace(" ", ""))
        if not match:
            raise SimulatorError(400, "invalid_mmi", f"{code!r} is not an MMI supplementary-service code.")
        service_code = match["code"]
        if service_code not in KIND_OF_CODE and service_code not in GROUPS:
            raise SimulatorError(400, "unsupported_service",
                                 f"Service code {service_code} is not simulated; only call forwarding is: "
                                 "21 (always), 67 (busy), 61 (no reply), 62 (not reachable), "
                                 "004 (all conditional), 002 (all).")
        fields = match["rest"].split("*")[1:]
        if len(fields) > 3:
            raise SimulatorError(400, "invalid_mmi", f"{code!r} has more than three supplementary information "
                                                     "fields (number, basic service, timer).")
        number, basic_service, timer = (fields + [None, None, None])[:3]
        procedure = match["procedure"]
        registration = procedure == "**" or (procedure == "*" and bool(number))
        operation = "registration" if registration else PROCEDURES[procedure]
        kinds = GROUPS[service_code][1] if service_code in GROUPS else (KIND_OF_CODE[service_code],)
        takes_timer = "no_answer" in kinds

        if basic_service not in (None, "") and basic_service not in TELEPHONY_GROUPS:
            raise SimulatorError(400, "unsupported_basic_service",
                                 f"Basic service group {basic_service} does not include telephony; only calls are "
                                 f"simulated (use none, {', '.join(TELEPHONY_GROUPS)}).")
        if procedure == "**" and not number:
            raise SimulatorError(400, "invalid_mmi", f"{code!r}: a registration needs a number.")
        if registration:
            check_e164(number, "the forwarding number")
        elif number:
            raise SimulatorError(400, "invalid_mmi", f"{code!r}: only a registration (**{service_code}*<number>#) "
                                                     "takes a number.")
        if timer not in (None, ""):
            if not (registration and takes_timer):
                raise SimulatorError(400, "invalid_mmi", f"{code!r}: only a registration of 61, 004 or 002 takes "
                                                         "a no-reply timer.")
            if not timer.isdigit() or int(timer) not in TIMERS:
                raise SimulatorError(400, "invalid_timer",
                                     f"The no-reply timer must be one of {', '.join(map(str, TIMERS))} seconds, "
                                     f"not {timer!r}.")

        state = self._line(line)
        members = [state.forwarding[kind] for kind in kinds]
        if registration:
            for forwarding in members:
                forwarding.target, forwarding.active = number, True
                if forwarding.kind == "no_answer":
                    forwarding.timer = int(timer) if timer else DEFAULT_TIMER
        elif procedure == "*":
            ready = [forwarding for forwarding in members if forwarding.target]
            if not ready:
                raise SimulatorError(400, "no_forwarding_number", "No forwarding number is registered on this line.")
            for forwarding in ready:
                forwarding.active = True
        elif procedure == "#":
            for forwarding in members:
                forwarding.active = False
        elif procedure == "##":
            for forwarding in members:
                forwarding.target, forwarding.active, forwarding.timer = None, False, None
        answer = {"line": line, "code": code, "operation": operation}
        if service_code in GROUPS:
            return answer | {"service": GROUPS[service_code][0],
                             "services": [forwarding.as_json() for forwarding in members]}
        return answer | members[0].as_json()

    def line_json(self, line: str) -> dict:
        """The line as the network holds it: forwarding on busy at the top (as before), every kind,
        the handset's power and simultaneous ring."""
        state = self.lines.get(line) or LineState()
        return {"line": line, **state.forwarding["busy"].as_json(),
                "forwarding": {kind: forwarding.as_json() for kind, forwarding in state.forwarding.items()},
                "handset": "on" if state.handset_on else "off", "simultaneous_ring": state.simultaneous_ring}

    def set_line(self, line, *, handset=None, simultaneous_ring=...) -> dict:
        """The handset's power (`on`/`off`) and the line's simultaneous-ring number (None: off)."""
        line = check_e164(line, "line")
        if handset is not None and handset not in ("on", "off"):
            raise SimulatorError(400, "invalid_input", "handset must be on or off.")
        if simultaneous_ring is not ... and simultaneous_ring is not None:
            check_e164(simultaneous_ring, "simultaneous_ring")
        state = self._line(line)
        if handset is not None:
            state.handset_on = handset == "on"
        if simultaneous_ring is not ...:
            state.simultaneous_ring = simultaneous_ring
        return self.line_json(line)

    # -- calls to a handset --------------------------------------------------------

    def get(self, call_id: str) -> CarrierCall:
        call = self.calls.get(call_id)
        if call is None:
            raise SimulatorError(404, "not_found", f"No carrier call {call_id}.")
        return call

    def place_call(self, *, line, caller, caller_name=None) -> CarrierCall:
        """Someone calls `line`: forwarded at once, not reachable, or the handset rings."""
        line = check_e164(line, "line")
        if caller is not None:
            check_e164(caller, "caller")
        if caller_name is not None and not isinstance(caller_name, str):
            raise SimulatorError(400, "invalid_input", "caller_name must be a string.")
        call = CarrierCall(id=str(uuid.uuid4()), line=line, caller=caller, caller_name=caller_name,
                           created_at=datetime.now(UTC))
        if len(self.calls) >= MAX_CALLS:
            ended = [key for key, old in self.calls.items() if old.ended_at]
            for key in ended[:len(self.calls) - MAX_CALLS + 1]:
                del self.calls[key]
        self.calls[call.id] = call
        state = self._line(line)
        call.record("incoming", caller=caller or "withheld")
        always, unreachable = state.forwarding["always"], state.forwarding["unreachable"]
        if always.forwards:
            self._forward(call, always.target, "always")
            return call
        if not state.handset_on:
            call.record("handset not reachable")
            if unreachable.forwards:
                self._forward(call, unreachable.target, "unreachable")
            elif state.simultaneous_ring:
                self._ring_in_parallel(call, state.simultaneous_ring)
                call.state = "forwarded"
                call.forwarded_because = "simultaneous_ring"
                call.forwarded_to = state.simultaneous_ring
            else:
                self._end(call, "not_reachable", reason="the handset is off and nothing forwards when unreachable")
            return call
        call.handset_ringing = True
        call.record("ringing", caller=caller or "withheld")
        if state.simultaneous_ring:
            self._ring_in_parallel(call, state.simultaneous_ring)
        no_answer = state.forwarding["no_answer"]
        if no_answer.forwards:
            seconds = (no_answer.timer or DEFAULT_TIMER) * self.provider.config.carrier_timer_scale
            call.record("no-reply timer started", timer=no_answer.timer, seconds=seconds)
            self._spawn(call, self._no_reply(call, seconds))
        return call

    def _require(self, call: CarrierCall, *states: str) -> None:
        if call.state not in states:
            raise SimulatorError(409, "wrong_state", f"The call is {call.state}, not {' or '.join(states)}.")

    def _end(self, call: CarrierCall, state: str, *, reason: str) -> None:
        call.state = state
        call.handset_ringing = False
        call.ended_at = datetime.now(UTC)
        call.record(state, reason=reason)
        self._stop_tasks(call)

    def _stop_tasks(self, call: CarrierCall) -> None:
        current = asyncio.current_task()
        for task in call.tasks:
            if task is not current:
                task.cancel()

    def _parallel_leg(self, call: CarrierCall) -> Leg | None:
        """The live provider leg of the call's simultaneous ring, if any."""
        if call.simultaneous_ring_to is None or call.provider_call_sid is None:
            return None
        leg = self.provider.calls.get(call.provider_call_sid)
        return leg if leg is not None and not leg.ended else None

    def _forward(self, call: CarrierCall, target: str, because: str, *, retry_webhook: bool = False) -> None:
        """The handset (if it rang) stops; the call goes to `target`."""
        if call.handset_ringing:
            call.handset_ringing = False
            call.record("handset stops ringing")
        self._stop_tasks(call)
        parallel = self._parallel_leg(call)
        call.state = "forwarded"
        call.forwarded_to = target
        call.forwarded_because = because
        if parallel is not None and parallel.to == target:
            call.record("forwarded", to=target, because=because, provider_call_sid=parallel.sid,
                        note="the simultaneous-ring call to that number goes on")
            return
        if parallel is not None:
            self.provider.hangup(parallel, "caller")
            call.record("simultaneous ring canceled", provider_call_sid=parallel.sid)
        call.simultaneous_ring_to = None
        if target in self.provider.config.server_numbers:
            leg = self.provider.inbound_call(from_=call.caller, to=target, forwarded_from=call.line,
                                             caller_name=call.caller_name, retry_webhook=retry_webhook)
            call.provider_call_sid = leg.sid
            call.record("forwarded", to=target, because=because, provider_call_sid=leg.sid)
        else:
            call.provider_call_sid = None
            call.record("forwarded", to=target, because=because, note="not a provider number: leaves the simulation")

    def _ring_in_parallel(self, call: CarrierCall, number: str) -> None:
        call.simultaneous_ring_to = number
        if number not in self.provider.config.server_numbers:
            call.record("simultaneous ring", to=number, note="not a provider number: rings outside the simulation")
            return
        leg = self.provider.inbound_call(from_=call.caller, to=number, forwarded_from=call.line,
                                         caller_name=call.caller_name)
        call.provider_call_sid = leg.sid
        call.record("simultaneous ring", to=number, provider_call_sid=leg.sid)
        self._spawn(call, self._watch_parallel(call, leg))

    async def _watch_parallel(self, call: CarrierCall, leg: Leg) -> None:
        """The parallel call answered first: the handset stops ringing. It ended unanswered:
        the handset rings on (or, if it had stopped, the caller is left with nothing: missed)."""
        while not leg.ended and not leg.answered_at:
            await asyncio.sleep(POLL_SECONDS)
        if call.provider_call_sid != leg.sid or call.ended_at:
            return
        if leg.answered_at:
            if call.state == "ringing":
                call.state = "forwarded"
                call.forwarded_to = leg.to
                call.forwarded_because = "simultaneous_ring"
                call.handset_ringing = False
                call.record("simultaneous ring answered: the handset stops ringing", provider_call_sid=leg.sid)
                self._stop_tasks(call)  # the no-reply timer
            return
        call.record("simultaneous ring ended unanswered", provider_call_sid=leg.sid, status=leg.status)
        if call.state == "forwarded" and call.forwarded_because == "simultaneous_ring":
            self._end(call, "missed", reason="the simultaneous-ring call ended unanswered")

    async def _no_reply(self, call: CarrierCall, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if call.state != "ringing":
            return
        no_answer = self._line(call.line).forwarding["no_answer"]
        if not no_answer.forwards:
            call.record("no-reply timer expired", note="forwarding on no reply is no longer active")
            return
        call.record("no reply", timer=no_answer.timer)
        self._forward(call, no_answer.target, "no_answer")

    def reject(self, call: CarrierCall, *, retry_webhook: bool = False) -> CarrierCall:
        """The handset rejects (user busy): forward on busy, or the caller hears busy."""
        self._require(call, "ringing")
        call.record("rejected on handset")
        busy = self._line(call.line).forwarding["busy"]
        if busy.forwards:
            self._forward(call, busy.target, "busy", retry_webhook=retry_webhook)
            return call
        parallel = self._parallel_leg(call)
        if parallel is not None:
            call.handset_ringing = False
            call.state = "forwarded"
            call.forwarded_to = parallel.to
            call.forwarded_because = "simultaneous_ring"
            call.record("handset stops ringing", note="the simultaneous-ring call goes on")
            return call
        self._end(call, "busy", reason="no forwarding on busy")
        return call

    def answer(self, call: CarrierCall) -> CarrierCall:
        """Answered on the handset: the no-reply timer stops; a simultaneous-ring call is hung up
        (the provider sees the caller hang up)."""
        self._require(call, "ringing")
        call.state = "answered_on_handset"
        call.handset_ringing = False
        call.record("answered on handset")
        parallel = self._parallel_leg(call)
        self._stop_tasks(call)
        if parallel is not None:
            self.provider.hangup(parallel, "caller")
            call.record("simultaneous ring canceled", provider_call_sid=parallel.sid)
        return call

    def hangup(self, call: CarrierCall) -> CarrierCall:
        """The caller hangs up, whatever the call had become."""
        self._require(call, "ringing", "answered_on_handset", "forwarded")
        call.record("caller hung up")
        self._end(call, "missed" if call.state == "ringing" else "completed", reason="the caller hung up")
        if call.provider_call_sid:
            leg = self.provider.calls.get(call.provider_call_sid)
            if leg is not None and not leg.ended:
                self.provider.hangup(leg, "caller")
        return call

    def as_json(self, call: CarrierCall) -> dict:
        leg = self.provider.calls.get(call.provider_call_sid) if call.provider_call_sid else None
        return {
            "id": call.id, "line": call.line, "caller": call.caller, "caller_name": call.caller_name,
            "state": call.state, "handset_ringing": call.handset_ringing,
            "created_at": iso(call.created_at), "ended_at": iso(call.ended_at),
            "forwarded_to": call.forwarded_to, "forwarded_because": call.forwarded_because,
            "simultaneous_ring_to": call.simultaneous_ring_to, "provider_call_sid": call.provider_call_sid,
            "provider_call_status": leg.status if leg else None, "events": list(call.events),
        }
