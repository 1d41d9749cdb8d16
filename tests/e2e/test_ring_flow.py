"""One whole call, end to end, for both policies, through a running server.

Nothing is mocked. The test process plays every party but the backend:

- the handset app: real HTTP (ring report, handset events) and a real WebSocket
  that acks every frame and is told `call.reject`;
- the tablet: a real WebSocket that acks every frame, and the HTTP answer;
- a desktop that only has an FCM token (it never opens a socket): the server's
  real firebase-admin sends to `fake_fcm`, an FCM-compatible server in this process;
- the carrier and the voice provider: the simulator inside the server, driven
  through its HTTP control API (/simulator/carrier/…, /simulator/calls/…). It
  forwards the rejected call, posts signed webhooks, follows the backend's
  TwiML and answers the dialled device after SIMULATOR_ANSWER_DELAY_SECONDS.

Assertions are about what users and operators see (HTTP answers, call states,
timeline event names in order, WebSocket frames, FCM messages, the simulator's
records of calls and legs), never about TwiML text, so that they hold whatever
TwiML the backend chooses to connect a call.

The helpers here are shared with test_ring_edges.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.support import (
    SERVER_NUMBER,
    Account,
    Device,
    Server,
    call,
    eventually,
    hello,
    sign_up,
    ws_connect,
)

pytestmark = pytest.mark.e2e

_numbers_used = {SERVER_NUMBER}


def phone_number() -> str:
    """A number no other test uses: +1 555 and seven random digits."""
    while True:
        number = "+1555" + "".join(random.choices("0123456789", k=7))
        if number not in _numbers_used:
            _numbers_used.add(number)
            return number


def ok(response: httpx.Response, status: int = 200) -> dict | list:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: " \
                                           f"{response.status_code} {response.text}"
    return response.json()


def sim(server: Server, method: str, path: str, status: int = 200, **kwargs) -> dict | list:
    """The simulator's control API, mounted in the server at /simulator/."""
    return ok(call(server, method, "/simulator" + path, **kwargs), status)


def when(entry_or_frame_at: str) -> datetime:
    return datetime.fromisoformat(entry_or_frame_at.replace("Z", "+00:00"))


# The apps ----------------------------------------------------------------------

