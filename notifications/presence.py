"""Presence across workers: broadcasts, the per-worker heartbeat, and cleanup.

Each ASGI worker has a WORKER_ID. Its consumers record their connections under
it; `heartbeat_loop` refreshes them and prunes connections of workers that
stopped refreshing (killed, crashed), announcing those devices offline.
"""

import asyncio
import logging
import os
import socket
import uuid

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from devices import services as device_services
from devices.models import DeviceConnection
from notifications.events import CLOSE_MESSAGE, close_group, device_group, frame, send_to_group, user_group
from notifications.layers import send_many

log = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

# Channel names of this worker's open, authenticated sockets. The heartbeat keeps
# exactly these rows fresh: a row whose consumer ended without its disconnect()
# (it died with its channel-layer connection, say) is dropped at the next beat
# instead of being kept fresh for as long as the worker lives.
LIVE: set[str] = set()

# Close code for a socket whose device was revoked while it was connected.
CLOSE_REVOKED = 4401


async def announce(device, online: bool) -> None:
    _, text = frame("device.presence", device={"id": str(device.pk), "name": device.name, "kind": device.kind},
                    online=online)
    await send_to_group(user_group(device.user_id), text)


def on_device_revoked(sender, device, **kwargs) -> None:
    channels = list(DeviceConnection.objects.filter(device=device).values_list("channel_name", flat=True))
    async_to_sync(_close_sockets)(device, channels)


async def _close_sockets(device, channels: list[str]) -> None:
    # By channel name (the rows), and by group for a socket whose row is not written yet.
    await send_many(get_channel_layer(), channels, {"type": CLOSE_MESSAGE, "code": CLOSE_REVOKED})
    await close_group(device_group(device.pk), CLOSE_REVOKED)


def _beat() -> list:
    close_old_connections()
    now = timezone.now()
    gone = device_services.worker_heartbeat(worker=WORKER_ID, now=now, live=set(LIVE))
    return gone + device_services.connections_prune(now=now)


def _forget_worker() -> list:
    close_old_connections()
    return device_services.connections_forget_worker(worker=WORKER_ID, now=timezone.now())


async def heartbeat_loop() -> None:
    interval = settings.PRESENCE_HEARTBEAT_SECONDS
    while True:
        try:
            for device in await database_sync_to_async(_beat)():
                await announce(device, online=False)
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup must not stop presence for good
            log.exception("presence heartbeat failed worker=%s", WORKER_ID)
        await asyncio.sleep(interval)


async def worker_stopped() -> None:
    """On a clean shutdown this worker's sockets are gone: forget them now
    rather than after PRESENCE_STALE_SECONDS."""
    for device in await database_sync_to_async(_forget_worker)():
        await announce(device, online=False)
