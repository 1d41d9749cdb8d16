"""Calls and pulls as clients see them, in HTTP answers and in event payloads alike."""

from collections.abc import Sequence
from datetime import datetime

from callpull.models import Call, Pull, TimelineEntry
from devices.models import Device
from notifications.models import Delivery


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def call_to_dict(call: Call) -> dict:
    return {
        "id": str(call.pk),
        "line": call.line.number,
        "line_id": str(call.line_id),
        "caller": call.caller or None,
        "caller_name": call.caller_name or None,
        "state": call.state,
        "policy": call.policy,
        "forwarding_kind": call.forwarding_kind,
        "reported_by": str(call.reported_by_id) if call.reported_by_id else None,
        "answered_by": str(call.answered_by_id) if call.answered_by_id else None,
        "held_by": str(call.held_by_id) if call.held_by_id else None,
        "transferred_to": call.transferred_to or None,
        "created_at": _iso(call.created_at),
        "expires_at": _iso(call.expires_at),
        "ended_at": _iso(call.ended_at),
        "end_reason": call.end_reason or None,
    }


def pull_to_dict(pull: Pull) -> dict:
    return {"id": str(pull.pk), "call": str(pull.call_id), "state": pull.state, "method": pull.method,
            "requested_by": str(pull.requested_by_id),
            "from_device": str(pull.from_device_id) if pull.from_device_id else None,
            "created_at": _iso(pull.created_at), "expires_at": _iso(pull.expires_at),
            "decided_at": _iso(pull.decided_at), "ended_at": _iso(pull.ended_at), "reason": pull.reason or None}


def _entry(at, event, device_id=None, detail=None) -> dict:
    entry = {"at": at, "event": event}
    if device_id is not None:
        entry["device"] = str(device_id)
    if detail:
        entry["detail"] = detail
    return entry


def call_timeline(call: Call, *, steps: Sequence[TimelineEntry] | None = None,
                  deliveries: Sequence[Delivery] | None = None) -> list[dict]:
    """The call's own steps merged with every notification sent and delivered for it.

    `steps` and `deliveries`: the call's timeline entries and delivery records
    (in the order they were written) when the caller wrote all of them itself and
    holds them, instead of reading them back."""
    if steps is None:
        steps = call.timeline.all()
    if deliveries is None:
        deliveries = Delivery.objects.filter(ref=call.pk).order_by("queued_at", "id")
    entries = [_entry(e.at, e.event, e.device_id, e.detail) for e in steps]
    for d in deliveries:
        detail = {"transport": d.transport, "type": d.event_type, "event_id": str(d.event_id)}
        if d.sent_at:
            entries.append(_entry(d.sent_at, "notification_sent", d.device_id,
                                  {**detail, "attempts": d.attempts} if d.attempts > 1 else detail))
        if d.error:
            entries.append(_entry(d.sent_at or d.queued_at, "notification_failed", d.device_id,
                                  {**detail, "error": d.error}))
        if d.delivered_at:
            entries.append(_entry(d.delivered_at, "notification_delivered", d.device_id, detail))
    entries.sort(key=lambda entry: entry["at"])
    for entry in entries:
        entry["at"] = _iso(entry["at"])
    return entries


def call_devices(call: Call, timeline: list[dict]) -> list[dict]:
    """Every device the call names (answered_by, held_by, the timeline's), removed ones
    too: a revoked device keeps its row (revoked_at set), so history keeps its name."""
    ids = {entry["device"] for entry in timeline if "device" in entry}
    ids |= {str(pk) for pk in (call.answered_by_id, call.held_by_id) if pk}
    return [{"id": str(device.pk), "name": device.name, "kind": device.kind, "removed": device.revoked_at is not None}
            for device in Device.all_objects.filter(pk__in=ids).order_by("created_at")]


def call_with_timeline(call: Call, *, steps: Sequence[TimelineEntry] | None = None,
                       deliveries: Sequence[Delivery] | None = None) -> dict:
    timeline = call_timeline(call, steps=steps, deliveries=deliveries)
    return {**call_to_dict(call), "timeline": timeline, "devices": call_devices(call, timeline)}
