"""Fixtures for the ring flow: an active line, devices that are 'online' on a
channel-layer channel we can read frames from, and signed webhook posts."""

import asyncio
import json
import uuid

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


class FakeProvider:
    """Stands in for callpull.telephony.provider's REST side (the one module unit
    tests may patch) and records what the backend asked the provider to do."""

    def __init__(self):
        self.actions = []
        self.refuse = False
        self.sids = {}  # leg label → CallSid
        self.statuses = {}  # CallSid → what call_status answers (unknown sids: in-progress)

    def _maybe_refuse(self, what):
        if self.refuse:
            from callpull.telephony.provider import ProviderError
            raise ProviderError(f"{what}: 503")

    def participant_add(self, *, conference, kind, address, caller_id, label, status_url, conference_status_url,
                        timeout, muted=False):
        self._maybe_refuse("add")
        sid = "CA" + uuid.uuid4().hex
        self.sids[label] = sid
        self.actions.append(("add", conference, f"{kind}:{address}", label))
        return sid

    def participant_remove(self, *, conference, call_sid):
        self.actions.append(("remove", conference, call_sid))

    def participant_mute(self, *, conference, call_sid, muted=True):
        self.actions.append(("mute", conference, call_sid))

    def participant_hold(self, *, conference, call_sid, hold, hold_url=None):
        self.actions.append(("hold" if hold else "unhold", conference, call_sid))

    def call_redirect(self, call_sid, url):
        self._maybe_refuse("redirect")
        self.actions.append(("redirect", call_sid, url))

    def call_hangup(self, call_sid):
        self.actions.append(("hangup", call_sid))

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
                 "call_hangup", "call_status"):
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
              "ConferenceSid": "CF" + "0" * 32}
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