class App:
    """A device's app on its WebSocket: a reader thread acks every frame that has an
    id (a delivery receipt; `ack=False`: only when told to, with `ack()`) and records
    each with its arrival time (time.time())."""

    def __init__(self, server: Server, device: Device, *, ack: bool = True):
        self.device = device
        self.auto_ack = ack
        self.ws = ws_connect(server, device.token).__enter__()  # closed by close()
        self.hello = hello(self.ws)
        self.frames: list[tuple[float, dict]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"app-{device.kind}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                frame = json.loads(self.ws.recv())
                arrived = time.time()
                if frame.get("id") and self.auto_ack:
                    self.ack(frame)
                with self._changed:
                    self.frames.append((arrived, frame))
                    self._changed.notify_all()
        except (ConnectionClosed, OSError):
            pass

    def ack(self, frame: dict) -> None:
        self.ws.send(json.dumps({"type": "ack", "id": frame["id"]}))

    def of(self, event_type: str, call_id: str | None = None) -> list[tuple[float, dict]]:
        with self._changed:
            return [(at, frame) for at, frame in self.frames if frame.get("type") == event_type
                    and (call_id is None or frame.get("call", {}).get("id") == call_id)]

    def wait_for(self, event_type: str, call_id: str | None = None, *, timeout: float = 5.0) -> dict:
        return self.wait_with_time(event_type, call_id, timeout=timeout)[1]

    def wait_with_time(self, event_type: str, call_id: str | None = None, *,
                       timeout: float = 5.0) -> tuple[float, dict]:
        with self._changed:
            if not self._changed.wait_for(lambda: self.of(event_type, call_id), timeout):
                seen = [frame.get("type") for _, frame in self.frames]
                raise AssertionError(f"{self.device.kind}: no {event_type} for call {call_id} within {timeout}s; "
                                     f"got {seen}")
            return self.of(event_type, call_id)[0]

    def types(self, call_id: str) -> list[str]:
        with self._changed:
            return [frame["type"] for _, frame in self.frames if frame.get("call", {}).get("id") == call_id]

    def close(self) -> None:
        self.ws.close()
        self._reader.join(5)

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Ring:
    """A call to the line: the carrier's record and the handset's ring report."""

    carrier_id: str
    caller: str | None
    report_id: str
    call: dict
    instruction: dict
    answered_at: float  # time.time() when the report's HTTP answer was in

    @property
    def id(self) -> str:
        return self.call["id"]


@dataclass
class Household:
    """One user: a handset with a line whose forwarding on busy points at the server
    number (unless `forwarding=False`), and whatever secondary devices a test adds."""

    server: Server
    account: Account
    handset: Device
    line: dict
    addresses: dict = field(default_factory=dict)  # device id -> its client identity at the provider
    fcm_tokens: dict = field(default_factory=dict)  # device id -> its FCM token

    @property
    def number(self) -> str:
        return self.line["number"]

    def tablet(self, name: str = "Tablet") -> Device:
        """A tablet the provider reaches as a soft-phone client."""
        address = "tab-" + uuid.uuid4().hex[:12]
        device = self.account.register("tablet", name=name, connect={"type": "client", "address": address})
        self.addresses[device.id] = address
        return device

    def desktop(self, *, fcm: bool = True, name: str = "Desktop") -> Device:
        """A desktop reached by FCM only (it never opens a socket)."""
        fields = {}
        if fcm:
            fields["fcm_token"] = "fcm-" + uuid.uuid4().hex + uuid.uuid4().hex
        device = self.account.register("desktop", name=name, platform="other", **fields)
        if fcm:
            self.fcm_tokens[device.id] = fields["fcm_token"]
        return device

    def update_line(self, **fields) -> dict:
        self.line = ok(call(self.server, "PATCH", f"/api/v1/lines/{self.line['id']}", token=self.handset.token,
                            json=fields))
        return self.line

    def ring(self, *, caller: str | None = None, caller_name: str | None = "Ada Lovelace",
             report_id: str | None = None) -> Ring:
        """Someone calls the line: the carrier rings the handset, the handset app reports it."""
        caller = caller or phone_number()
        carrier_call = sim(self.server, "POST", "/carrier/calls", 201,
                           json={"line": self.number, "caller": caller, "caller_name": caller_name})
        assert carrier_call["state"] == "ringing", carrier_call
        report_id = report_id or str(uuid.uuid4())
        body = self.report(report_id, caller=caller, caller_name=caller_name, status=201)
        return Ring(carrier_id=carrier_call["id"], caller=caller, report_id=report_id, call=body["call"],
                    instruction=body["instruction"], answered_at=time.time())

    def report(self, report_id: str, *, caller: str | None, caller_name: str | None, status: int) -> dict:
        return ok(call(self.server, "POST", "/api/v1/calls", token=self.handset.token, json={
            "report_id": report_id, "line": self.number, "caller": caller, "caller_name": caller_name}), status)

    def handset_event(self, call_id: str, event: str) -> httpx.Response:
        return call(self.server, "POST", f"/api/v1/calls/{call_id}/handset-events", token=self.handset.token,
                    json={"event": event})

    def get_call(self, call_id: str) -> dict:
        return ok(call(self.server, "GET", f"/api/v1/calls/{call_id}", token=self.handset.token))

    def wait_state(self, call_id: str, state: str, *, timeout: float = 5.0) -> dict:
        def check():
            current = self.get_call(call_id)
            assert current["state"] == state, f"call is {current['state']}, waiting for {state}: " \
                                              f"{[entry['event'] for entry in current['timeline']]}"
            return current
        return eventually(check, timeout=timeout, interval=0.05)

    def carrier(self, carrier_id: str, action: str | None = None, **body) -> dict:
        if action is None:
            return sim(self.server, "GET", f"/carrier/calls/{carrier_id}")
        return sim(self.server, "POST", f"/carrier/calls/{carrier_id}/{action}", json=body)


def household(server: Server, *, policy: str = "on_answer", forwarding: bool = True) -> Household:
    account = sign_up(server, "ring")
    handset = account.register("handset", name="Pixel")
    number = phone_number()
    line = ok(call(server, "POST", "/api/v1/lines", token=handset.token, json={"number": number}), 201)
    assert line["server_number"] == SERVER_NUMBER, line
    if forwarding:
        # The user dials the code the app shows; the app interrogates the network and reports.
        registered = sim(server, "POST", "/carrier/mmi", json={"line": number, "code": line["mmi"]["register"]})
        assert (registered["active"], registered["target"]) == (True, SERVER_NUMBER), registered
        status = sim(server, "POST", "/carrier/mmi", json={"line": number, "code": line["mmi"]["interrogate"]})
        line = ok(call(server, "POST", f"/api/v1/lines/{line['id']}/forwarding", token=handset.token,
                       json={"state": "active" if status["active"] else "inactive", "target": status["target"]}))
        assert line["forwarding"]["state"] == "active", line
    home = Household(server=server, account=account, handset=handset, line=line)
    if policy != line["policy"]:
        assert home.update_line(policy=policy)["policy"] == policy
    return home


def answer(server: Server, device: Device, call_id: str) -> httpx.Response:
    return call(server, "POST", f"/api/v1/calls/{call_id}/answer", token=device.token)


# The provider's side, as the simulator recorded it --------------------------------

def legs_to(server: Server, to: str) -> list[dict]:
    """Every call or leg the simulated provider placed to `to` (a device's
    client:<identity>, or a number), whichever way it was placed."""
    return [leg for leg in sim(server, "GET", "/calls") if leg["to"] == to]


def provider_call(server: Server, sid: str) -> dict:
    return sim(server, "GET", f"/calls/{sid}")


def assert_no_provider_errors(leg: dict) -> None:
    """Every webhook and callback was answered with a 2xx; no application error."""
    problems = [event for event in leg["events"]
                if event["event"] == "error"
                or (event["event"] in ("webhook", "callback") and not 200 <= (event.get("status") or 0) < 300)]
    assert not problems, f"leg {leg['sid']} to {leg['to']}: {problems}"


# FCM, as the fake received it -------------------------------------------------------

def fcm_messages(fake, token: str, event_type: str | None = None, call_id: str | None = None) -> list:
    return [received for received in fake.messages(token)
            if (event_type is None or received.message.get("data", {}).get("type") == event_type)
            and (call_id is None or received.message.get("data", {}).get("call_id") == call_id)]


def wait_fcm(fake, token: str, event_type: str, call_id: str, *, timeout: float = 5.0):
    def check():
        found = fcm_messages(fake, token, event_type, call_id)
        assert found, f"no FCM {event_type} for {call_id}; requests: " \
                      f"{[(r.status, r.message.get('data', {}).get('type')) for r in fake.requests(token)]}"
        return found[0]
    return eventually(check, timeout=timeout)


# The timeline ----------------------------------------------------------------------

def events(timeline: list[dict]) -> list[str]:
    return [entry["event"] for entry in timeline]


def find(timeline: list[dict], event: str, **where) -> list[int]:
    """Indexes of entries named `event` whose device/detail match `where`
    (`device=…`, and any detail key, e.g. transport="websocket", type="call.ringing")."""
    found = []
    for index, entry in enumerate(timeline):
        if entry["event"] != event:
            continue
        detail = entry.get("detail") or {}
        if all((entry.get("device") if key == "device" else detail.get(key)) == value
               for key, value in where.items()):
            found.append(index)
    return found


def first(timeline: list[dict], event: str, **where) -> int:
    found = find(timeline, event, **where)
    assert found, f"no {event} {where} on the timeline: {describe(timeline)}"
    return found[0]


def describe(timeline: list[dict]) -> list[str]:
    return [f"{entry['event']}({(entry.get('detail') or {}).get('type', '')}"
            f"{'/' + entry['device'][:8] if entry.get('device') else ''})" for entry in timeline]


def assert_in_order(timeline: list[dict], *indexes: int) -> None:
    assert list(indexes) == sorted(indexes) and len(set(indexes)) == len(indexes), \
        f"out of order: {[timeline[i]['event'] for i in indexes]} in {describe(timeline)}"


def assert_never_backwards(timeline: list[dict]) -> None:
    times = [when(entry["at"]) for entry in timeline]
    assert times == sorted(times), f"timestamps go backwards: {[entry['at'] for entry in timeline]}"


# The test ------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["on_answer", "immediate"])
def test_a_call_rings_the_secondaries_is_taken_on_the_tablet_and_ends_when_the_caller_hangs_up(
        ring_server, fake_fcm, policy):
    server = ring_server
    home = household(server, policy=policy)
    tablet = home.tablet()
    desktop = home.desktop(fcm=True)
    desktop_token = home.fcm_tokens[desktop.id]
    client = f"client:{home.addresses[tablet.id]}"

    with App(server, home.handset) as handset_app, App(server, tablet) as tablet_app:
        # The line rings; the handset app reports the call.
        ring = home.ring(caller_name="Ada Lovelace")
        assert ring.call["state"] == "ringing"
        assert ring.call["policy"] == policy
        assert (ring.call["line"], ring.call["caller"], ring.call["caller_name"]) == \
               (home.number, ring.caller, "Ada Lovelace")
        if policy == "on_answer":
            assert ring.instruction == {"action": "keep_ringing", "reason": "policy_on_answer"}
        else:  # the tablet's socket was reached, so the handset rejects at once
            assert ring.instruction == {"action": "reject"}

        # The tablet rings (and acks); the desktop gets its FCM data message.
        ringing = tablet_app.wait_for("call.ringing", ring.id)
        assert ringing["call"]["caller"] == ring.caller and ringing["call"]["state"] == "ringing"
        pushed = wait_fcm(fake_fcm, desktop_token, "call.ringing", ring.id)
        message = pushed.message
        assert "notification" not in message, message  # data-only
        data = message["data"]
        assert {"type", "id", "call_id", "caller", "caller_name", "line", "expires_at"} <= set(data), data
        assert all(isinstance(value, str) for value in data.values()), data
        assert (data["type"], data["call_id"], data["caller"], data["caller_name"], data["line"]) == \
               ("call.ringing", ring.id, ring.caller, "Ada Lovelace", home.number)
        assert data["id"] == ringing["id"], "one event, one id on both transports (clients de-duplicate by id)"
        assert when(data["expires_at"]) == when(ring.call["expires_at"])
        android = message["android"]
        assert android["priority"] == "high"
        assert android["collapse_key"] == ring.id
        ttl = float(android["ttl"].rstrip("s"))
        remaining = when(data["expires_at"]).timestamp() - pushed.received_at
        assert 0 < ttl <= remaining + 0.5, (ttl, remaining)

        if policy == "on_answer":
            # The tablet answers; only then is the handset told to reject.
            answered = ok(answer(server, tablet, ring.id))
            assert (answered["state"], answered["answered_by"]) == ("answering", tablet.id)
            reject = handset_app.wait_for("call.reject", ring.id)
            assert reject["call"]["id"] == ring.id
            rejected = home.carrier(ring.carrier_id, "reject")
            assert ok(home.handset_event(ring.id, "rejected"))["id"] == ring.id
        else:
            # The ring report's answer said reject: the handset rejects at once.
            rejected = home.carrier(ring.carrier_id, "reject")
            assert ok(home.handset_event(ring.id, "rejected"))["id"] == ring.id
            # The forwarded call arrives before anyone answered: the caller is held.
            home.wait_state(ring.id, "forwarded")
            assert provider_call(server, rejected["provider_call_sid"])["ended_at"] is None
            assert not legs_to(server, client), "no device is dialled before one answers"
            answered = ok(answer(server, tablet, ring.id))
            assert answered["answered_by"] == tablet.id

        # The carrier forwarded the call on busy to the server number.
        assert rejected["state"] == "forwarded" and rejected["forwarded_to"] == SERVER_NUMBER, rejected
        caller_sid = rejected["provider_call_sid"]
        assert caller_sid

        # The provider connects the tablet's client; the call is connected.
        connected = home.wait_state(ring.id, "connected")
        assert connected["answered_by"] == tablet.id
        assert tablet_app.wait_for("call.connected", ring.id)["call"]["state"] == "connected"
        device_legs = eventually(lambda: _answered_legs(server, client))
        assert len(device_legs) == 1, device_legs
        caller_leg = provider_call(server, caller_sid)
        assert (caller_leg["from"], caller_leg["to"], caller_leg["forwarded_from"]) == \
               (ring.caller, SERVER_NUMBER, home.number)
        assert caller_leg["ended_at"] is None

        # The caller hangs up.
        hung_up = home.carrier(ring.carrier_id, "hangup")
        assert hung_up["state"] == "completed"
        final = home.wait_state(ring.id, "completed")
        assert final["end_reason"] == "completed" and final["ended_at"]
        assert tablet_app.wait_for("call.ended", ring.id)["reason"] == "completed"
        assert handset_app.wait_for("call.ended", ring.id)["reason"] == "completed"
        wait_fcm(fake_fcm, desktop_token, "call.ended", ring.id)

    # The provider's records: both legs ended, every webhook answered 2xx.
    def legs_ended():
        caller_leg = provider_call(server, caller_sid)
        device_leg = legs_to(server, client)[0]
        assert caller_leg["ended_at"] and device_leg["ended_at"], (caller_leg["status"], device_leg["status"])
        return caller_leg, device_leg
    for leg in eventually(legs_ended):
        assert_no_provider_errors(leg)
    assert home.carrier(ring.carrier_id)["state"] == "completed"

    # The timeline, in order.
    timeline = eventually(lambda: _with_ack(home, ring.id, tablet.id))
    assert_never_backwards(timeline)
    names = events(timeline)
    assert names[0] == "reported"
    assert names.count("forwarded_call_arrived") == 1, names
    reported = first(timeline, "reported")
    sent = first(timeline, "notification_sent", device=tablet.id, transport="websocket", type="call.ringing")
    delivered = first(timeline, "notification_delivered", device=tablet.id, type="call.ringing")
    first(timeline, "notification_sent", device=desktop.id, transport="fcm", type="call.ringing")
    answered_at = first(timeline, "answered", device=tablet.id)
    instructed = first(timeline, "reject_instructed")
    arrived = first(timeline, "forwarded_call_arrived")
    connected_at = first(timeline, "connected")
    ends = find(timeline, "ended") + find(timeline, "caller_hung_up")
    assert ends, describe(timeline)
    ended = min(ends)
    assert timeline[sent]["detail"]["event_id"] == ringing["id"]
    assert_in_order(timeline, reported, sent, delivered)
    if policy == "on_answer":
        assert_in_order(timeline, reported, sent, answered_at, instructed, arrived, connected_at, ended)
    else:
        # Never told to reject before a secondary was reached.
        assert_in_order(timeline, reported, sent, instructed, arrived, answered_at, connected_at, ended)


def _answered_legs(server: Server, to: str) -> list[dict]:
    legs = legs_to(server, to)
    assert legs and all(leg["answered_at"] for leg in legs), legs
    return legs


def _with_ack(home: Household, call_id: str, device_id: str) -> list[dict]:
    """The call's timeline once the device's ack of call.ringing is on it. (A lost
    ack fails here: see test_every_acknowledged_frame_lands_on_the_timeline_as_delivered.)"""
    timeline = home.get_call(call_id)["timeline"]
    assert find(timeline, "notification_delivered", device=device_id, type="call.ringing"), \
        f"the tablet acked call.ringing, but no notification_delivered: {describe(timeline)}"
    return timeline

