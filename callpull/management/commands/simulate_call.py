"""Play one whole call against a running server and print every step: `manage.py simulate_call`.

A simulated handset app and tablet, for the demo. With `make run` going in
another terminal it: signs in as the demo user (creating it the first time),
finds its demo devices on the account (a handset, and a tablet reached by the
provider as client:demo-tablet), registering them only the first time, registers
the line, dials the forwarding code on the simulated carrier and reports it, sets
the line's policy, opens both WebSockets, then a caller rings the line.

It plays its part whatever happens around it, as the real apps would:

- the handset reports the call and follows every instruction it receives (a
  `reject` in the report's answer or a `call.reject` frame, whoever answered and
  for whatever reason: an answer anywhere, "Decline everywhere");
- the tablet acknowledges every frame and answers after `--answer-after` seconds,
  unless the call was answered or ended meanwhile (another device, a browser tab):
  "already answered" and "declined" are outcomes, not errors; with `--no-answer` it
  only rings; with `--move-after S` it asks for the call S seconds after the call
  connected elsewhere (a move, `POST /calls/{id}/pull`);
- `--sleeping-device NAME` adds a device that sleeps: no WebSocket, an FCM token,
  so with FCM on a push reaches it through the local FCM server (`manage.py fakefcm`);
- the caller hangs up `--talk` seconds after the call connected, unless someone
  hung up first.

The devices stay registered: their tokens are kept in a state file (`--state-file`,
by default under ~/.local/state/callpull/) and reused on the next run, so history
keeps naming them. The run ends with the call's timeline and a short summary (who
answered, the moves, how it ended, the call's id). The exit status is 0 whenever the
call ended in a legitimate state (answered anywhere, declined, missed, the caller
hung up, answered on the handset) and 1 for a real failure: the server or the
simulator unreachable, an endpoint answering an unexpected error, the call `failed`,
or a call the server did not end by its deadline. It only speaks HTTP and WebSocket
to the server, like the real apps, and stops with a plain message, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import websockets
from django.core.management.base import BaseCommand, CommandError

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "callpull simulator walkthrough"  # a demo account on a developer's machine
LINE = "+15550001234"
HANDSET_NAME = "Demo handset"
TABLET_NAME = "Demo tablet"
TABLET_ADDRESS = "demo-tablet"
TERMINAL = ("completed", "missed", "declined", "answered_on_handset", "failed")
LEGITIMATE = ("completed", "missed", "declined", "answered_on_handset")
HTTP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.1


class Failure(Exception):
    """Stops the walk-through with a message for the person watching."""


def default_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "callpull" / "simulate_call.json"


class Device:
    """One simulated app: its token and its WebSocket, acknowledging every event."""

    def __init__(self, walk: Walkthrough, label: str, name: str, device_id: str, token: str):
        self.walk, self.label, self.name, self.id, self.token = walk, label, name, device_id, token
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
        await self.wait_for("hello", timeout=self.walk.timeout)

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
                extra = f" (call {call.get('state', '')}" + (f", {frame['reason']}" if frame.get("reason") else "") \
                    + ")" if call else ""
                self.walk.say(self.label, f"<- {kind}{extra}{', acked' if acked else ''}")
        except websockets.ConnectionClosed:
            if self.socket.close_code and self.socket.close_code >= 4000:
                self.walk.say(self.label, f"WebSocket closed by the server with {self.socket.close_code}")

    def seen(self, kinds: tuple[str, ...], call_id: str | None = None) -> dict | None:
        for frame in self.frames:
            if frame.get("type") in kinds and (call_id is None or (frame.get("call") or {}).get("id") == call_id):
                return frame
        return None

    async def wait_for(self, *kinds: str, call_id: str | None = None, timeout: float | None = None) -> dict | None:
        """The first frame of one of `kinds` (for `call_id`); None when the socket closed
        first. Without `timeout` it waits until it is cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            frame = self.seen(kinds, call_id)
            if frame is not None:
                return frame
            if self.reader is not None and self.reader.done():
                return None
            await asyncio.sleep(0.01)
        raise Failure(f"the {self.label} received no {' or '.join(kinds)} frame within {timeout:g} s")

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


