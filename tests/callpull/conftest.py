"""Fixtures for the ring flow: an active line, devices that are 'online' on a
channel-layer channel we can read frames from, and signed webhook posts."""

import asyncio
import hashlib
import json
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone
from twilio.request_validator import RequestValidator

from callpull import services as line_services
from callpull.models import Call
from devices.models import DeviceConnection
from notifications.events import device_group
from tests.conftest import client_for, make_device


class Socket:
    """A device's open WebSocket, as the channel layer sees it."""

    def __init__(self, device):
        self.device = device
        layer = get_channel_layer()
        # A plain channel name, not new_channel()'s process-specific one: channels_redis
        # binds those buffers to one event loop, and each async_to_sync here is a new loop.
        self.channel = f"test.socket.{uuid.uuid4().hex}"
        async_to_sync(layer.group_add)(device_group(device.pk), self.channel)
        now = timezone.now()
        DeviceConnection.objects.create(device=device, channel_name=self.channel, worker="test",
                                        connected_at=now, seen_at=now)

    def frames(self) -> list[dict]:
        """Every frame sent to this socket so far (through the configured layer:
        in-memory by default, Redis in CI's second pass)."""
        return async_to_sync(self._drain)()

    async def _drain(self) -> list[dict]:
        layer = get_channel_layer()
        out = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(self.channel), timeout=0.1)
            except TimeoutError:
                return out
            out.append(json.loads(message["text"]))

    def types(self) -> list[str]:
        return [frame["type"] for frame in self.frames()]

    def ack(self, frames: list[dict] | None = None, *, of_type: str = "call.ringing") -> list[dict]:
        """Acknowledge frames as the app does (the consumer's `ack`); by default every
        `call.ringing` received so far. Returns the frames acked."""
        from notifications.fanout import delivery_ack

        chosen = [f for f in (self.frames() if frames is None else frames) if f["type"] == of_type]
        for f in chosen:
            delivery_ack(event_id=f["id"], device=self.device, now=timezone.now())
        return chosen


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    layer = get_channel_layer()
    if hasattr(layer, "flush"):
        async_to_sync(layer.flush)()
    yield


@pytest.fixture
def line(handset):
    line, _ = line_services.line_register(device=handset[0], number="+15551234567", region=None,
                                         now=timezone.now())
    return line_services.line_forwarding_confirm(line=line, state="active", target=line.server_number.number,
                                                 now=timezone.now())


@pytest.fixture
def tablet(user):
    return make_device(user, kind="tablet", name="Tablet", connect_type="client", connect_address="tablet-1")


@pytest.fixture
def desktop(user):
    return make_device(user, kind="desktop", name="Desktop", connect_type="sip", connect_address="sip:desk@pbx.example")


@pytest.fixture
def desktop_api(desktop):
    return client_for(desktop[1])


@pytest.fixture
def online():
    return Socket


def report(client, line, *, caller="+15550009999", report_id=None, **extra):
    body = {"report_id": str(report_id or uuid.uuid4()), "line": str(line.pk), "caller": caller,
            "caller_name": "Bob", **extra}
    return client.post("/api/v1/calls", body, format="json")


def signed_post(client, path: str, params: dict, *, token: str | None = None):
    url = settings.PUBLIC_BASE_URL + path
    signature = RequestValidator(token or settings.TWILIO_AUTH_TOKEN).compute_signature(url, params)
    return client.post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)


def conference_sid(call_id) -> str:
    """The SID the fake provider (and the `conference` callbacks below) give the call's conference."""
    return "CF" + hashlib.md5(f"callpull-{call_id}".encode()).hexdigest()


