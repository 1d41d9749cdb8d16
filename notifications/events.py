"""Server → device events: their frame, and the groups that carry them.

Every frame is `{"type", "id", "at", …}`. A frame is serialised once and the
text handed to the channel layer, so a fan-out to many sockets costs one
`json.dumps`, not one per socket.
"""

import json
import uuid
from datetime import datetime

from channels.layers import get_channel_layer
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

# The consumer method that writes a pre-serialised frame to its socket.
FRAME_MESSAGE = "frame.send"
CLOSE_MESSAGE = "socket.close"


def device_group(device_id) -> str:
    return f"device.{uuid.UUID(str(device_id)).hex}"


def user_group(user_id) -> str:
    return f"user.{user_id}"


def frame(event_type: str, *, at: datetime | None = None, **payload) -> tuple[str, str]:
    """Return (event id, JSON text) for one event."""
    event_id = str(uuid.uuid4())
    body = {"type": event_type, "id": event_id, "at": (at or timezone.now()), **payload}
    return event_id, json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":"))


async def send_to_group(group: str, text: str) -> None:
    await get_channel_layer().group_send(group, {"type": FRAME_MESSAGE, "text": text})


async def close_group(group: str, code: int) -> None:
    await get_channel_layer().group_send(group, {"type": CLOSE_MESSAGE, "code": code})