class Walkthrough:
    def __init__(self, *, base: str, simulator: str, policy: str, caller: str, caller_name: str,
                 answer_after: float | None, talk: float, timeout: float, move_after: float | None = None,
                 sleeping_device: str | None = None, state_file: Path | None = None, write=print):
        self.base, self.simulator = base.rstrip("/"), simulator.rstrip("/")
        self.ws_url = self.base.replace("http", "ws", 1) + "/ws/v1/"
        self.policy, self.caller, self.caller_name = policy, caller, caller_name
        self.answer_after, self.talk, self.timeout = answer_after, talk, timeout
        self.move_after, self.sleeping_name = move_after, sleeping_device
        self.state_file = state_file or default_state_file()
        self.write = write
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.http: httpx.AsyncClient | None = None
        self.devices: list[Device] = []
        self.sleeper: Device | None = None
        self.names: dict[str, str] = {}          # device id → name, for the timeline and the summary
        self.provider_seen: dict[str, int] = {}
        self.carrier_call_id: str | None = None
        self.provider_sid: str | None = None
        self.follower: asyncio.Task | None = None
        self.call_id: str | None = None
        self.current: dict | None = None          # the call as last read
        self.connected_at: float | None = None
        self.caller_hung_up_at: float | None = None
        self.moves: list[tuple[str | None, str]] = []
        self.notes: list[str] = []
        self.final: dict | None = None

    def say(self, who: str, text: str, *, at: str | None = None) -> None:
        """Print one step; `at` (ISO time) when it happened elsewhere, else now."""
        if at is not None:
            elapsed = _parse(at).timestamp() - self.started_wall
        else:
            elapsed = time.monotonic() - self.started
        self.write(f"{elapsed * 1000:8.0f} ms  {who:<9} {text}")

    def name_of(self, device_id: str | None) -> str:
        if not device_id:
            return "nobody"
        return self.names.get(device_id, f"device {device_id[:8]}")

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

    async def sim(self, method: str, path: str, body=None, ok=(200, 201, 202)) -> dict:
        return (await self.request(method, self.simulator + path, body=body, ok=ok)).json()

    # -- the walk --------------------------------------------------------------------

    async def run(self) -> dict:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as self.http:
            try:
                await self._run()
            finally:
                await self._cleanup()
        return self.final

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
        self.call_id, self.current = call["id"], call
        self.say("handset", f"reported the call {call['id']}: instruction {instruction.get('action')}"
                            + (f" ({instruction['reason']})" if instruction.get("reason") else ""))
        if instruction.get("action") != "reject" and instruction.get("reason") not in (None, "policy_on_answer",
                                                                                     "awaiting_delivery",
                                                                                     "forwarded_on_no_answer",
                                                                                     "forwarded_by_network"):
            self.notes.append(f"the backend did not take the call ({instruction.get('reason')}): "
                              "it rang on the handset only")

        players = [asyncio.create_task(self.handset_follows(handset, instruction)),
                   asyncio.create_task(self.tablet_plays(tablet))]
        try:
            self.final = await self.watch(handset, players)
            await self.handset_finishes(handset, players[0])
        finally:
            for task in players:
                task.cancel()
            await asyncio.gather(*players, return_exceptions=True)
        if self.carrier_call_id:
            await self.caller_gives_up()
        await self.until_provider_ended()
        self.final = await self.api("GET", f"/calls/{self.call_id}", token=handset.token)
        self.learn_names(self.final)
        self.print_timeline(self.final)
        self.print_summary(self.final)

    # -- signing in: the demo devices are kept and reused ---------------------------------

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict) -> None:
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps(state, indent=2))
            self.state_file.chmod(0o600)
        except OSError as exc:
            self.say("setup", f"cannot keep the devices' tokens in {self.state_file} ({exc}): "
                              "they are registered again next time")

    async def _reuse(self, stored: dict | None) -> dict | None:
        """The stored device, if its token still works on this server."""
        if not stored or not stored.get("token"):
            return None
        response = await self.request("GET", self.base + "/api/v1/devices/me", token=stored["token"], ok=(200, 401))
        if response.status_code != 200:
            return None
        return {"device": response.json(), "token": stored["token"]}

    async def sign_in(self) -> tuple[Device, Device]:
        state = self._load_state()
        key = f"{self.base} {DEMO_USERNAME}"
        kept = state.get(key, {})
        wanted = {
            "handset": {"name": HANDSET_NAME, "kind": "handset", "platform": "android"},
            "tablet": {"name": TABLET_NAME, "kind": "tablet", "platform": "android",
                       "connect": {"type": "client", "address": TABLET_ADDRESS}},
        }
        if self.sleeping_name:
            slug = re.sub(r"[^a-z0-9]+", "-", self.sleeping_name.lower()).strip("-") or "sleeper"
            wanted["sleeper"] = {"name": self.sleeping_name, "kind": "tablet", "platform": "android",
                                 "connect": {"type": "client", "address": f"demo-{slug}"}}
        registrations, fresh = {}, []
        for label, spec in wanted.items():
            found = await self._reuse(kept.get(spec["name"]))
            if found is None:
                if label == "sleeper":
                    spec["fcm_token"] = f"demo-fcm-{secrets.token_hex(12)}"
                found = await self._register(spec)
                fresh.append(label)
            registrations[label] = found
            kept[spec["name"]] = {"id": found["device"]["id"], "token": found["token"]}
        state[key] = kept
        self._save_state(state)

        handset_token = registrations["handset"]["token"]
        if self.sleeping_name:
            sleeper = registrations["sleeper"]["device"]
            if not sleeper.get("fcm_registered"):  # reused from a run that gave it none
                await self.api("PATCH", "/devices/me", token=registrations["sleeper"]["token"],
                               body={"fcm_token": f"demo-fcm-{secrets.token_hex(12)}"})
        # Devices of the same name whose tokens this machine no longer has (an older run,
        # a lost state file) would ring too: they are replaced by the ones kept now.
        ours = {found["device"]["id"] for found in registrations.values()}
        names = {spec["name"] for spec in wanted.values()}
        for device in await self.api("GET", "/devices", token=handset_token):
            if device["name"] in names and device["id"] not in ours:
                await self.api("DELETE", f"/devices/{device['id']}", token=handset_token, ok=(204, 404))
                self.say("setup", f"replaced an older {device['name']!r} whose token is not kept here")

        handset = Device(self, "handset", HANDSET_NAME, registrations["handset"]["device"]["id"], handset_token)
        tablet = Device(self, "tablet", TABLET_NAME, registrations["tablet"]["device"]["id"],
                        registrations["tablet"]["token"])
        self.devices = [handset, tablet]
        if self.sleeping_name:
            self.sleeper = Device(self, "asleep", self.sleeping_name, registrations["sleeper"]["device"]["id"],
                                  registrations["sleeper"]["token"])
        for device in self.devices + ([self.sleeper] if self.sleeper else []):
            self.names[device.id] = device.name
        reused = [label for label in wanted if label not in fresh]
        self.say("setup", f"signed in as {DEMO_USERNAME!r}: "
                          + (f"registered {', '.join(fresh)}" if fresh else "")
                          + ("; " if fresh and reused else "")
                          + (f"reused {', '.join(reused)}" if reused else "")
                          + f" (tablet at client:{TABLET_ADDRESS}; tokens in {self.state_file})")
        if self.sleeper:
            self.say("asleep", f"{self.sleeping_name!r} sleeps: no WebSocket, an FCM token; only a push reaches it")
        return handset, tablet

    async def _register(self, device: dict) -> dict:
        found = await self._register_once(device)
        if found is None:
            await self.api("POST", "/accounts", body={"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
            self.say("setup", f"created the demo account {DEMO_USERNAME!r}")
            found = await self._register_once(device)
            if found is None:
                raise Failure("the demo account was created but its password is refused")
        return found

    async def _register_once(self, device: dict) -> dict | None:
        response = await self.request("POST", self.base + "/api/v1/devices", ok=(201, 401), body={
            "username": DEMO_USERNAME, "password": DEMO_PASSWORD, "device": device})
        return response.json() if response.status_code == 201 else None

    async def set_up_line(self, handset: Device) -> dict:
        lines = await self.api("GET", "/lines", token=handset.token)
        line = next((known for known in lines if known["number"] == LINE), None)
        if line is None:
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

    # -- the devices' parts -----------------------------------------------------------------

    async def handset_follows(self, handset: Device, instruction: dict) -> None:
        """The handset app: it rejects when told to, by the report's answer or by a
        `call.reject` frame, whatever the reason (answered anywhere, declined everywhere)."""
        if instruction.get("action") != "reject":
            frame = await handset.wait_for("call.reject", call_id=self.call_id)
            if frame is None:
                return
            self.say("handset", "told to reject" + (f" ({frame['reason']})" if frame.get("reason") else ""))
        await self.handset_rejects(handset)

    async def handset_finishes(self, handset: Device, task: asyncio.Task) -> None:
        """The call ended; a `call.reject` sent with its end (declined everywhere) may still
        be on its way or being followed: the handset finishes what it was told."""
        deadline = time.monotonic() + 1.0
        while not task.done() and handset.seen(("call.reject",), self.call_id) is None \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not task.done() and handset.seen(("call.reject",), self.call_id) is not None:
            await asyncio.wait({task}, timeout=self.timeout)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()

    async def handset_rejects(self, handset: Device) -> None:
        rejected = await self.sim("POST", f"/carrier/calls/{self.carrier_call_id}/reject", ok=(200, 409))
        if "state" not in rejected:
            self.say("handset", f"cannot reject: the carrier says {_envelope_text(rejected)}")
            return
        self.say("handset", f"rejects: carrier says {rejected['state']}"
                            + (f" to {rejected['forwarded_to']}" if rejected.get("forwarded_to") else ""))
        response = await self.request("POST", f"{self.base}/api/v1/calls/{self.call_id}/handset-events",
                                      token=handset.token, body={"event": "rejected"}, ok=(200, 409))
        if response.status_code == 409:
            self.say("handset", f"reported the reject; the backend says {_error_text(response)}")
        if rejected.get("provider_call_sid"):
            self.provider_sid = rejected["provider_call_sid"]
            self.follower = asyncio.create_task(self.follow_provider(self.provider_sid))

    async def tablet_plays(self, tablet: Device) -> None:
        """The tablet: rings, answers unless the call was taken or ended meanwhile, and
        (with --move-after) asks for the call once it is connected elsewhere."""
        if await tablet.wait_for("call.ringing", call_id=self.call_id) is None:
            return
        if self.answer_after is None:
            self.say("tablet", "rings; it leaves the answer to you (--no-answer)")
        else:
            self.say("tablet", f"rings; the user answers in {self.answer_after:g} s")
            await asyncio.sleep(self.answer_after)
            await self.tablet_answers(tablet)
        if self.move_after is None:
            return
        while not (self.current and self.current["state"] == "connected"):
            if self.current and self.current["state"] in TERMINAL:
                return
            await asyncio.sleep(POLL_SECONDS)
        if self.current.get("held_by") == tablet.id:
            return
        self.say("tablet", f"the call is on {self.name_of(self.current.get('held_by'))}; "
                           f"the user moves it here in {self.move_after:g} s")
        await asyncio.sleep(self.move_after)
        if self.current["state"] != "connected" or self.current.get("held_by") == tablet.id:
            return
        response = await self.request("POST", f"{self.base}/api/v1/calls/{self.call_id}/pull", token=tablet.token,
                                      ok=(202, 409))
        if response.status_code == 409:
            self.say("tablet", f"cannot move the call here: {_error_text(response)}")
        else:
            pull = response.json()["pull"]
            self.say("tablet", f"asked for the call (POST /calls/{{id}}/pull): {pull['state']}")

    async def tablet_answers(self, tablet: Device) -> None:
        taken = tablet.seen(("call.answered_elsewhere", "call.ended"), self.call_id)
        if taken is not None:
            self.say("tablet", "does not answer: " + (
                f"the call was answered on {(taken.get('device') or {}).get('name', 'another device')}"
                if taken["type"] == "call.answered_elsewhere" else f"the call ended ({taken.get('reason')})"))
            return
        response = await self.request("POST", f"{self.base}/api/v1/calls/{self.call_id}/answer", token=tablet.token,
                                      ok=(200, 409))
        if response.status_code == 200:
            self.say("tablet", "answered (POST /calls/{id}/answer)")
        else:
            self.say("tablet", f"answer refused, an outcome of the race: {_error_text(response)}")

    async def caller_gives_up(self) -> None:
        """The call ended for callpull; a caller still on the line (the handset rang on,
        or the provider still has the caller) hangs up."""
        carrier = await self.sim("GET", f"/carrier/calls/{self.carrier_call_id}")
        live = carrier["state"] == "ringing" or (
            carrier["state"] == "forwarded" and carrier.get("provider_call_status") in ("queued", "ringing",
                                                                                         "in-progress"))
        if not carrier.get("ended_at") and live:
            await self.sim("POST", f"/carrier/calls/{self.carrier_call_id}/hangup", ok=(200, 409))
            self.say("caller", "hangs up" + (": the handset rang on" if carrier["state"] == "ringing" else ""))
        self.carrier_call_id = None

    # -- watching the call -------------------------------------------------------------------

    async def watch(self, handset: Device, players: list[asyncio.Task]) -> dict:
        """Poll the call until it ends: report its states and moves, and hang up the
        caller `--talk` seconds after it connected."""
        while True:
            for task in players:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()
            call = await self.api("GET", f"/calls/{self.call_id}", token=handset.token)
            previous, self.current = self.current, call
            self.learn_names(call)
            if call["state"] != previous["state"]:
                self.say("backend", f"call {call['state']}" + (f" on {self.name_of(call.get('held_by'))}"
                                                               if call["state"] == "connected" else "")
                         + (f" ({call['end_reason']})" if call.get("end_reason") else ""))
            if call.get("held_by") and call.get("held_by") != previous.get("held_by"):
                self.moves.append((previous.get("held_by"), call["held_by"]))
                if previous.get("held_by"):
                    self.say("backend", f"the call moved from {self.name_of(previous['held_by'])} "
                                        f"to {self.name_of(call['held_by'])}")
            if call["state"] in TERMINAL:
                return call
            now = time.monotonic()
            if call["state"] == "connected":
                if self.connected_at is None:
                    self.connected_at = now
                    self.say("caller", f"talking; hangs up in {self.talk:g} s unless the device hangs up first")
                if self.caller_hung_up_at is None and now - self.connected_at >= self.talk:
                    await self.caller_hangs_up()
                    self.caller_hung_up_at = now
                elif self.caller_hung_up_at is not None and now - self.caller_hung_up_at > self.timeout:
                    raise Failure(f"the call was still connected {self.timeout:g} s after the caller hung up")
            elif call.get("expires_at") and time.time() > _parse(call["expires_at"]).timestamp() + self.timeout:
                raise Failure(f"the call is still {call['state']} {self.timeout:g} s after its deadline "
                              f"({call['expires_at']}); see the server's log")
            await asyncio.sleep(POLL_SECONDS)

    async def caller_hangs_up(self) -> None:
        answer = await self.sim("POST", f"/carrier/calls/{self.carrier_call_id}/hangup", ok=(200, 409))
        if answer.get("error"):
            self.say("caller", f"cannot hang up: {_envelope_text(answer)}")
        else:
            self.say("caller", "hangs up")

    def learn_names(self, call: dict) -> None:
        for device in call.get("devices") or []:
            self.names.setdefault(device["id"], device["name"] + (" (removed)" if device.get("removed") else ""))

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
            if leg["ended_at"] and all(entry["ended_at"] for entry in entries) and not events:
                return
            await asyncio.sleep(0.05)

    async def until_provider_ended(self) -> None:
        if self.follower is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.follower), self.timeout)
        except TimeoutError:
            self.notes.append(f"the provider's call {self.provider_sid} had not ended {self.timeout:g} s after "
                              "the call")

    # -- the end -------------------------------------------------------------------------------

    def print_timeline(self, call: dict) -> None:
        self.write("")
        self.write(f"timeline of call {call['id']} ({call['caller']} -> {call['line']}, policy {call['policy']}):")
        timeline = call.get("timeline") or []
        start = _parse(timeline[0]["at"]) if timeline else None
        for entry in timeline:
            offset = (_parse(entry["at"]) - start).total_seconds() * 1000 if start else 0
            device = entry.get("device")
            device = self.name_of(device) if device else None
            detail = entry.get("detail")
            self.write(f"  +{offset:7.0f} ms  {entry['event']}" + (f"  [{device}]" if device else "")
                       + (f"  {json.dumps(detail)}" if detail else ""))

    def print_summary(self, call: dict) -> None:
        timeline = call.get("timeline") or []
        self.write("")
        self.write(f"summary of call {call['id']}")
        self.write(f"  caller:    {self.caller_name} ({call['caller']}) -> {call['line']}, policy {call['policy']}")
        answered = f"on {self.name_of(call['answered_by'])}" if call.get("answered_by") else "nowhere"
        self.write(f"  answered:  {answered}")
        moves = [f"{self.name_of(old)} -> {self.name_of(new)}" for old, new in self.moves if old]
        self.write(f"  moves:     {'; '.join(moves) if moves else 'none'}")
        self.write(f"  ended:     {how_it_ended(call, timeline, self.name_of)}")
        if self.sleeper:
            self.write(f"  asleep:    {self.sleeper.name}: {pushes(timeline, self.sleeper.id)}")
        for note in self.notes:
            self.write(f"  note:      {note}")
        legitimate = call["state"] in LEGITIMATE
        self.write(f"  result:    {'ok' if legitimate else 'FAILED'} (exit status {0 if legitimate else 1})")

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


