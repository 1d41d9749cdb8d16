"""Writes of the call workflow: lines, their forwarding, account settings.

Keyword-only, typed, atomic; the clock is read by the caller and passed as `now`.
"""

import logging
from datetime import datetime

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.db import IntegrityError, transaction
from django.db.models import Count

from callpull import mmi
from callpull.models import (
    NO_ANSWER_TIMERS,
    AccountSettings,
    ForwardingKind,
    ForwardingState,
    Line,
    ServerNumber,
    forwarding_fields,
)
from devices import audit
from devices.errors import ServiceError
from devices.models import Device
from devices.phone import to_e164
from devices.services import reauthenticate

log = logging.getLogger(__name__)


def server_number_pick() -> ServerNumber | None:
    """The server number for a new line: one no line has while the pool (SERVER_NUMBERS)
    has one, so that `To` alone tells its forwarded calls apart (docs/CALLS.md); else the
    one carrying the fewest lines, logged at WARNING. Call it inside the transaction that
    creates the line: it locks the pool's rows (on SQLite the IMMEDIATE transaction holds
    the write lock), so lines registered at once do not pick the same free number."""
    ServerNumber.objects.bulk_create(
        [ServerNumber(number=number) for number in settings.SERVER_NUMBERS], ignore_conflicts=True
    )
    pool = list(ServerNumber.objects.select_for_update().filter(number__in=settings.SERVER_NUMBERS, active=True)
                .order_by("number"))
    if not pool:
        return None
    loads = dict(Line.objects.filter(server_number__in=pool).order_by().values("server_number")
                 .annotate(n=Count("id")).values_list("server_number", "n"))
    picked = min(pool, key=lambda number: loads.get(number.pk, 0))  # the first of the least used, by number
    if loads.get(picked.pk, 0):
        log.warning("server numbers used up: a new line shares %s with %d other line(s); its forwarded calls are "
                    "told apart by caller and ForwardedFrom only (add numbers to SERVER_NUMBERS, %d now)",
                    picked.number, loads[picked.pk], len(pool))
    return picked


def line_register(*, device: Device, number: str, region: str | None, now: datetime) -> tuple[Line, bool]:
    """Register the handset's number. Returns (line, created); registering the
    same number again returns the user's existing line."""
    e164 = to_e164(number, region)
    existing = Line.objects.filter(number=e164).select_related("server_number").first()
    if existing is not None:
        if existing.user_id != device.user_id:
            raise ServiceError("line_taken", "This number is registered to another account.")
        return existing, False
    try:
        with transaction.atomic():
            server_number = server_number_pick()  # in the transaction: see its docstring
            if server_number is None:
                raise ServiceError("no_server_number", "No server number is available.")
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
    if "carrier_profile" in data and not mmi.profile_known(data["carrier_profile"]):
        raise ServiceError("invalid_input", "Unknown carrier profile.",
                           fields={"carrier_profile": [f"One of: {', '.join(sorted(mmi.PROFILES))}."]})
    changed = [field for field in ("policy", "fallback_number", "carrier_profile") if field in data]
    for field in changed:
        setattr(line, field, data[field])
    if changed:
        line.save(update_fields=changed)
    return line


