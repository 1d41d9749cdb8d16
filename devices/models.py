"""A user's devices and the credentials that let them in.

Secrets (device tokens, pairing codes, WebSocket tickets) are stored only as
SHA-256 digests: they are long random values, so a fast hash is enough and a
database leak does not hand out working credentials.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q


class DeviceKind(models.TextChoices):
    HANDSET = "handset"
    TABLET = "tablet"
    DESKTOP = "desktop"
    WEB = "web"


class Platform(models.TextChoices):
    ANDROID = "android"
    IOS = "ios"
    WEB = "web"
    OTHER = "other"


class ConnectType(models.TextChoices):
    CLIENT = "client"
    SIP = "sip"
    NUMBER = "number"


# The kinds that take calls through a voice SDK as a `client` identity of their own.
VOICE_KINDS = (DeviceKind.TABLET, DeviceKind.DESKTOP, DeviceKind.WEB)


def new_voice_identity() -> str:
    """A fresh `client` identity: "d" and the 32 hex digits of a random UUID. Within Twilio's
    identity rules (at most 256 characters, letters and digits only), never derived from
    anything the user typed, and unique across every device ever registered (revoked ones too)."""
    return "d" + uuid.uuid4().hex


class ActiveDeviceManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(revoked_at__isnull=True)


class Device(models.Model):
    """One device of one user. Deleting a device revokes it: the row stays for
    the call history, its token stops working at once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="devices")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=DeviceKind.choices)
    platform = models.CharField(max_length=16, choices=Platform.choices)
    fcm_token = models.CharField(max_length=4096, blank=True, default="")
    apns_voip_token = models.CharField(
        max_length=200, blank=True, default="",
        help_text="PushKit (VoIP) device token, hex: call.ringing goes to it as an APNs VoIP push.")
    apns_token = models.CharField(
        max_length=200, blank=True, default="",
        help_text="APNs device token for alerts, hex: call.answered_elsewhere, call.ended, pull.requested.")
    webpush_subscription = models.JSONField(
        null=True, blank=True,
        help_text="A browser's Web Push subscription {endpoint, keys: {p256dh, auth}} (write-only on the API).")
    ring_enabled = models.BooleanField(default=True)
    connect_type = models.CharField(max_length=16, choices=ConnectType.choices, blank=True, default="")
    connect_address = models.CharField(max_length=255, blank=True, default="")
    phone_number = models.CharField(max_length=20, blank=True, default="", db_index=True,
                                    help_text="E.164: the caller id this device dials in from (dial-in pull).")
    connect_verified_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When the `number` or `sip` connect target was proven to be the user's; null until then. "
                  "A `client` target needs no proof. Cleared whenever the target changes.")
    voice_identity = models.CharField(
        max_length=64, null=True, blank=True, unique=True, editable=False,
        help_text="The `client` identity a tablet, desktop or web device takes calls as (its access tokens "
                  "carry it, and it is the device's connect target unless it sets another); null for a handset. "
                  "Never reused: unique across all devices, revoked ones too.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ActiveDeviceManager()
    all_objects = models.Manager()

    class Meta:
        ordering = ["created_at"]
        base_manager_name = "all_objects"
        indexes = [models.Index(fields=["user", "created_at"])]

    def __str__(self):
        return f"{self.name} ({self.kind})"

    @property
    def is_secondary(self) -> bool:
        return self.kind != DeviceKind.HANDSET


class PairingCode(models.Model):
    """A short, single-use code one device shows so another can join the user
    without the password."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    code_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(Device, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["expires_at"], condition=Q(used_at__isnull=True), name="pairing_open_idx")]


class WsTicket(models.Model):
    """A single-use, short-lived credential for a browser's WebSocket handshake."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    ticket_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)


def live_after(now):
    """The one definition of "online": a device is online while it has a connection whose
    worker refreshed it after this instant (PRESENCE_STALE_SECONDS before `now`)."""
    return now - timedelta(seconds=settings.PRESENCE_STALE_SECONDS)


class DeviceConnectionQuerySet(models.QuerySet):
    def live(self, now):
        """The connections that still count (see `live_after`)."""
        return self.filter(seen_at__gt=live_after(now))

    def stale(self, now):
        return self.filter(seen_at__lte=live_after(now))


class DeviceConnection(models.Model):
    """One live WebSocket of a device, kept by the worker that holds it.

    Presence is derived from these rows, so every worker sees the same answer.
    Each worker refreshes `seen_at` on its rows; rows of a worker that died stop
    being refreshed and stop counting after PRESENCE_STALE_SECONDS.
    """

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="connections")
    channel_name = models.CharField(max_length=200, unique=True)
    worker = models.CharField(max_length=64, db_index=True)
    connected_at = models.DateTimeField()
    seen_at = models.DateTimeField()

    objects = DeviceConnectionQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["device", "seen_at"])]


class AuditEntry(models.Model):
    """One sensitive change to an account (transfer PIN or allow-list, a device's
    connect target or phone number, a device added or revoked): what, by which
    device, when and from which address. The user reads them newest first."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(Device, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=40)
    detail = models.JSONField(default=dict, blank=True)
    client_ip = models.CharField(max_length=45, blank=True, default="")
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["user", "-at"], name="audit_user_at_idx")]


class NumberVerification(models.Model):
    """A code the provider reads out on a call to a device's `number` target; the
    user sends it back to prove the number is theirs. Stored as a keyed digest."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    number = models.CharField(max_length=20)
    code_hash = models.CharField(max_length=64)
    provider_call_sid = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["device", "-created_at"], name="numverify_device_idx")]
