"""Open a device's WebSocket and print every frame: `manage.py listen --token …`.

A developer's stand-in for a secondary device: it answers pings, acknowledges
events the way a real client must, and prints what the server sends.
"""

import asyncio
import json

import websockets
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Connect to /ws/v1/ as a device and print the frames it receives."

    def add_arguments(self, parser):
        parser.add_argument("--token", required=True, help="the device's bearer token")
        parser.add_argument("--url", default=None, help="default: PUBLIC_BASE_URL with ws:// and /ws/v1/")
        parser.add_argument("--count", type=int, default=0, help="stop after this many frames (0: never)")

    def handle(self, *args, token, url, count, **options):
        url = url or settings.PUBLIC_BASE_URL.replace("http", "ws", 1) + "/ws/v1/"
        try:
            asyncio.run(self.listen(url, token, count))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise CommandError(f"cannot reach {url}: {exc}") from exc

    async def listen(self, url, token, count):
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as socket:
            received = 0
            try:
                async for text in socket:
                    frame = json.loads(text)
                    self.stdout.write(json.dumps(frame))
                    if frame.get("id") and frame.get("type") not in ("hello", "pong", "error"):
                        await socket.send(json.dumps({"type": "ack", "id": frame["id"]}))
                    received += 1
                    if count and received >= count:
                        return
            except websockets.ConnectionClosed:
                pass
            if socket.close_code and socket.close_code >= 4000:
                raise CommandError(f"closed by the server with {socket.close_code}: check the token")
