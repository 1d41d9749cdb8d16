"""Who hears about a call, and what they hear: the user's devices, over WebSocket
and FCM (notifications.fanout), with the call (and a pull) as clients see them
(callpull.representations)."""

from datetime import datetime, timedelta

from callpull.models import Call, Pull
from callpull.representations import call_to_dict, pull_to_dict
from devices.models import Device, DeviceKind
from notifications import apns, fcm
from notifications.fanout import fanout


def ring_targets_query(call: Call):
    return Device.objects.filter(user_id=call.user_id, ring_enabled=True).exclude(kind=DeviceKind.HANDSET)


def ring_targets(call: Call) -> list[Device]:
    """The user's secondary devices that want to ring."""
    return list(ring_targets_query(call))


def all_devices(call: Call) -> list[Device]:
    return list(Device.objects.filter(user_id=call.user_id))


def handset(call: Call) -> list[Device]:
    """The handset that reported the call (none when it was removed since)."""
    return list(Device.objects.filter(pk=call.reported_by_id))


def fcm_data(call: Call) -> dict[str, str]:
    return {"call_id": str(call.pk), "caller": call.caller, "caller_name": call.caller_name,
            "line": call.line.number, "expires_at": call.expires_at.isoformat() if call.expires_at else ""}


def _deadline(call: Call, now: datetime) -> datetime:
    return call.expires_at or now + timedelta(seconds=10)


def call_event(call: Call, event_type: str, devices: list[Device], *, now: datetime, push: bool = True,
               online: set | None = None, on_fcm_accepted=None, **extra) -> dict:
    """The arguments of notifications.fanout (or fanout_prepare) for a call event."""
    return dict(event_type=event_type, payload={"call": call_to_dict(call), **extra}, devices=devices,
                ref=call.pk, now=now, fcm_data=fcm_data(call) if push else None,
                deadline=_deadline(call, now), collapse_key=str(call.pk), online=online,
                on_fcm_accepted=on_fcm_accepted)


def notify(call: Call, event_type: str, devices: list[Device], *, now: datetime, **options):
    """Send a call event to devices (WebSocket, and FCM unless `push=False`)."""
    return fanout(**call_event(call, event_type, devices, now=now, **options))


def announce_end(call: Call, *, now: datetime, reason: str) -> None:
    notify(call, "call.ended", all_devices(call), now=now, reason=reason)


def announce_pull(pull: Pull, event_type: str, *, now: datetime, push_to: list[Device] | None = None,
                  **extra) -> None:
    """A pull's news (`pull.requested`, `.approved`, `.denied`, `.completed`, `.failed`) to
    every device of the user over WebSocket; pushed to `push_to` too (a sleeping holder
    that must decide)."""
    call = pull.call
    devices = all_devices(call)
    notify(call, event_type, devices, now=now, push=False, pull=pull_to_dict(pull), **extra)
    if push_to and (fcm.enabled() or apns.enabled()):
        notify(call, event_type, push_to, now=now, online=set(), pull=pull_to_dict(pull), **extra)
