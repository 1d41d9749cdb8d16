"""`account.changed`: every device of a user hears of a sensitive change to the account
(a new transfer PIN or allow-list, a device's connect target or phone number, a device
added or removed), so a change made with a stolen token does not go unseen.

The change itself is in the account's audit log (devices.audit); this only announces it.
"""

import logging
import uuid
from datetime import timedelta

from django.utils import timezone

from devices.models import AuditEntry, Device
from notifications.fanout import fanout

log = logging.getLogger(__name__)

EVENT = "account.changed"
# A device that was offline should still hear of it when it comes back within a day.
PUSH_TTL = timedelta(days=1)
# Delivery rows group by an opaque UUID: one per audit entry.
_REF_NAMESPACE = uuid.UUID("5d0c6f1e-2b47-4a8e-9a53-8f0f3b1c7a21")


def change_of(entry: AuditEntry) -> dict:
    device = entry.device
    return {"id": entry.pk, "action": entry.action, "at": entry.at,
            "device": None if device is None else {"id": str(device.pk), "name": device.name, "kind": device.kind}}


def on_account_changed(sender, entry: AuditEntry, **kwargs) -> None:
    """Receiver of devices.signals.account_changed (on commit): WebSocket to every active
    device of the user, FCM to every one but the device that made the change (its answer
    told it; a device that just registered is not woken to hear of itself). Best effort:
    the change is written whatever happens here."""
    now = timezone.now()
    change = change_of(entry)
    try:
        fanout(event_type=EVENT, payload={"change": change}, devices=list(Device.objects.filter(user_id=entry.user_id)),
               no_push=frozenset({entry.device_id}),
               ref=uuid.uuid5(_REF_NAMESPACE, str(entry.pk)), now=now,
               fcm_data={"action": entry.action, "audit_id": str(entry.pk),
                         "device_id": change["device"]["id"] if change["device"] else ""},
               deadline=now + PUSH_TTL, collapse_key=f"account.{entry.user_id}")
    except Exception:
        log.exception("announcing an account change failed user=%s action=%s", entry.user_id, entry.action)
