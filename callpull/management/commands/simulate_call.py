"""Play one whole call against a running server and print every step: `manage.py simulate_call`.

A simulated handset app and tablet, for the demo. With `make run` going in
another terminal it: signs in as the demo user (creating it the first time),
registers a handset and a tablet (reached by the provider as client:demo-tablet),
registers the line, dials the forwarding code on the simulated carrier and
reports it, sets the line's policy, opens both WebSockets, then a caller rings
the line. The handset reports the call and follows the instruction; the tablet
acknowledges every frame and answers; the simulated provider connects it; the
caller hangs up after a while; finally the call's timeline is printed.

It only speaks HTTP and WebSocket to the server, like the real apps, and stops
with a plain message (not a traceback) when the server is unreachable or an
endpoint answers an error. The two devices it registered are deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime

import httpx
import websockets
from django.core.management.base import BaseCommand, CommandError

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "callpull simulator walkthrough"  # a demo account on a developer's machine
LINE = "+15550001234"
TABLET_ADDRESS = "demo-tablet"
TERMINAL = ("completed", "missed", "declined", "answered_on_handset", "failed")
HTTP_TIMEOUT_SECONDS = 10.0


class Failure(Exception):
    """Stops the walk-through with a message for the person watching."""


class Device:
    """One simulated app: its token and its WebSocket, acknowledging every event."""

    def __init__(self, walk: Walkthrough, label: str, token: str):
        self.walk, self.label, self.token = walk, label, token
        self.frames: list[dict] = []
        self.socket = None
        self.reader: asyncio.Task | None = None

    async def connect(self) -> None:
        url = self.walk.ws_url
        try:
            self.socket = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {self.token}"},
                                                   open_timeout=HTTP_TIMEOUT_SECONDS)
        except (TimeoutError, OSError, websockets.InvalidHandshake) as exc:
            raise Failure(f"cannot open the WebSocket {url}: {exc}") from None
        self.reader = asyncio.create_task(self._read())
        await self.wait_for("hello")

    async def _read(self) -> None:
        try:
            async for text in self.socket:
                frame = json.loads(text)
                self.frames.append(frame)
                kind = frame.get("type")
                acked = bool(frame.get("id")) and kind not in ("hello", "pong", "error")
                if acked:
                    await self.socket.send(json.dumps({"type": "ack", "id": frame["id"]}))
                call = frame.get("call") or {}
                extra = f" (call {call.get('state', '')})" if call else ""
                self.walk.say(self.label, f"<- {kind}{extra}{', acked' if acked else ''}")
        except websockets.ConnectionClosed:
            if self.socket.close_code and self.socket.close_code >= 4000:
                self.walk.say(self.label, f"WebSocket closed by the server with {self.socket.close_code}")

    async def wait_for(self, kind: str, call_id: str | None = None, *, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.walk.timeout)
        while time.monotonic() < deadline:
            for frame in self.frames:
                if frame.get("type") == kind and (call_id is None or (frame.get("call") or {}).get("id") == call_id):
                    return frame
            if self.reader is not None and self.reader.done():
                break
            await asyncio.sleep(0.01)
        raise Failure(f"the {self.label} received no {kind} frame" + (f" for call {call_id}" if call_id else ""))

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


class Walkthrough:
    def __init__(self, *, base: str, simulator: str, policy: str, caller: str, caller_name: str,
                 answer_after: float, talk: float, timeout: float, write):
        self.base, self.simulator = base.rstrip("/"), simulator.rstrip("/")
        self.ws_url = self.base.replace("http", "ws", 1) + "/ws/v1/"
        self.policy, self.caller, self.caller_name = policy, caller, caller_name
        self.answer_after, self.talk, self.timeout = answer_after, talk, timeout
        self.write = write
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.http: httpx.AsyncClient | None = None
        self.devices: list[Device] = []
        self.device_names: dict[str, str] = {}
        self.provider_seen: dict[str, int] = {}
        self.carrier_call_id: str | None = None
        self.provider_leg: dict | None = None
        self.follower: asyncio.Task | None = None
        self.call_id: str | None = None

    def say(self, who: str, text: str, *, at: str | None = None) -> None:
        """Print one step; `at` (ISO time) when it happened elsewhere, else now."""
        if at is not None:
            elapsed = _parse(at).timestamp() - self.started_wall
        else:
            elapsed = time.monotonic() - self.started
        self.write(f"{elapsed * 1000:8.0f} ms  {who:<9} {text}")

    # -- HTTP ------------------------------------------------------------------------

    async def request(self, method: str, url: str, *, token: str | None = None, body=None,
                      ok=(200, 201, 202, 204)) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self.http.request(method, url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Failure(f"cannot reach {url}: {exc or type(exc).__name__}. Is the server running "
                          f"(make run)?") from None
        if response.status_code not in ok:
            raise Failure(f"{method} {url} answered {response.status_code}: {_error_text(response)}")
        return response

    async def api(self, method: str, path: str, **kwargs) -> dict:
        response = await self.request(method, self.base + "/api/v1" + path, **kwargs)
        return response.json() if response.content else {}

    async def sim(self, method: str, path: str, body=None) -> dict:
        return (await self.request(method, self.simulator + path, body=body)).json()

    # -- the walk --------------------------------------------------------------------

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as self.http:
            try:
                await self._run()
            finally:
                await self._cleanup()

    async def _run(self) -> None:
        await self.request("GET", self.base + "/")
        try:
            await self.request("GET", self.simulator + "/")
        except Failure as exc:
            raise Failure(f"{exc}\nThe server runs the simulator when TWILIO_ACCOUNT_SID is unset; otherwise "
                          "start `manage.py simulator` and pass --simulator.") from None
        handset, tablet = await self.sign_in()
        line = await self.set_up_line(handset)
        self.say("setup", f"line policy: {self.policy}")
        await self.api("PATCH", f"/lines/{line['id']}", token=handset.token, body={"policy": self.policy})
        for device in (handset, tablet):
            await device.connect()

        carrier_call = await self.sim("POST", "/carrier/calls", {
            "line": LINE, "caller": self.caller, "caller_name": self.caller_name})
        self.carrier_call_id = carrier_call["id"]
        self.say("carrier", f"{self.caller} calls {LINE}: the handset rings")
        report = await self.api("POST", "/calls", token=handset.token, body={
            "report_id": str(uuid.uuid4()), "line": LINE, "caller": self.caller, "caller_name": self.caller_name})
        call, instruction = report["call"], report["instruction"]
        self.call_id = call["id"]
        self.say("handset", f"reported the call {call['id']}: instruction {instruction.get('action')}"
                            + (f" ({instruction['reason']})" if instruction.get("reason") else ""))

        if instruction.get("action") != "reject" and instruction.get("reason") not in (None, "policy_on_answer"):
            raise Failure(f"the backend will not take this call ({instruction.get('reason')}); "
                          "it keeps ringing on the handset")
        answering = asyncio.create_task(self.tablet_answers(tablet, call["id"]))
        told = asyncio.create_task(handset.wait_for("call.reject", call["id"]))
        try:
            if instruction.get("action") != "reject":
                # on_answer: the handset rings on until the backend tells it to reject, which
                # it does once the tablet answered; a failed answer must not leave it waiting.
                done, _ = await asyncio.wait({answering, told}, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            provider_sid = await self.handset_rejects(handset, carrier_call["id"], call["id"])
            await answering
        finally:
            answering.cancel()
            told.cancel()
            await asyncio.gather(answering, told, return_exceptions=True)
        await self.until_bridged(provider_sid, handset)
        self.say("caller", f"talking for {self.talk:g} s")
        await asyncio.sleep(self.talk)
        await self.sim("POST", f"/carrier/calls/{carrier_call['id']}/hangup")
        self.carrier_call_id = None
        self.say("caller", "hangs up")
        await self.until_provider_ended(provider_sid)
        final = await self.until_call_ended(handset, call["id"])
        self.print_timeline(final)

    async def sign_in(self) -> tuple[Device, Device]:
        handset = {"name": "Demo handset", "kind": "handset", "platform": "android"}
        tablet = {"name": "Demo tablet", "kind": "tablet", "platform": "android",
                  "connect": {"type": "client", "address": TABLET_ADDRESS}}
        first = await self._register(handset)
        if first is None:
            await self.api("POST", "/accounts", body={"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
            self.say("setup", f"created the demo account {DEMO_USERNAME!r}")
            first = await self._register(handset)
            if first is None:
                raise Failure("the demo account was created but its password is refused")
        second = await self._register(tablet)
        devices = [Device(self, "handset", first["token"]), Device(self, "tablet", second["token"])]
        self.device_names = {first["device"]["id"]: "handset", second["device"]["id"]: "tablet"}
        self.devices = devices
        self.say("setup", f"signed in as {DEMO_USERNAME!r}: handset and tablet (client:{TABLET_ADDRESS}) registered")
        return devices[0], devices[1]

    async def _register(self, device: dict) -> dict | None:
        response = await self.request("POST", self.base + "/api/v1/devices", ok=(201, 401), body={
            "username": DEMO_USERNAME, "password": DEMO_PASSWORD, "device": device})
        return response.json() if response.status_code == 201 else None

    async def set_up_line(self, handset: Device) -> dict:
        line = await self.api("POST", "/lines", token=handset.token, body={"number": LINE})
        self.say("handset", f"line {line['number']} -> server number {line['server_number']}")
        code = line["mmi"]["register"]
        await self.sim("POST", "/carrier/mmi", {"line": LINE, "code": code})
        status = await self.sim("POST", "/carrier/mmi", {"line": LINE, "code": line["mmi"]["interrogate"]})
        self.say("carrier", f"dialled {code}, then {line['mmi']['interrogate']}: "
                            f"{'active' if status['active'] else 'inactive'} to {status['target']}")
        reported = await self.api("POST", f"/lines/{line['id']}/forwarding", token=handset.token, body={
            "state": "active" if status["active"] else "inactive", "target": status["target"]})
        self.say("handset", f"reported forwarding: {reported['forwarding']['state']}")
        return line

    async def tablet_answers(self, tablet: Device, call_id: str) -> None:
        await tablet.wait_for("call.ringing", call_id)
        self.say("tablet", f"rings; the user answers in {self.answer_after:g} s")
        await asyncio.sleep(self.answer_after)
        await self.api("POST", f"/calls/{call_id}/answer", token=tablet.token)
        self.say("tablet", "answered (POST /calls/{id}/answer)")

    async def handset_rejects(self, handset: Device, carrier_call_id: str, call_id: str) -> str:
        rejected = await self.sim("POST", f"/carrier/calls/{carrier_call_id}/reject")
        self.say("handset", f"rejects: carrier says {rejected['state']}"
                            + (f" to {rejected['forwarded_to']}" if rejected.get("forwarded_to") else ""))
        await self.api("POST", f"/calls/{call_id}/handset-events", token=handset.token, body={"event": "rejected"})
        if not rejected.get("provider_call_sid"):
            raise Failure("the carrier did not forward the call to a server number")
        self.follower = asyncio.create_task(self.follow_provider(rejected["provider_call_sid"]))
        return rejected["provider_call_sid"]

    async def follow_provider(self, sid: str) -> None:
        """Print what the provider does, as it happens, until the call and its legs have ended."""
        while True:
            leg = await self.sim("GET", f"/calls/{sid}")
            entries = [leg] + [await self.sim("GET", f"/calls/{child}") for child in leg["children"]]
            events = []
            for entry in entries:
                seen = self.provider_seen.get(entry["sid"], 0)
                events += [(event["at"], entry, event) for event in entry["events"][seen:]]
                self.provider_seen[entry["sid"]] = len(entry["events"])
            for at, entry, event in sorted(events, key=lambda item: item[0]):
                self.say("provider", _describe(entry, event), at=at)
            self.provider_leg = leg
            if leg["ended_at"] and all(entry["ended_at"] for entry in entries) and not events:
                return
            await asyncio.sleep(0.05)

    async def until_bridged(self, sid: str, handset: Device) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            leg = self.provider_leg
            if self.follower.done():
                self.follower.result()
            if leg is None:
                continue
            connected = [frame for frame in handset.frames if frame.get("type") == "call.connected"
                         and (frame.get("call") or {}).get("id") == self.call_id]
            if leg["activity"] in ("bridged", "conference") or connected:
                return
            if leg["ended_at"]:
                raise Failure(f"the provider call ended ({leg['status']}) before the tablet was connected")
            ended = [frame for frame in handset.frames if frame.get("type") == "call.ended"
                     and (frame.get("call") or {}).get("id") == self.call_id]
            if ended:
                call = ended[0]["call"]
                raise Failure(f"the backend ended the call ({call.get('state')}, {ended[0].get('reason')}) "
                              "before the tablet was connected; see the server's log")
        raise Failure(f"the tablet was not connected within {self.timeout:g} s")

    async def until_provider_ended(self, sid: str) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.follower), self.timeout)
        except TimeoutError:
            raise Failure(f"the provider call did not end within {self.timeout:g} s") from None
        await asyncio.sleep(0.2)  # its last callbacks
        await self.follow_provider(sid)

    async def until_call_ended(self, handset: Device, call_id: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            call = await self.api("GET", f"/calls/{call_id}", token=handset.token)
            if call["state"] in TERMINAL or time.monotonic() >= deadline:
                self.say("backend", f"call {call['state']}" + (f" ({call['end_reason']})" if call.get("end_reason")
                                                               else ""))
                return call
            await asyncio.sleep(0.1)

    def print_timeline(self, call: dict) -> None:
        self.write("")
        self.write(f"timeline of call {call['id']} ({call['caller']} -> {call['line']}, policy {call['policy']}):")
        timeline = call.get("timeline") or []
        start = _parse(timeline[0]["at"]) if timeline else None
        for entry in timeline:
            offset = (_parse(entry["at"]) - start).total_seconds() * 1000 if start else 0
            device = entry.get("device")
            device = device.get("id") if isinstance(device, dict) else device
            device = self.device_names.get(device, device)
            detail = entry.get("detail")
            self.write(f"  +{offset:7.0f} ms  {entry['event']}" + (f"  [{device}]" if device else "")
                       + (f"  {json.dumps(detail)}" if detail else ""))

    async def _cleanup(self) -> None:
        if self.follower is not None:
            self.follower.cancel()
            await asyncio.gather(self.follower, return_exceptions=True)
        if self.carrier_call_id:  # stopped half-way: do not leave a caller on hold in the simulator
            try:
                await self.http.post(f"{self.simulator}/carrier/calls/{self.carrier_call_id}/hangup")
            except httpx.HTTPError:
                pass
        for device in self.devices:
            await device.close()
        for device in self.devices:
            try:
                await self.http.delete(self.base + "/api/v1/devices/me",
                                       headers={"Authorization": f"Bearer {device.token}"})
            except httpx.HTTPError:
                pass


def _describe(leg: dict, event: dict) -> str:
    who = "device leg" if leg["parent_call_sid"] else "call"
    name = event["event"]
    if name in ("webhook", "callback"):
        outcome = event["status"] or event["error"]
        text = f"{who} {event['label']}: {event['method']} {event['url']} -> {outcome} ({event['ms']:.0f} ms)"
        if event.get("twiml"):
            text += f"\n{'':22}{event['twiml'].strip()}"
        return text
    details = {k: v for k, v in event.items() if k not in ("t_ms", "at", "event") and v not in (None, "")}
    return f"{who} {leg['to'] if leg['parent_call_sid'] else ''}{' ' if leg['parent_call_sid'] else ''}{name}" + \
        (f" {json.dumps(details)}" if details else "")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"
    return json.dumps(body)[:200]


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Command(BaseCommand):
    help = "Play one whole call (carrier, handset, tablet, provider) against a running server."

    def add_arguments(self, parser):
        parser.add_argument("--base", default="http://127.0.0.1:8000", help="the running server")
        parser.add_argument("--simulator", default=None, help="the simulator (default: BASE/simulator)")
        parser.add_argument("--policy", choices=("on_answer", "immediate"), default="on_answer")
        parser.add_argument("--caller", default="+15550009999")
        parser.add_argument("--caller-name", default="Demo Caller")
        parser.add_argument("--answer-after", type=float, default=2.0, help="seconds before the tablet answers")
        parser.add_argument("--talk", type=float, default=3.0, help="seconds before the caller hangs up")
        parser.add_argument("--timeout", type=float, default=30.0, help="longest wait for any one step")

    def handle(self, *args, base, simulator, policy, caller, caller_name, answer_after, talk, timeout, **options):
        if answer_after < 0 or talk < 0 or timeout <= 0:
            raise CommandError("--answer-after and --talk cannot be negative, --timeout must be positive")
        walk = Walkthrough(base=base, simulator=simulator or base.rstrip("/") + "/simulator", policy=policy,
                           caller=caller, caller_name=caller_name, answer_after=answer_after, talk=talk,
                           timeout=timeout, write=self.stdout.write)
        try:
            asyncio.run(walk.run())
        except Failure as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("interrupted") from None
