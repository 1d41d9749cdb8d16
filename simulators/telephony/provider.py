"""The simulated voice provider: calls, their legs, and the TwiML engine.

Each call (or leg) is a `Leg`. A leg that follows TwiML has one runner task that
fetches a document, executes its verbs in order and moves on to whatever comes
next (a <Redirect>, a <Dial> action's answer, a REST update). Outside events
never cancel the runner: they set `leg.hangup_by` or `leg.redirect` and wake the
leg, and whichever verb is waiting (a held <Play loop="0">, a <Pause>, a ringing
or bridged <Dial>) stops and lets the runner take the new course. That is how a
REST update abandons what the call was doing, and how a caller hanging up during
a <Dial> still produces the dial action request Twilio sends.

Callbacks of one leg are sent in order (one queue per leg); a <Dial> waits for
its child legs' callbacks before it requests its action, so a backend sees
child completed → action → parent completed, as with Twilio in the usual case.

Everything that happens lands on the leg's `events`, with the time since the leg
was created, so tests and people can see where the seconds went.

Conferences (<Dial><Conference>, the Participants REST API) live in
`conference.py`, whose `ConferenceEngine` this provider inherits.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from urllib.parse import urljoin

from simulators.telephony import twiml
from simulators.telephony.common import (  # noqa: F401 (re-exported for app and carrier)
    API_VERSION,
    CONTINUE,
    STOP,
    Callback,
    Fetch,
    Inline,
    SimulatorError,
    iso,
    new_call_sid,
    rfc2822,
    wait_any,
)
from simulators.telephony.conference import ConferenceEngine
from simulators.telephony.config import SimulatorConfig
from simulators.telephony.legs import Behaviour, Gathering, Leg
from simulators.telephony.outbound import Outbound, Sent

log = logging.getLogger("simulators.telephony")

WITHHELD = "anonymous"  # what From says when the caller withheld their number
# Calls kept in memory; beyond this the oldest ended ones are forgotten (a long-running dev server).
MAX_CALLS = 2000


class Provider(ConferenceEngine):
    """The voice provider: numbers, calls, conferences, simulated devices."""

    def __init__(self, config: SimulatorConfig, outbound: Outbound):
        self.config = config
        self.outbound = outbound
        self.calls: dict[str, Leg] = {}
        self.devices: dict[str, Behaviour] = {}
        self._tasks: set[asyncio.Task] = set()
        ConferenceEngine.__init__(self)

    # -- bookkeeping ---------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task failed", exc_info=task.exception())

    async def reset(self) -> None:
        """Forget every call and device; running calls stop without callbacks."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.calls.clear()
        self.devices.clear()
        self.conferences.clear()

    def _new_leg(self, **fields) -> Leg:
        if len(self.calls) >= MAX_CALLS:
            ended = [sid for sid, old in self.calls.items() if old.ended]
            for sid in ended[:len(self.calls) - MAX_CALLS + 1]:
                del self.calls[sid]
        leg = Leg(sid=new_call_sid(), account_sid=self.config.account_sid, now=self._now(), **fields)
        self.calls[leg.sid] = leg
        return leg

    def get(self, sid: str) -> Leg:
        leg = self.calls.get(sid)
        if leg is None:
            raise SimulatorError(404, "not_found", f"No call {sid}.")
        return leg

    def set_device(self, address: str, behaviour: Behaviour) -> None:
        self.devices[address] = behaviour

    def behaviour_for(self, to: str) -> Behaviour:
        for key in (to, to.removeprefix("client:"), f"client:{to}"):
            if key in self.devices:
                return self.devices[key]
        return Behaviour()

    def _answer_delay(self, behaviour: Behaviour) -> float:
        return self.config.answer_delay_seconds if behaviour.answer_after is None else behaviour.answer_after

    # -- state changes -------------------------------------------------------------

    def _set_status(self, leg: Leg, status: str) -> None:
        leg.status = status
        leg.activity = status
        leg.updated_at = self._now()

    def _answer(self, leg: Leg) -> None:
        if leg.answered_at or leg.ended:
            return
        self._set_status(leg, "in-progress")
        leg.answered_at = leg.updated_at
        leg.record("answered")
        self._progress(leg, "answered")

    def _end(self, leg: Leg, status: str, *, reason: str) -> None:
        if leg.ended:
            return
        self._set_status(leg, status)
        leg.ended_at = leg.updated_at
        leg.bridged = None
        leg.record("ended", status=status, reason=reason, duration=leg.duration)
        log.info("simulator call %s ended: %s (%s)", leg.sid, status, reason)
        self._progress(leg, "completed")

    def _progress(self, leg: Leg, event: str) -> None:
        """Queue the status callback for `event` if the leg's callback asked for it."""
        callback = leg.callback
        if callback is None or event not in callback.events:
            return
        status = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress"}.get(event, leg.status)
        params = leg.params() | {
            "CallStatus": status, "CallbackSource": "call-progress-events",
            "SequenceNumber": str(leg.sequence), "Timestamp": rfc2822(self._now()),
        }
        leg.sequence += 1
        if event == "completed":
            params["CallDuration"] = str(leg.duration)
        self._enqueue(leg, Fetch(callback.url, callback.method, label=f"status callback: {status}"), params)

    def _enqueue(self, leg: Leg, request: Fetch, params: dict[str, str]) -> None:
        previous = leg.outbox

        async def deliver():
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            token = uuid.uuid4().hex  # the same on every attempt, as Twilio's
            sent = await self.outbound.send(request.url, request.method, params, idempotency_token=token)
            retries = 0
            loop = asyncio.get_running_loop()
            give_up_at = loop.time() + self.config.webhook_timeout_seconds  # all attempts together (Twilio's `tt`)
            while sent.transient and retries < self.config.callback_retries:
                wait = min(self.config.callback_retry_max_wait,
                           self.config.callback_retry_seconds if sent.retry_after is None else sent.retry_after)
                if loop.time() + wait >= give_up_at:
                    break
                leg.record("callback", label=request.label, retry_in=wait, **sent.as_json())
                await asyncio.sleep(wait)
                retries += 1
                sent = await self.outbound.send(request.url, request.method, params, idempotency_token=token)
            leg.record("callback", label=request.label, **sent.as_json(), **({"retry": retries} if retries else {}))

        leg.outbox = self.spawn(deliver())

    async def _flush(self, *legs: Leg) -> None:
        outboxes = [leg.outbox for leg in legs if leg.outbox is not None]
        if outboxes:
            await asyncio.gather(*outboxes, return_exceptions=True)

    def _take_interrupt(self, leg: Leg):
        if leg.hangup_by:
            return STOP
        if leg.redirect is not None:
            step, leg.redirect = leg.redirect, None
            leg.wake.clear()
            return step
        leg.wake.clear()
        return None

    # -- incoming calls --------------------------------------------------------------

    def inbound_call(self, *, from_: str | None, to: str, forwarded_from: str | None = None,
                     caller_name: str | None = None, retry_webhook: bool = False) -> Leg:
        """A call reaches one of the server numbers: the voice webhook is posted at once."""
        if to not in self.config.server_numbers:
            raise SimulatorError(400, "not_a_server_number",
                                 f"{to} is not one of the server numbers ({', '.join(self.config.server_numbers)}).")
        leg = self._new_leg(direction="inbound", from_=from_ or WITHHELD, to=to, status="ringing",
                            forwarded_from=forwarded_from, caller_name=caller_name)
        # A Twilio number's status callback: told when the call ends.
        leg.callback = Callback(self.config.status_url, "POST", ("completed",))
        leg.record("incoming", **{"from": leg.from_}, to=to, forwarded_from=forwarded_from)
        log.info("simulator call %s from %s to %s (forwarded from %s)", leg.sid, leg.from_, to, forwarded_from)
        first = Fetch(self.config.voice_url, "POST", label="voice webhook")
        leg.runner = self.spawn(self._run(leg, first, retries=1 if retry_webhook else 0))
        return leg

    def outbound_call(self, *, from_: str, to: str, url: str | None, method: str, document: twiml.Document | None,
                      callback: Callback | None, timeout: float) -> Leg:
        """REST `Calls.json`: ring `to`; when it answers, follow the TwiML at `url` (or `document`)."""
        leg = self._new_leg(direction="outbound-api", from_=from_, to=to, status="queued")
        leg.callback = callback
        leg.record("created", **{"from": from_}, to=to, url=url)
        first = Inline(document, None) if document is not None else Fetch(url, method, label="call url")
        leg.runner = self.spawn(self._run_outbound(leg, first, timeout))
        return leg

    async def _run_outbound(self, leg: Leg, first, timeout: float) -> None:
        self._progress(leg, "initiated")
        self._set_status(leg, "ringing")
        leg.record("ringing")
        self._progress(leg, "ringing")
        outcome = await self._ring(leg, timeout)
        if outcome != "answered":
            self._end(leg, outcome, reason="not answered")
            await self._flush(leg)
            return
        self._answer(leg)
        await self._run(leg, self._take_interrupt(leg) or first)

    # -- the TwiML engine ------------------------------------------------------------

    async def _run(self, leg: Leg, step, *, retries: int = 0) -> None:
        while step is not None and step is not STOP and not leg.ended:
            if isinstance(step, Fetch):
                document = await self._fetch(leg, step, retries=retries)
                retries = 0
                interrupt = self._take_interrupt(leg)
                if interrupt is not None:
                    step = interrupt
                    continue
                if document is None:
                    step = self._application_error(leg)
                    continue
                step = Inline(document, step.url)
            step = await self._execute(leg, step.document, step.url)
        self._finish(leg)
        await self._flush(leg)

    def _finish(self, leg: Leg) -> None:
        if leg.answered_at:
            status = "completed"
        elif leg.unanswered_status:
            status = leg.unanswered_status
        elif leg.hangup_by in ("caller", "api", "device"):
            status = "canceled"
        else:
            status = "completed"
        reason = f"hung up by {leg.hangup_by}" if leg.hangup_by else "TwiML ended"
        self._end(leg, status, reason=reason)

    def _application_error(self, leg: Leg):
        self._answer(leg)
        leg.record("say", text="We are sorry, an application error has occurred. Goodbye.")
        leg.hangup_by = leg.hangup_by or "provider"
        return STOP

    async def _fetch(self, leg: Leg, request: Fetch, *, retries: int = 0) -> twiml.Document | None:
        params = leg.params() | dict(request.extra)
        token = uuid.uuid4().hex
        sent = await self.outbound.send(request.url, request.method, params, idempotency_token=token)
        answers = [sent]
        for _ in range(retries):  # a retried webhook: same CallSid, same idempotency token
            leg.record("webhook", label=request.label, twiml=sent.body, **sent.as_json())
            sent = await self.outbound.send(request.url, request.method, params, idempotency_token=token)
            answers.append(sent)
        detail = {"retry_same_answer": answers[0].body == sent.body} if retries else {}
        leg.record("webhook", label=request.label, twiml=sent.body, **sent.as_json(), **detail)
        return self._document(leg, sent)

    def _document(self, leg: Leg, sent: Sent) -> twiml.Document | None:
        if not sent.ok:
            leg.record("error", message=f"{sent.url} answered {sent.status or sent.error}")
            return None
        try:
            return twiml.parse(sent.body)
        except twiml.TwiMLError as exc:
            leg.record("error", message=f"invalid TwiML from {sent.url}: {exc}")
            return None

    async def _execute(self, leg: Leg, document: twiml.Document, url: str | None):
        """Run the verbs of one document; answer what comes next (a step, STOP or None)."""
        for verb in document.verbs:
            interrupt = self._take_interrupt(leg)
            if interrupt is not None:
                return interrupt
            outcome = await self._verb(leg, verb, url)
            if outcome is not CONTINUE:
                return outcome
        return self._take_interrupt(leg)

    async def _verb(self, leg: Leg, verb, url: str | None):
        match verb:
            case twiml.Say(text=text):
                self._answer(leg)
                leg.record("say", text=text)
            case twiml.Play(url=media, loop=0):
                self._answer(leg)
                leg.activity = "held"
                leg.record("play", url=media, loop=0, held=True)
                await wait_any([leg.wake])
                leg.activity = leg.status
            case twiml.Play(url=media, loop=loop):
                self._answer(leg)
                leg.record("play", url=media, loop=loop)
            case twiml.Pause(length=length):
                self._answer(leg)
                leg.activity = "pause"
                leg.record("pause", length=length)
                await wait_any([leg.wake], timeout=length)
                leg.activity = leg.status
            case twiml.Hangup():
                leg.record("hangup", by="twiml")
                leg.hangup_by = "twiml"
                return STOP
            case twiml.Reject(reason=reason):
                leg.record("reject", reason=reason)
                leg.unanswered_status = "busy" if reason == "busy" else "no-answer"
                leg.hangup_by = "twiml"
                return STOP
            case twiml.Redirect(url=target, method=method):
                leg.record("redirect", url=self._resolve(url, target), method=method)
                return Fetch(self._resolve(url, target), method, label="redirect")
            case twiml.Dial() if verb.conference is not None:
                return await self._dial_conference(leg, verb, url)
            case twiml.Dial():
                return await self._dial(leg, verb, url)
            case twiml.Gather():
                return await self._gather(leg, verb, url)
        return CONTINUE

    def _resolve(self, base: str | None, url: str) -> str:
        return urljoin(base or self.config.public_base_url + "/", url)

    # -- <Dial> ----------------------------------------------------------------------

    async def _dial(self, leg: Leg, dial: twiml.Dial, url: str | None):
        if not dial.answer_on_bridge:
            self._answer(leg)
        leg.activity = "dialing"
        leg.record("dial", to=[noun.to for noun in dial.nouns], timeout=dial.timeout, action=dial.action,
                   answer_on_bridge=dial.answer_on_bridge)
        children = [self._dial_leg(leg, noun, dial, url) for noun in dial.nouns]
        rings = {self.spawn(self._ring(child, None)): child for child in children}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + dial.timeout
        winner: Leg | None = None
        outcomes: dict[str, str] = {}
        while rings and winner is None and not leg.wake.is_set():
            wake = asyncio.ensure_future(leg.wake.wait())
            done, _ = await asyncio.wait([*rings, wake], timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if not done:
                break  # the dial timeout
            for task in [task for task in done if task in rings]:
                child = rings.pop(task)
                outcome = task.result()
                if outcome == "answered" and winner is None:
                    winner = child
                else:
                    outcomes[child.sid] = outcome
                    self._end(child, outcome if outcome != "answered" else "canceled", reason="dial")
        interrupted = leg.wake.is_set()
        for task, child in rings.items():  # still ringing: canceled by the caller, or not answered in time
            task.cancel()
            status = "canceled" if interrupted or winner else "no-answer"
            outcomes[child.sid] = status
            self._end(child, status, reason="dial " + ("abandoned" if interrupted or winner else "timeout"))

        if winner is not None and not interrupted:
            dial_status = await self._bridge(leg, winner, dial)
            reported = winner
        else:
            if winner is not None:  # it answered at the very moment the call was interrupted
                self._end(winner, "canceled", reason="dial abandoned")
                outcomes[winner.sid] = "canceled"
            reported = winner or children[0]
            if leg.hangup_by and not winner:
                dial_status = "canceled"
            else:
                dial_status = self._dial_status(list(outcomes.values()))
        leg.bridged = None
        leg.activity = leg.status
        if not leg.answered_at:
            leg.unanswered_status = None if dial_status == "completed" else dial_status
        leg.record("dial_ended", dial_call_sid=reported.sid, dial_call_status=dial_status,
                   dial_call_duration=reported.duration)
        await self._flush(*children)

        if leg.redirect is not None and not leg.hangup_by:
            return CONTINUE  # a REST update took over: no action request, as with Twilio
        if dial.action:
            extra = (("DialCallSid", reported.sid), ("DialCallStatus", dial_status),
                     ("DialCallDuration", str(reported.duration)))
            if leg.hangup_by:
                extra += (("CallStatus", "completed"),)
            request = Fetch(self._resolve(url, dial.action), dial.method, label="dial action", extra=extra)
            document = await self._fetch(leg, request)
            if leg.hangup_by:
                return STOP  # the caller is gone: Twilio requests the action but ignores its TwiML
            if leg.redirect is not None:
                return CONTINUE
            if document is None:
                return self._application_error(leg)
            return Inline(document, request.url)
        return STOP if leg.hangup_by else CONTINUE

    def _dial_status(self, outcomes: list[str]) -> str:
        for status in ("completed", "busy", "no-answer", "failed", "canceled"):
            if status in outcomes:
                return status
        return "failed"

    def _dial_leg(self, parent: Leg, noun: twiml.Noun, dial: twiml.Dial, url: str | None) -> Leg:
        child = self._new_leg(direction="outbound-dial", from_=dial.caller_id or parent.from_, to=noun.to,
                              status="queued", parent=parent)
        parent.children.append(child)
        if noun.status_callback:
            child.callback = Callback(self._resolve(url, noun.status_callback), noun.status_callback_method,
                                      noun.status_callback_events)
        child.record("initiated", kind=noun.kind, address=noun.address)
        self._progress(child, "initiated")
        self._set_status(child, "ringing")
        child.record("ringing")
        self._progress(child, "ringing")
        return child

    async def _ring(self, leg: Leg, timeout: float | None) -> str:
        """Ring the simulated device at leg.to: answered, busy, failed, canceled or no-answer."""
        behaviour = self.behaviour_for(leg.to)
        delay = self._answer_delay(behaviour)
        limits = [limit for limit in (None if behaviour.action == "no-answer" else delay, timeout)
                  if limit is not None]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(limits) if limits else None
        while not leg.hangup_by:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            await wait_any([leg.wake], remaining)
            if leg.wake.is_set() and not leg.hangup_by:
                leg.wake.clear()  # a REST update while ringing: it applies once answered
        if leg.hangup_by:
            return "canceled" if leg.hangup_by == "api" else "busy"  # the device declining sounds busy
        if behaviour.action in ("busy", "fail"):
            return "busy" if behaviour.action == "busy" else "failed"
        if behaviour.action == "no-answer" or (timeout is not None and delay > timeout):
            return "no-answer"
        return "answered"

    async def _bridge(self, leg: Leg, child: Leg, dial: twiml.Dial) -> str:
        """Caller and device talk until one hangs up, a REST update moves either, or timeLimit."""
        self._answer(child)
        self._answer(leg)
        leg.bridged = child
        leg.activity = child.activity = "bridged"
        leg.record("bridged", child_sid=child.sid, to=child.to)
        behaviour = self.behaviour_for(child.to)
        limit = dial.time_limit
        if behaviour.hangup_after is not None:
            limit = min(limit, behaviour.hangup_after)
        if child.redirect is not None:
            child.wake.set()
        await wait_any([leg.wake, child.wake], timeout=limit)
        if child.redirect is not None and not child.hangup_by and not leg.hangup_by:
            # The device's leg was moved elsewhere by a REST update: it leaves the bridge alive.
            child.activity = child.status
            child.record("left bridge")
            child.runner = self.spawn(self._run(child, self._take_interrupt(child)))
            return "completed"
        if child.hangup_by:
            by = child.hangup_by
        elif leg.hangup_by:
            by = "the caller" if leg.hangup_by == "caller" else f"{leg.hangup_by} (on the parent call)"
        elif leg.redirect is not None:
            by = "a REST update of the parent call"
        else:
            by = "device" if behaviour.hangup_after is not None and behaviour.hangup_after <= dial.time_limit \
                else "timeLimit"
            child.hangup_by = by
        self._end(child, "completed", reason=f"hung up by {by}")
        return "completed"

    # -- <Gather> ------------------------------------------------------------------------

    async def _gather(self, leg: Leg, gather: twiml.Gather, url: str | None):
        """Play the nested verbs, collect keys (POST /simulator/calls/{sid}/digits), then request
        the action with Digits; without any key within `timeout`, go on after the <Gather>."""
        self._answer(leg)
        state = Gathering(gather)
        leg.gathering = state
        leg.activity = "gathering"
        leg.record("gather", input=gather.input, num_digits=gather.num_digits, timeout=gather.timeout,
                   finish_on_key=gather.finish_on_key, action=gather.action)
        if leg.direction != "inbound":  # the device that answered this call may key something (`press`)
            behaviour = self.behaviour_for(leg.to)
            if behaviour.press:
                self.spawn(self._press(leg, state, behaviour))
        try:
            digits, finished_on_key, how = await self._collect(leg, state)
        finally:
            leg.gathering = None
            leg.activity = leg.status
        leg.record("gather_ended", digits=digits, finished_on_key=finished_on_key or None, reason=how)
        if how == "interrupted" or (not digits and not gather.action_on_empty_result):
            return CONTINUE  # an interrupt is taken before the next verb; no input: the next verb
        target = self._resolve(url, gather.action) if gather.action else url
        if target is None:  # inline TwiML without an action: nowhere to post
            leg.record("error", message="<Gather> without action in TwiML that has no URL")
            return self._application_error(leg)
        extra = (("Digits", digits),) + ((("FinishedOnKey", finished_on_key),) if finished_on_key else ())
        request = Fetch(target, gather.method, label="gather action", extra=extra)
        document = await self._fetch(leg, request)
        if leg.hangup_by:
            return STOP
        if leg.redirect is not None:
            return CONTINUE
        if document is None:
            return self._application_error(leg)
        return Inline(document, request.url)

    async def _collect(self, leg: Leg, state: Gathering) -> tuple[str, str, str]:
        """(digits, the finishing key or "", how it ended: num_digits, finish_on_key, timeout, interrupted)."""
        gather = state.gather
        for verb in gather.verbs:  # the prompts; a key pressed cuts them short
            if state.keys or leg.wake.is_set():
                break
            match verb:
                case twiml.Say(text=text):
                    leg.record("say", text=text, during="gather")
                case twiml.Play(url=media, loop=0):
                    leg.record("play", url=media, loop=0, during="gather")
                    await wait_any([leg.wake, state.arrived])
                case twiml.Play(url=media, loop=loop):
                    leg.record("play", url=media, loop=loop, during="gather")
                case twiml.Pause(length=length):
                    leg.record("pause", length=length, during="gather")
                    await wait_any([leg.wake, state.arrived], timeout=length)
        loop = asyncio.get_running_loop()
        digits = ""
        deadline = loop.time() + gather.timeout
        while True:
            while state.keys:
                key = state.keys.pop(0)
                if gather.finish_on_key and key == gather.finish_on_key:
                    return digits, key, "finish_on_key"
                digits += key
                deadline = loop.time() + gather.timeout  # timeout counts from the last key
                if gather.num_digits and len(digits) >= gather.num_digits:
                    if state.keys:
                        leg.record("digits_ignored", digits="".join(state.keys))
                    return digits, "", "num_digits"
            if leg.hangup_by or leg.redirect is not None:
                return digits, "", "interrupted"
            state.arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return digits, "", "timeout"
            await wait_any([leg.wake, state.arrived], remaining)

    async def _press(self, leg: Leg, state: Gathering, behaviour: Behaviour) -> None:
        """The simulated device presses its `press` keys `press_after` seconds into the <Gather>."""
        await asyncio.sleep(behaviour.press_after or 0)
        if leg.gathering is state and not leg.ended:
            self.send_digits(leg, behaviour.press)

    def send_digits(self, leg: Leg, digits) -> Leg:
        """The caller presses keys (DTMF) during a <Gather>."""
        if not isinstance(digits, str) or not digits or any(key not in twiml.DTMF_KEYS for key in digits):
            raise SimulatorError(400, "invalid_input", "digits must be a non-empty string of 0-9, * and #.")
        if leg.ended:
            raise SimulatorError(409, "call_ended", f"Call {leg.sid} has already ended.")
        if leg.gathering is None:
            raise SimulatorError(409, "not_gathering", f"Call {leg.sid} is not in a <Gather>: nobody listens for keys.")
        leg.record("digits", digits=digits)
        leg.gathering.keys.extend(digits)
        leg.gathering.arrived.set()
        return leg

    # -- outside events ------------------------------------------------------------------

    def hangup(self, leg: Leg, party: str) -> Leg:
        """Someone hangs up: `caller` (the party who placed the call) or `device` (the one it reached)."""
        if party not in ("caller", "device"):
            raise SimulatorError(400, "invalid_party", "party must be caller or device.")
        if party == "caller":
            target = leg
            while target.parent is not None:
                target = target.parent
        elif leg.parent is not None:
            target = leg
        else:
            active = [child for child in leg.children if not child.ended]
            if active:
                for child in active:
                    self._hang_up(child, "device")
                return leg
            if leg.direction != "outbound-api":
                raise SimulatorError(409, "no_device", f"Call {leg.sid} is not connected to a device.")
            target = leg
        if target.ended:
            raise SimulatorError(409, "call_ended", f"Call {target.sid} has already ended.")
        self._hang_up(target, party)
        return target

    def device_legs(self, address: str) -> list[Leg]:
        """The answered, live legs to a device address (`client:web-1f…` or `web-1f…`)."""
        wanted = {address, address if address.startswith("client:") else f"client:{address}"}
        return [leg for leg in self.calls.values() if leg.to in wanted and not leg.ended and leg.answered_at]

    def device_hangup(self, address: str) -> list[Leg]:
        """The device at `address` hangs up its live call (its voice SDK's `disconnect()`)."""
        legs = self.device_legs(address)
        if not legs:
            raise SimulatorError(409, "no_call", f"{address} has no live call.")
        for leg in legs:
            self._hang_up(leg, "device")
        return legs

    def device_mute(self, address: str, muted: bool) -> list[Leg]:
        """The device at `address` mutes or unmutes its microphone (its voice SDK's `mute()`):
        local to the device, so the provider's conference state does not change; the leg
        records `device_muted` / `device_unmuted`."""
        legs = self.device_legs(address)
        if not legs:
            raise SimulatorError(409, "no_call", f"{address} has no live call.")
        for leg in legs:
            leg.record("device_muted" if muted else "device_unmuted")
        return legs

    def _hang_up(self, leg: Leg, by: str) -> None:
        leg.record("hangup", by=by)
        leg.hangup_by = leg.hangup_by or by
        if leg.participant is not None and leg.participant.joined:  # a ringing one: see _run_participant
            self._leave(leg.participant, "participant_hung_up", call_status="completed")
        leg.wake.set()

    def update(self, leg: Leg, *, url: str | None = None, method: str = "POST",
               document: twiml.Document | None = None, status: str | None = None) -> Leg:
        """REST update of a live call (Twilio's POST …/Calls/{sid}.json)."""
        if leg.ended:
            raise SimulatorError(400, "21220", "Call is not in-progress. Cannot redirect.")
        if status in ("completed", "canceled"):
            if status == "canceled" and leg.status == "in-progress":
                leg.record("rest update ignored", status=status)
                return leg
            self._hang_up(leg, "api")
            return leg
        if status:
            raise SimulatorError(400, "21200", f"Invalid Status {status!r}: use completed or canceled.")
        if document is not None:
            leg.record("rest update", twiml=True)
            leg.redirect = Inline(document, None)
        elif url:
            leg.record("rest update", url=url, method=method)
            leg.redirect = Fetch(url, method, label="rest update")
        else:
            raise SimulatorError(400, "21205", "Url, Twiml or Status is required.")
        if leg.participant is not None and leg.participant.joined:
            # The call leaves its conference to follow the new TwiML (a ringing participant joins
            # nothing: the update applies once it answers).
            self._leave(leg.participant, "participant_updated_via_api")
        leg.wake.set()
        return leg
