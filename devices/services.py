"""Writes for users and their devices: sign-up, registration, credentials, presence.

Every function is keyword-only, takes `now` when time matters, and keeps its
writes in one transaction.
"""

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from devices import audit, ratelimit
from devices.errors import ServiceError
from devices.models import (
    VOICE_KINDS,
    ConnectType,
    Device,
    DeviceConnection,
    DeviceKind,
    PairingCode,
    WsTicket,
    new_voice_identity,
)
from devices.secrets import (
    digest,
    new_device_token,
    new_pairing_code,
    new_ws_ticket,
    normalize_pairing_code,
)
from devices.signals import device_revoked, transfer_pin_check

log = logging.getLogger(__name__)
User = get_user_model()

DEVICE_FIELDS = ("name", "kind", "platform", "fcm_token", "apns_voip_token", "apns_token", "ring_enabled",
                 "connect_type", "connect_address", "phone_number", "webpush_subscription")


@dataclass(frozen=True)
class Registration:
    device: Device
    token: str  # shown once, never stored


def user_signup(*, username: str, password: str, client_ip: str) -> "User":
    if not settings.ALLOW_SIGNUP:
        raise ServiceError("signup_disabled", "Sign-up is disabled on this server.")
    ratelimit.check_and_hit("signup", client_ip)
    try:
        validate_password(password, user=User(username=username))
    except DjangoValidationError as exc:
        raise ServiceError("invalid_password", "The password is too weak.",
                       fields={"password": list(exc.messages)}) from None
    try:
        with transaction.atomic():
            if User.objects.filter(username__iexact=username).exists():
                raise IntegrityError
            user = User.objects.create_user(username=username, password=password)
    except IntegrityError:
        raise ServiceError("username_taken", "That username is taken.") from None
    log.info("user signed up user=%s", user.pk)
    return user


# Connect targets -------------------------------------------------------------

def sip_host(address: str) -> str | None:
    """The host of a `sip:`/`sips:` URI, lower case; None when it has not exactly one `@`
    (then which host a provider would dial is anybody's guess)."""
    scheme, _, rest = address.partition(":")
    if scheme.lower() not in ("sip", "sips") or rest.count("@") != 1:
        return None
    hostport = re.split(r"[;?]", rest.split("@", 1)[1], maxsplit=1)[0]
    if hostport.startswith("["):
        host = hostport[1:hostport.find("]")] if "]" in hostport else ""
    else:
        host = hostport.split(":", 1)[0]
    return host.lower().rstrip(".") or None


def sip_domain_allowed(address: str) -> bool:
    host = sip_host(address)
    return host is not None and host in {domain.lower().rstrip(".") for domain in settings.SIP_DOMAINS}


def connect_usable(device: Device) -> bool:
    """Whether the device's connect target may carry a call: a `client` identity always;
    a `number` target once proven (`connect_verified_at`); a `sip` target once proven and
    while its host is still on SIP_DOMAINS (a domain taken off the list carries no more calls)."""
    if not device.connect_type:
        return False
    if device.connect_type == ConnectType.CLIENT:
        return True
    if device.connect_type == ConnectType.SIP and not sip_domain_allowed(device.connect_address):
        return False
    return device.connect_verified_at is not None


def with_default_connect(fields: dict, *, voice_identity: str | None) -> dict:
    """`fields` (model fields being written) with "no target" replaced by the device's default:
    a device with a voice identity that sets no `connect`, or clears it, is reached at
    `client:<voice_identity>`. The one place the default target is decided."""
    if voice_identity and "connect_type" in fields and not fields["connect_type"]:
        return {**fields, "connect_type": ConnectType.CLIENT.value, "connect_address": voice_identity}
    return fields


def _verified_at(connect_type: str, connect_address: str, now: datetime) -> datetime | None:
    """When a newly set target counts as proven: a client identity at once (it is ours), a SIP
    address on SIP_DOMAINS at once, a number only once its verification call succeeded."""
    if connect_type == ConnectType.CLIENT:
        return now
    if connect_type == ConnectType.SIP and sip_domain_allowed(connect_address):
        return now
    return None


def _connect_detail(device: Device) -> dict:
    """A target as the audit log shows it: numbers and SIP addresses in full, client identities not."""
    detail = {"type": device.connect_type or None}
    if device.connect_type in (ConnectType.NUMBER, ConnectType.SIP):
        detail["address"] = device.connect_address
    return detail


# Proving it is the user -------------------------------------------------------

def _transfer_pin_matches(*, user, pin: str | None) -> bool | None:
    """Whether `pin` is the user's transfer PIN; None when no PIN is set."""
    answers = [answer for _, answer in transfer_pin_check.send(sender=Device, user=user, pin=pin)
               if answer is not None]
    return any(answers) if answers else None