def how_it_ended(call: dict, timeline: list[dict], name_of) -> str:
    """One line: the final state and who or what ended the call."""
    state, reason = call["state"], call.get("end_reason")
    last = {entry["event"]: entry for entry in timeline}
    if state == "completed":
        ended = last.get("ended")
        if ended is not None and ended.get("device") and "caller_hung_up" not in last:
            return f"completed: hung up on {name_of(ended['device'])}"
        return "completed: the caller hung up" if "caller_hung_up" in last else f"completed ({reason})"
    if state == "declined":
        declined = last.get("declined")
        return "declined everywhere" + (f" on {name_of(declined['device'])}" if declined and declined.get("device")
                                        else "")
    if state == "missed":
        return f"missed ({reason})" + (": the caller hung up first" if reason == "caller_hung_up" else "")
    if state == "answered_on_handset":
        return "answered on the handset"
    return f"{state} ({reason})"


def pushes(timeline: list[dict], device_id: str) -> str:
    sent = [entry for entry in timeline if entry.get("device") == device_id
            and entry["event"] in ("notification_sent", "notification_failed")
            and (entry.get("detail") or {}).get("transport") == "fcm"]
    if not sent:
        return "no FCM push reached it (is FCM on? README: \"To see FCM too\")"
    kinds = [f"{(entry.get('detail') or {}).get('type')} {entry['event'].split('_')[1]}" for entry in sent]
    return "pushed over FCM: " + ", ".join(kinds)


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
    return _envelope_text(body)


