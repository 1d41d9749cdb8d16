"""The floor: a bare Channels app that does only what the ring path cannot avoid.

- WebSocket /ws/v1/ with `Authorization: Bearer <token>`: the token is looked up in
  the benchmark's seed file (BENCH_FLOOR_SEED, no database), the socket joins its
  device group (the same group name as notifications.events.device_group) and gets
  a `hello` frame.
- POST /api/v1/calls with the handset's token and `{"caller": …}`: one
  `channel_layer.group_send` per secondary device of that user (gathered, as
  notifications.fanout does), with a `call.ringing` frame padded to
  BENCH_FRAME_BYTES, then 201. No database, no Django request handling.
"""
import asyncio
import json
import os
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.floor.settings")
import django  # noqa: E402

django.setup()
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

FRAME_BYTES = int(os.environ.get("BENCH_FRAME_BYTES", "700"))
DEVICE_BY_TOKEN: dict[str, str] = {}
SECONDARIES_BY_HANDSET_TOKEN: dict[str, list[str]] = {}
with open(os.environ["BENCH_FLOOR_SEED"]) as seed_file:
    for household in json.load(seed_file):
        DEVICE_BY_TOKEN[household["handset"]["token"]] = household["handset"]["id"]
        SECONDARIES_BY_HANDSET_TOKEN[household["handset"]["token"]] = [d["id"] for d in household["secondaries"]]
        for device in household["secondaries"]:
            DEVICE_BY_TOKEN[device["token"]] = device["id"]


def device_group(device_id) -> str:
    return f"device.{uuid.UUID(str(device_id)).hex}"


def _bearer(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1")
            return text[7:] if text.startswith("Bearer ") else ""
    return ""


class FloorConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        device_id = DEVICE_BY_TOKEN.get(_bearer(self.scope))
        if device_id is None:
            await self.close(code=4401)
            return
        self.group = device_group(device_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send(text_data=json.dumps({"type": "hello", "device": {"id": device_id}}))

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def frame_send(self, message):
        await self.send(text_data=message["text"])


def _frame(caller: str) -> str:
    body = {"type": "call.ringing", "id": str(uuid.uuid4()), "call": {"caller": caller}, "pad": ""}
    text = json.dumps(body, separators=(",", ":"))
    body["pad"] = "x" * max(0, FRAME_BYTES - len(text))
    return json.dumps(body, separators=(",", ":"))


async def http_app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST" and scope["path"] == "/api/v1/calls":
        targets = SECONDARIES_BY_HANDSET_TOKEN.get(_bearer(scope))
        if targets is None:
            status, answer = 401, b'{"error":"unauthorized"}'
        else:
            caller = json.loads(body or b"{}").get("caller", "")
            layer = get_channel_layer()
            message = {"type": "frame.send", "text": _frame(caller)}
            await asyncio.gather(*(layer.group_send(device_group(d), message) for d in targets))
            status, answer = 201, b'{"instruction":{"action":"keep_ringing"}}'
    else:
        status, answer = 200, b'{"service":"floor"}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


application = ProtocolTypeRouter({
    "http": http_app,
    "websocket": URLRouter([path("ws/v1/", FloorConsumer.as_asgi())]),
})
