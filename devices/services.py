"""Writes for users and their devices: sign-up, registration, credentials, presence.

Every function is keyword-only, takes `now` when time matters, and keeps its
writes in one transaction.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from rest_framework import status

from devices import ratelimit
from devices.errors import ApiError, conflict, forbidden
from devices.models import Device, DeviceConnection, PairingCode, WsTicket
from devices.secrets import (
    digest,
    new_device_token,
    new_pairing_code,
    new_ws_ticket,
    normalize_pairing_code,
)
from devices.signals import device_revoked

log = logging.getLogger(__name__)
User = get_user_model()

DEVICE_FIELDS = ("name", "kind", "platform", "fcm_token", "ring_enabled", "connect_type", "connect_address",
                 "phone_number")


@dataclass(frozen=True)
class Registration:
    device: Device
    token: str  # shown once, never stored


def user_signup(*, username: str, password: str, client_ip: str) -> "User":
    if not settings.ALLOW_SIGNUP:
        raise forbidden("signup_disabled", "Sign-up is disabled on this server.")
    ratelimit.check_and_hit("signup", client_ip)
    try:
        validate_password(password, user=User(username=username))
    except DjangoValidationError as exc:
        raise ApiError("invalid_password", "The password is too weak.",
                       fields={"password": list(exc.messages)}) from None
    try:
        with transaction.atomic():
            if User.objects.filter(username__iexact=username).exists():
                raise IntegrityError
            user = User.objects.create_user(username=username, password=password)
    except IntegrityError:
        raise conflict("username_taken", "That username is taken.") from None
    log.info("user signed up user=%s", user.pk)
    return user


def _create_device(*, user, data: dict, now: datetime) -> Registration:
    token = new_device_token()
    device = Device.objects.create(
        user=user, token_hash=digest(token), created_at=now, last_seen_at=now,
        **{field: data[field] for field in DEVICE_FIELDS if field in data},
    )
    log.info("device registered device=%s user=%s kind=%s", device.pk, user.pk, device.kind)
    return Registration(device=device, token=token)


def device_register_with_password(*, username: str, password: str, data: dict, client_ip: str,
                                  now: datetime) -> Registration:
    keys = (f"user:{username.lower()}", f"ip:{client_ip}")
    ratelimit.check("login_failure", *keys)
    user = authenticate(username=username, password=password)
    if user is None:
        ratelimit.hit("login_failure", *keys)
        log.info("device registration refused: bad credentials ip=%s", client_ip)
        raise ApiError("invalid_credentials", "Wrong username or password.",
                       status=status.HTTP_401_UNAUTHORIZED)
    with transaction.atomic():
        return _create_device(user=user, data=data, now=now)


def device_register_with_pairing_code(*, code: str, data: dict, client_ip: str, now: datetime) -> Registration:
    ratelimit.check("pairing_failure", f"ip:{client_ip}")
    with transaction.atomic():
        pairing = (
            PairingCode.objects.select_for_update()
            .select_related("user", "created_by")
            .filter(code_hash=digest(normalize_pairing_code(code)))
            .first()
        )
        usable = (
            pairing is not None
            and pairing.used_at is None
            and pairing.expires_at > now
            and pairing.created_by.revoked_at is None
            and pairing.user.is_active
        )
        if usable:
            registration = _create_device(user=pairing.user, data=data, now=now)
            # Guarded so two redemptions racing on SQLite (no row locks) still yield one.
            claimed = PairingCode.objects.filter(pk=pairing.pk, used_at__isnull=True).update(
                used_at=now, used_by=registration.device)
            if claimed:
                return registration
            transaction.set_rollback(True)
    ratelimit.hit("pairing_failure", f"ip:{client_ip}")
    raise ApiError("invalid_pairing_code", "The pairing code is wrong, expired or already used.",
                   fields={"pairing_code": ["Not a usable code."]})


def pairing_code_create(*, device: Device, now: datetime) -> tuple[str, datetime]:
    expires_at = now + timedelta(seconds=settings.PAIRING_CODE_TTL_SECONDS)
    for _ in range(5):
        code = new_pairing_code()
        try:
            with transaction.atomic():
                PairingCode.objects.create(user=device.user, created_by=device, code_hash=digest(code),
                                           created_at=now, expires_at=expires_at)
        except IntegrityError:  # a collision with a live code: draw again
            continue
        return code, expires_at
    raise RuntimeError("could not draw a unique pairing code")


def ws_ticket_issue(*, device: Device, now: datetime) -> tuple[str, int]:
    ratelimit.check_and_hit("ws_ticket", f"device:{device.pk}")
    ttl = settings.WS_TICKET_TTL_SECONDS
    ticket = new_ws_ticket()
    WsTicket.objects.create(device=device, ticket_hash=digest(ticket), created_at=now,
                            expires_at=now + timedelta(seconds=ttl))
    return ticket, ttl


def ws_ticket_redeem(*, ticket: str, now: datetime) -> Device | None:
    """The ticket's device, once: a second use, an expired ticket or a revoked
    device gives None."""
    hashed = digest(ticket)
    claimed = WsTicket.objects.filter(ticket_hash=hashed, used_at__isnull=True, expires_at__gt=now).update(used_at=now)
    if not claimed:
        return None
    return (
        Device.objects.select_related("user")
        .filter(pk__in=WsTicket.objects.filter(ticket_hash=hashed).values("device_id"), user__is_active=True)
        .first()
    )


def device_update(*, device: Device, data: dict) -> Device:
    changed = [field for field in DEVICE_FIELDS if field in data and getattr(device, field) != data[field]]
    for field in changed:
        setattr(device, field, data[field])
    if changed:
        device.save(update_fields=changed)
    return device


def device_revoke(*, device: Device, now: datetime) -> None:
    """Revoke at once: the token stops working, credentials it created die with it."""
    with transaction.atomic():
        Device.all_objects.filter(pk=device.pk).update(revoked_at=now, fcm_token="")
        WsTicket.objects.filter(device=device, used_at__isnull=True).update(used_at=now)
        PairingCode.objects.filter(created_by=device, used_at__isnull=True).update(expires_at=now)
        transaction.on_commit(lambda: device_revoked.send(sender=Device, device=device))
    device.revoked_at = now
    log.info("device revoked device=%s user=%s", device.pk, device.user_id)


# Presence -----------------------------------------------------------------

def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.PRESENCE_STALE_SECONDS)


def _live_connections(device_id, now: datetime):
    return DeviceConnection.objects.filter(device_id=device_id, seen_at__gt=_stale_before(now))


def connection_open(*, device: Device, channel_name: str, worker: str, now: datetime) -> bool:
    """Record a live WebSocket. True when the device just came online."""
    with transaction.atomic():
        was_online = _live_connections(device.pk, now).exists()
        DeviceConnection.objects.create(device=device, channel_name=channel_name, worker=worker,
                                        connected_at=now, seen_at=now)
        Device.all_objects.filter(pk=device.pk).update(last_seen_at=now)
    return not was_online


def connection_close(*, channel_name: str, now: datetime) -> Device | None:
    """Forget a WebSocket. Returns the device when it just went offline."""
    with transaction.atomic():
        connection = DeviceConnection.objects.select_related("device").filter(channel_name=channel_name).first()
        if connection is None:
            return None
        connection.delete()
        Device.all_objects.filter(pk=connection.device_id).update(last_seen_at=now)
        still_online = _live_connections(connection.device_id, now).exists()
    return None if still_online else connection.device


def worker_heartbeat(*, worker: str, now: datetime, live: set[str] | None = None) -> list[Device]:
    """Refresh a worker's connections. With `live` (the channel names of its open
    sockets), first forget its rows of sockets that are gone; returns the devices
    that thereby went offline."""
    gone = []
    if live is not None:
        dead = [pk for pk, channel in DeviceConnection.objects.filter(worker=worker).values_list("pk", "channel_name")
                if channel not in live]
        if dead:
            gone = _drop_connections(DeviceConnection.objects.filter(pk__in=dead), now)
            log.warning("presence: forgot %d connection(s) of worker %s whose socket is gone", len(dead), worker)
    DeviceConnection.objects.filter(worker=worker).update(seen_at=now)
    return gone


def _drop_connections(connections, now: datetime) -> list[Device]:
    """Delete the given connections; return the devices that thereby went offline."""
    with transaction.atomic():
        rows = list(connections.values_list("pk", "device_id"))
        if not rows:
            return []
        DeviceConnection.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
        device_ids = {device_id for _, device_id in rows}
        online = set(
            DeviceConnection.objects.filter(device_id__in=device_ids, seen_at__gt=_stale_before(now))
            .values_list("device_id", flat=True)
        )
        Device.all_objects.filter(pk__in=device_ids).update(last_seen_at=now)
        return list(Device.all_objects.filter(pk__in=device_ids - online))


def connections_prune(*, now: datetime) -> list[Device]:
    """Forget connections of workers that stopped refreshing them (killed, crashed)."""
    return _drop_connections(DeviceConnection.objects.filter(seen_at__lte=_stale_before(now)), now)


def connections_forget_worker(*, worker: str, now: datetime) -> list[Device]:
    """Forget every connection of a worker that is shutting down."""
    return _drop_connections(DeviceConnection.objects.filter(worker=worker), now)