def line_forwarding_confirm(*, line: Line, state: str, target: str | None, now: datetime,
                            kind: str = ForwardingKind.BUSY, timer: int | None = None) -> Line:
    """Record what the handset's interrogation of `kind` reported (*#67#, *#61#, *#62#,
    *#21#; `conditional`: busy, no_answer and unreachable at once, as *#004# does).

    `active` counts only when the reported target is this line's server number;
    forwarding elsewhere is `mismatch`, and the backend will not ask the handset
    to reject calls on it (busy) nor take the network's forwarded calls as the line's.
    `timer` (5 to 30 s in steps of 5) is the no-answer timer, for no_answer and
    conditional only.
    """
    if kind not in mmi.CODE_KINDS:
        raise ServiceError("invalid_input", "Unknown forwarding kind.",
                           fields={"kind": [f"One of: {', '.join(mmi.CODE_KINDS)}."]})
    kinds = mmi.CONDITIONAL_KINDS if kind == mmi.CONDITIONAL else (ForwardingKind(kind),)
    if timer is not None and ForwardingKind.NO_ANSWER not in kinds:
        raise ServiceError("invalid_input", "timer applies to no_answer and conditional only.",
                           fields={"timer": ["Only with kind no_answer or conditional."]})
    if timer is not None and timer not in NO_ANSWER_TIMERS:
        raise ServiceError("invalid_input", "timer is 5 to 30 seconds in steps of 5.",
                           fields={"timer": ["One of 5, 10, 15, 20, 25, 30."]})
    target_e164 = to_e164(target, line.region or None, field="target") if target else ""
    if state == ForwardingState.ACTIVE:
        if not target_e164:
            raise ServiceError("invalid_input", "target is required when state is active.",
                           fields={"target": ["Required when state is active."]})
        new_state = ForwardingState.ACTIVE if target_e164 == line.server_number.number else ForwardingState.MISMATCH
    else:
        new_state = ForwardingState.INACTIVE
    values = {}
    for each in kinds:
        state_field, target_field, verified_field = forwarding_fields(each)
        values.update({state_field: new_state, target_field: target_e164, verified_field: now})
    if ForwardingKind.NO_ANSWER in kinds:
        values["no_answer_timer"] = timer
    Line.objects.filter(pk=line.pk).update(**values)
    for field, value in values.items():
        setattr(line, field, value)
    log.info("line forwarding line=%s kind=%s reported=%s state=%s", line.pk, kind, state, new_state)
    return line


def account_settings_get(*, user) -> AccountSettings:
    account, _ = AccountSettings.objects.get_or_create(user=user)
    return account


def transfer_pin_matches(sender, *, user, pin: str | None, **kwargs) -> bool | None:
    """Receiver of devices.signals.transfer_pin_check: None when the user has no transfer
    PIN, else whether `pin` is it."""
    pin_hash = AccountSettings.objects.filter(user=user).values_list("transfer_pin_hash", flat=True).first()
    if not pin_hash:
        return None
    return pin is not None and check_password(str(pin), pin_hash)


def account_settings_update(*, user, device: Device, data: dict, now: datetime, password: str | None = None,
                            current_pin: str | None = None, client_ip: str = "") -> AccountSettings:
    """Change the account's settings as asked by `device`. A new transfer PIN or allow-list
    needs the account password or the current PIN (`reauthenticate`) and is written to the
    audit log, which tells every device of the user."""
    current = account_settings_get(user=user)
    allowlist = None
    if "transfer_allowlist" in data:
        numbers = [to_e164(raw, field=f"transfer_allowlist.{i}") for i, raw in enumerate(data["transfer_allowlist"])]
        allowlist = list(dict.fromkeys(numbers))
    pin = data.get("transfer_pin") or ""
    pin_changes = "transfer_pin" in data and bool(pin or current.transfer_pin_hash)
    allowlist_changes = allowlist is not None and allowlist != current.transfer_allowlist
    if pin_changes or allowlist_changes:
        reauthenticate(user=user, device=device, password=password, current_pin=current_pin, now=now)
    with transaction.atomic():
        account = AccountSettings.objects.select_for_update().get(user=user)
        changed = []
        for field in ("pull_requires_approval", "monitor_after_switch"):
            if field in data:
                setattr(account, field, data[field])
                changed.append(field)
        if allowlist_changes:
            account.transfer_allowlist = allowlist
            changed.append("transfer_allowlist")
            audit.audit_record(user=user, device=device, action=audit.TRANSFER_ALLOWLIST_CHANGED,
                               detail={"numbers": allowlist}, client_ip=client_ip, now=now)
        if pin_changes:
            account.transfer_pin_hash = make_password(pin) if pin else ""
            changed.append("transfer_pin_hash")
            audit.audit_record(user=user, device=device, action=audit.TRANSFER_PIN_CHANGED,
                               detail={"set": bool(pin)}, client_ip=client_ip, now=now)
        if changed:
            account.save(update_fields=changed)
    return account