def reauthenticate(*, user, device: Device, password: str | None, current_pin: str | None,
                   now: datetime) -> None:
    """Raise 403 `reauthentication_required` unless `password` is the account password or
    `current_pin` the current transfer PIN. Wrong attempts count per user and device
    (`login_failure`), so a stolen token cannot guess on and the owner's other devices
    are not locked out by its guesses."""
    pin_set = _transfer_pin_matches(user=user, pin=None) is not None
    if password or current_pin:
        key = f"reauth:user:{user.pk}:device:{device.pk}"
        ratelimit.check("login_failure", key)
        if password and user.check_password(password):
            return
        # A short PIN would fall to a budget per device (each a pairing code away): wrong PINs
        # are capped per account too. Past the cap the password still works.
        pin_guess = bool(current_pin) and pin_set and not password
        if pin_guess:
            ratelimit.check("pin_failure_user", f"user:{user.pk}")
        if current_pin and pin_set and _transfer_pin_matches(user=user, pin=current_pin):
            return
        ratelimit.hit("login_failure", key)
        if pin_guess:
            ratelimit.hit("pin_failure_user", f"user:{user.pk}")
        log.warning("reauthentication failed user=%s device=%s", user.pk, device.pk)
    which = "your account password (`password`)"
    if pin_set:
        which += " or your current transfer PIN (`current_pin`)"
    message = f"This change needs {which} in the same request."
    fields = {"password": [message]} | ({"current_pin": [message]} if pin_set else {})
    raise ServiceError("reauthentication_required", message, fields=fields)


# Registration -----------------------------------------------------------------

def _create_device(*, user, data: dict, now: datetime) -> Registration:
    token = new_device_token()
    fields = {"connect_type": "", "connect_address": ""} | {field: data[field] for field in DEVICE_FIELDS
                                                           if field in data}
    if fields.get("kind") in VOICE_KINDS:
        fields["voice_identity"] = new_voice_identity()
    fields = with_default_connect(fields, voice_identity=fields.get("voice_identity"))
    if fields.get("connect_type"):
        fields["connect_verified_at"] = _verified_at(fields["connect_type"], fields.get("connect_address", ""), now)
    device = Device.objects.create(user=user, token_hash=digest(token), created_at=now, last_seen_at=now, **fields)
    log.info("device registered device=%s user=%s kind=%s", device.pk, user.pk, device.kind)
    return Registration(device=device, token=token)


def _audit_registration(device: Device, *, method: str, client_ip: str, now: datetime,
                        paired_by: Device | None = None) -> None:
    detail = {"device": str(device.pk), "name": device.name, "kind": device.kind, "method": method}
    if paired_by is not None:
        detail["paired_by"] = str(paired_by.pk)
    if device.connect_type:
        detail["connect"] = _connect_detail(device)
    if device.phone_number:
        detail["phone_number"] = device.phone_number
    audit.audit_record(user=device.user, device=device, action=audit.DEVICE_REGISTERED, detail=detail,
                       client_ip=client_ip, now=now)


def device_register_with_password(*, username: str, password: str, data: dict, client_ip: str,
                                  now: datetime) -> Registration:
    # Failures count per username *and* address, so a flood from elsewhere cannot lock the
    # owner out at their own address; and per address, so one address cannot try every user.
    user_key, address_key = f"user:{username.lower()}|ip:{client_ip}", f"ip:{client_ip}"
    ratelimit.check("login_failure", user_key)
    ratelimit.check("login_failure_address", address_key)
    user = authenticate(username=username, password=password)
    if user is None:
        ratelimit.hit("login_failure", user_key)
        ratelimit.hit("login_failure_address", address_key)
        log.info("device registration refused: bad credentials ip=%s", client_ip)
        raise ServiceError("invalid_credentials", "Wrong username or password.")
    with transaction.atomic():
        registration = _create_device(user=user, data=data, now=now)
        _audit_registration(registration.device, method="password", client_ip=client_ip, now=now)
        return registration


def device_register_with_pairing_code(*, code: str, data: dict, client_ip: str, now: datetime) -> Registration:
    if data.get("kind") == DeviceKind.HANDSET:
        # A handset reports rings and forwarding for a line: that takes the password, not a
        # code any device of the user can make.
        raise ServiceError("handset_requires_password",
                        "A handset registers with the account's username and password, not a pairing code.")
    # What PATCH /devices/me asks the password or PIN for, a pairing code (which a stolen
    # device can make) does not give either.
    needs_secret = {"device.connect": data.get("connect_type") == ConnectType.NUMBER,
                    "device.phone_number": bool(data.get("phone_number"))}
    if any(needs_secret.values()):
        message = ("A device registered with a pairing code cannot bring a `number` target or a phone number: "
                   "register with the password, or set them afterwards with the password (PATCH /devices/me).")
        raise ServiceError("reauthentication_required", message,
                       fields={name: [message] for name, needed in needs_secret.items() if needed})
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
                _audit_registration(registration.device, method="pairing_code", client_ip=client_ip, now=now,
                                    paired_by=pairing.created_by)
                return registration
            transaction.set_rollback(True)
    ratelimit.hit("pairing_failure", f"ip:{client_ip}")
    raise ServiceError("invalid_pairing_code", "The pairing code is wrong, expired or already used.",
                   fields={"pairing_code": ["Not a usable code."]})


