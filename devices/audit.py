"""The account audit log: sensitive changes, who made them, when and from where.

Every entry is announced on commit with `devices.signals.account_changed`, so the
layers above can tell all the user's devices (a stolen token's changes are seen).
Details never hold a secret: no password, PIN, token or code.
"""

from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet

from devices.models import AuditEntry, Device
from devices.signals import account_changed

TRANSFER_PIN_CHANGED = "transfer_pin_changed"
TRANSFER_ALLOWLIST_CHANGED = "transfer_allowlist_changed"
DEVICE_CONNECT_CHANGED = "device_connect_changed"
DEVICE_PHONE_NUMBER_CHANGED = "device_phone_number_changed"
DEVICE_REGISTERED = "device_registered"
DEVICE_REVOKED = "device_revoked"


def audit_record(*, user, device: Device | None, action: str, detail: dict, client_ip: str,
                 now: datetime) -> AuditEntry:
    """Write one entry (inside the caller's transaction, if any) and announce it once that commits.
    `device` is the device that made the change (None when none did)."""
    entry = AuditEntry.objects.create(user=user, device=device, action=action, detail=detail,
                                      client_ip=(client_ip or "")[:45], at=now)
    transaction.on_commit(lambda: account_changed.send(sender=AuditEntry, entry=entry))
    return entry


def audit_entries_for_user(*, user, limit: int) -> QuerySet[AuditEntry]:
    """The user's entries, newest first, with the device that made each."""
    return AuditEntry.objects.filter(user=user).select_related("device").order_by("-at", "-id")[:limit]
