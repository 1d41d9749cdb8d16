"""Writes of the call workflow: lines, their forwarding, account settings.

Keyword-only, typed, atomic; the clock is read by the caller and passed as `now`.
"""

import logging
from datetime import datetime

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.db.models import Count

from callpull.models import AccountSettings, ForwardingState, Line, ServerNumber
from devices.errors import ApiError, conflict
from devices.models import Device
from devices.phone import to_e164

log = logging.getLogger(__name__)


def server_number_pick() -> ServerNumber:
    """The configured server number carrying the fewest lines (spreads the pool)."""
    ServerNumber.objects.bulk_create(
        [ServerNumber(number=number) for number in settings.SERVER_NUMBERS], ignore_conflicts=True
    )
    return (
        ServerNumber.objects.filter(number__in=settings.SERVER_NUMBERS, active=True)
        .annotate(load=Count("lines"))
        .order_by("load", "number")
        .first()
    )


def line_register(*, device: Device, number: str, region: str | None, now: datetime) -> tuple[Line, bool]:
    """Register the handset's number. Returns (line, created); registering the
    same number again returns the user's existing line."""
    e164 = to_e164(number, region)
    existing = Line.objects.filter(number=e164).select_related("server_number").first()
    if existing is not None:
        if existing.user_id != device.user_id:
            raise conflict("line_taken", "This number is registered to another account.")
        return existing, False
    server_number = server_number_pick()
    if server_number is None:
        raise ApiError("no_server_number", "No server number is available.", status=503)
    try:
        with transaction.atomic():
            line = Line.objects.create(user=device.user, number=e164, region=(region or "").upper(),
                                       server_number=server_number, registered_by=device, created_at=now)
    except IntegrityError:  # registered concurrently
        return line_register(device=device, number=number, region=region, now=now)
    log.info("line registered line=%s user=%s server_number=%s", line.pk, device.user_id, server_number.number)
    return line, True


def line_update(*, line: Line, data: dict) -> Line:
    if "fallback_number" in data and data["fallback_number"]:
        data = {**data, "fallback_number": to_e164(data["fallback_number"], line.region or None,
                                                   field="fallback_number")}
    changed = [field for field in ("policy", "fallback_number") if field in data]
    for field in changed:
        setattr(line, field, data[field])
    if changed:
        line.save(update_fields=changed)
    return line


def line_forwarding_confirm(*, line: Line, state: str, target: str | None, now: datetime) -> Line:
    """Record what the handset's interrogation (*#67#) reported.

    `active` counts only when the reported target is this line's server number;
    forwarding elsewhere is `mismatch`, and the backend will not ask the handset
    to reject calls on it.
    """
    target_e164 = to_e164(target, line.region or None, field="target") if target else ""
    if state == ForwardingState.ACTIVE:
        if not target_e164:
            raise ApiError("invalid_input", "target is required when state is active.",
                           fields={"target": ["Required when state is active."]})
        new_state = ForwardingState.ACTIVE if target_e164 == line.server_number.number else ForwardingState.MISMATCH
    else:
        new_state = ForwardingState.INACTIVE
    Line.objects.filter(pk=line.pk).update(forwarding_state=new_state, forwarding_target=target_e164,
                                           forwarding_verified_at=now)
    line.forwarding_state, line.forwarding_target, line.forwarding_verified_at = new_state, target_e164, now
    log.info("line forwarding line=%s reported=%s state=%s", line.pk, state, new_state)
    return line


def account_settings_get(*, user) -> AccountSettings:
    account, _ = AccountSettings.objects.get_or_create(user=user)
    return account


def account_settings_update(*, user, data: dict) -> AccountSettings:
    with transaction.atomic():
        AccountSettings.objects.get_or_create(user=user)
        account = AccountSettings.objects.select_for_update().get(user=user)
        changed = []
        for field in ("pull_requires_approval", "monitor_after_switch"):
            if field in data:
                setattr(account, field, data[field])
                changed.append(field)
        if "transfer_allowlist" in data:
            numbers = [to_e164(raw, field=f"transfer_allowlist.{i}")
                       for i, raw in enumerate(data["transfer_allowlist"])]
            account.transfer_allowlist = list(dict.fromkeys(numbers))
            changed.append("transfer_allowlist")
        if "transfer_pin" in data:
            pin = data["transfer_pin"]
            account.transfer_pin_hash = make_password(pin) if pin else ""
            changed.append("transfer_pin_hash")
        if changed:
            account.save(update_fields=changed)
    return account
