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