def pairing_code_create(*, device: Device, now: datetime) -> tuple[str, datetime]:
    # Each code makes a new device, and so a new budget for anything limited per device.
    ratelimit.check_and_hit("pairing_code", f"user:{device.user_id}")
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


# Fields only the device itself may change; another device of the user may rename it,
# turn its ringing on or off, and revoke it.
OWN_DEVICE_FIELDS = ("connect_type", "connect_address", "phone_number", "fcm_token", "apns_voip_token",
                     "apns_token", "webpush_subscription")


def device_update(*, device: Device, data: dict, by: Device, now: datetime, password: str | None = None,
                  current_pin: str | None = None, client_ip: str = "") -> Device:
    """Change `device` as asked by `by` (a device of the same user).

    Setting a `number` or `sip` target or a phone number needs the password or the current
    PIN (`reauthenticate`). A new target is unverified until proven (`_verified_at`).
    Target and phone number changes are written to the audit log."""
    if by.pk != device.pk and any(field in data for field in OWN_DEVICE_FIELDS):
        raise ServiceError("own_device_only", "Only a device itself may change its connect target, phone number "
                                           "or push tokens; other devices may rename it, turn its ringing on or "
                                           "off, or remove it.")
    data = with_default_connect(data, voice_identity=device.voice_identity)
    changed = [field for field in DEVICE_FIELDS if field in data and getattr(device, field) != data[field]]
    target_changed = "connect_type" in changed or "connect_address" in changed
    number_changed = "phone_number" in changed
    if ((target_changed and data.get("connect_type", device.connect_type) in (ConnectType.NUMBER, ConnectType.SIP))
            or (number_changed and data["phone_number"])):
        reauthenticate(user=by.user, device=by, password=password, current_pin=current_pin, now=now)
    with transaction.atomic():
        for field in changed:
            setattr(device, field, data[field])
        if target_changed:
            device.connect_verified_at = _verified_at(device.connect_type, device.connect_address, now)
            changed.append("connect_verified_at")
        if changed:
            device.save(update_fields=changed)
        if target_changed:
            audit.audit_record(user=by.user, device=by, action=audit.DEVICE_CONNECT_CHANGED,
                               detail={"device": str(device.pk), **_connect_detail(device)},
                               client_ip=client_ip, now=now)
        if number_changed:
            audit.audit_record(user=by.user, device=by, action=audit.DEVICE_PHONE_NUMBER_CHANGED,
                               detail={"device": str(device.pk), "phone_number": device.phone_number or None},
                               client_ip=client_ip, now=now)
    if target_changed or number_changed:
        log.info("device changed device=%s by=%s target=%s phone_number=%s", device.pk, by.pk, target_changed,
                 number_changed)
    return device


def device_revoke(*, device: Device, now: datetime, by: Device | None = None, client_ip: str = "") -> None:
    """Revoke at once: the token stops working, credentials it created die with it.
    `by` is the device that asked (None: not a device, e.g. an operator)."""
    with transaction.atomic():
        Device.all_objects.filter(pk=device.pk).update(revoked_at=now, fcm_token="", apns_voip_token="",
                                                            apns_token="", webpush_subscription=None)
        WsTicket.objects.filter(device=device, used_at__isnull=True).update(used_at=now)
        PairingCode.objects.filter(created_by=device, used_at__isnull=True).update(expires_at=now)
        audit.audit_record(user=device.user, device=by, action=audit.DEVICE_REVOKED,
                           detail={"device": str(device.pk), "name": device.name, "kind": device.kind},
                           client_ip=client_ip, now=now)
        transaction.on_commit(lambda: device_revoked.send(sender=Device, device=device))
    device.revoked_at = now
    log.info("device revoked device=%s user=%s", device.pk, device.user_id)


# Presence -----------------------------------------------------------------

def connection_open(*, device: Device, channel_name: str, worker: str, now: datetime) -> bool:
    """Record a live WebSocket. True when the device just came online."""
    with transaction.atomic():
        was_online = DeviceConnection.objects.live(now).filter(device_id=device.pk).exists()
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
        still_online = DeviceConnection.objects.live(now).filter(device_id=connection.device_id).exists()
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
            DeviceConnection.objects.live(now).filter(device_id__in=device_ids)
            .values_list("device_id", flat=True)
        )
        Device.all_objects.filter(pk__in=device_ids).update(last_seen_at=now)
        return list(Device.all_objects.filter(pk__in=device_ids - online))


def connections_prune(*, now: datetime) -> list[Device]:
    """Forget connections of workers that stopped refreshing them (killed, crashed)."""
    return _drop_connections(DeviceConnection.objects.stale(now), now)


def connections_forget_worker(*, worker: str, now: datetime) -> list[Device]:
    """Forget every connection of a worker that is shutting down."""
    return _drop_connections(DeviceConnection.objects.filter(worker=worker), now)