def _envelope_text(body) -> str:
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
        parser.add_argument("--no-answer", action="store_true",
                            help="the tablet only rings: answer or decline elsewhere (a browser tab)")
        parser.add_argument("--move-after", type=float, default=None,
                            help="seconds after the call connected elsewhere before the tablet asks for it")
        parser.add_argument("--talk", type=float, default=3.0,
                            help="seconds after the call connected before the caller hangs up")
        parser.add_argument("--sleeping-device", default=None, metavar="NAME",
                            help="one more device, asleep: no WebSocket, an FCM token (a push reaches it when "
                                 "FCM is on)")
        parser.add_argument("--state-file", default=None,
                            help=f"where the demo devices' tokens are kept (default {default_state_file()})")
        parser.add_argument("--timeout", type=float, default=30.0, help="longest wait for any one step")

    def handle(self, *args, base, simulator, policy, caller, caller_name, answer_after, no_answer, move_after,
               talk, sleeping_device, state_file, timeout, **options):
        if answer_after < 0 or talk < 0 or timeout <= 0 or (move_after is not None and move_after < 0):
            raise CommandError("--answer-after, --move-after and --talk cannot be negative, --timeout must be "
                               "positive")
        if sleeping_device is not None and sleeping_device.strip() in ("", HANDSET_NAME, TABLET_NAME):
            raise CommandError(f"--sleeping-device needs a name other than {HANDSET_NAME!r} and {TABLET_NAME!r}")
        walk = Walkthrough(base=base, simulator=simulator or base.rstrip("/") + "/simulator", policy=policy,
                           caller=caller, caller_name=caller_name, answer_after=None if no_answer else answer_after,
                           talk=talk, timeout=timeout, move_after=move_after,
                           sleeping_device=sleeping_device.strip() if sleeping_device else None,
                           state_file=Path(state_file) if state_file else None, write=self.stdout.write)
        try:
            final = asyncio.run(walk.run())
        except Failure as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("interrupted") from None
        if final["state"] not in LEGITIMATE:
            raise CommandError(f"the call {final['id']} {final['state']} ({final.get('end_reason')})")