class FakeProvider:
    """Stands in for callpull.telephony.provider's REST side (the one module unit
    tests may patch) and records what the backend asked the provider to do.

    `fail(kind, *errors)`: the next requests of that kind ("add", "remove", "mute",
    "hold", "unhold", "redirect", "hangup", "lookup", "place") raise these ProviderErrors, in order."""

    def __init__(self):
        self.actions = []
        self.refuse = False
        self.sids = {}  # leg label → CallSid
        self.statuses = {}  # CallSid → what call_status answers (unknown sids: in-progress)
        self.ended_conferences = set()  # friendly names conference_sid_for finds no live conference for
        self.failures = {}  # kind → ProviderErrors still to raise
        self.placed = []  # every call_place_url's arguments
        self.parameters = {}  # leg label → the custom parameters participant_add sent (a client leg's)

    def _maybe_refuse(self, what):
        if self.refuse:
            from callpull.telephony.provider import ProviderError
            raise ProviderError(f"{what}: 503")

    def fail(self, kind, *errors):
        self.failures.setdefault(kind, []).extend(errors)

    def _maybe_fail(self, kind, action):
        self.actions.append(action)
        if self.failures.get(kind):
            raise self.failures[kind].pop(0)

    def participant_add(self, *, conference, kind, address, caller_id, label, status_url, conference_status_url,
                        timeout, muted=False, parameters=None):
        from callpull.telephony.provider import Added

        self._maybe_refuse("add")
        self.parameters[label] = parameters
        self._maybe_fail("add", ("add", conference, f"{kind}:{address}", label))
        sid = "CA" + uuid.uuid4().hex
        self.sids[label] = sid
        return Added(call_sid=sid, conference_sid="CF" + hashlib.md5(conference.encode()).hexdigest())

    def call_place_url(self, *, to, from_, url, status_url, timeout):
        """A screened number leg's own call (legs._dial): recorded as ("place", its screen
        URL, "number:<to>", the leg's id), its CallSid kept under the leg's id like a label."""
        self._maybe_refuse("place")
        label = parse_qs(urlsplit(url).query)["leg"][0]
        self._maybe_fail("place", ("place", url, f"number:{to}", label))
        self.placed.append({"to": to, "from_": from_, "url": url, "status_url": status_url, "timeout": timeout})
        sid = "CA" + uuid.uuid4().hex
        self.sids[label] = sid
        return sid

    def conference_sid_for(self, name):
        self._maybe_fail("lookup", ("lookup", name))
        return None if name in self.ended_conferences else "CF" + hashlib.md5(name.encode()).hexdigest()

    def participant_remove(self, *, conference_sid, call_sid):
        self._maybe_fail("remove", ("remove", conference_sid, call_sid))

    def participant_mute(self, *, conference_sid, call_sid, muted=True):
        self._maybe_fail("mute", ("mute", conference_sid, call_sid))

    def participant_hold(self, *, conference_sid, call_sid, hold, hold_url=None):
        kind = "hold" if hold else "unhold"
        self._maybe_fail(kind, (kind, conference_sid, call_sid))

    def call_redirect(self, call_sid, url):
        self._maybe_refuse("redirect")
        self._maybe_fail("redirect", ("redirect", call_sid, url))

    def call_hangup(self, call_sid):
        self._maybe_fail("hangup", ("hangup", call_sid))

    def call_status(self, call_sid):
        self._maybe_refuse("status")
        self.actions.append(("status", call_sid))
        return self.statuses.get(call_sid, "in-progress")

    def kinds(self):
        return [action[0] for action in self.actions]


@pytest.fixture(autouse=True)
def fake_provider(monkeypatch):
    from callpull.telephony import provider

    fake = FakeProvider()
    for name in ("participant_add", "participant_remove", "participant_mute", "participant_hold", "call_redirect",
                 "call_hangup", "call_status", "conference_sid_for", "call_place_url"):
        monkeypatch.setattr(provider, name, getattr(fake, name))
    return fake


def forward(client, *, sid, to="+15555550100", caller="+15550009999", forwarded_from="+15551234567"):
    """The provider's voice webhook for a forwarded (or dialled-in) call."""
    params = {"CallSid": sid, "To": to, "From": caller, "CallStatus": "ringing", "Direction": "inbound",
              "AccountSid": "AC" + "5" * 32}
    if forwarded_from:
        params["ForwardedFrom"] = forwarded_from
    return signed_post(client, "/telephony/twilio/voice", params)


def conference(client, call_id, event, *, label="", sid=""):
    params = {"StatusCallbackEvent": event, "CallSid": sid, "FriendlyName": f"callpull-{call_id}",
              "ConferenceSid": conference_sid(call_id)}
    if label:
        params["ParticipantLabel"] = label
    return signed_post(client, f"/telephony/twilio/conference?call={call_id}", params)


def leg_status(client, call_id, leg_label, status, *, sid=""):
    return signed_post(client, f"/telephony/twilio/status?call={call_id}&leg={leg_label}",
                       {"CallSid": sid, "CallStatus": status})


def join_leg(client, call_id, fake_provider, label=None):
    """The provider reports the last dialled leg answered and joined the conference."""
    label = label or list(fake_provider.sids)[-1]
    return conference(client, call_id, "participant-join", label=label, sid=fake_provider.sids[label])


LIVE_SID = "CA" + "1" * 32  # the caller's CallSid of `live_call`


@pytest.fixture
def live_call(client, handset_api, line, tablet, tablet_api, online, fake_provider):
    """A call connected on the tablet (a client target), its caller's CallSid LIVE_SID."""
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    assert tablet_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    forward(client, sid=LIVE_SID)
    join_leg(client, call_id, fake_provider)
    assert Call.objects.get().state == "connected"
    fake_provider.actions.clear()
    return call_id
