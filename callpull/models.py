"""The call workflow's data: server numbers, lines and their forwarding, account settings."""

import uuid

from django.conf import settings
from django.db import models


class ServerNumber(models.Model):
    """A number of ours at the voice provider, where carriers forward calls.

    Rows are created from SERVER_NUMBERS; a number removed from that setting
    keeps its lines but gets no new ones.
    """

    number = models.CharField(max_length=20, unique=True)
    active = models.BooleanField(default=True)

    def __str__(self):
        return self.number


class Policy(models.TextChoices):
    ON_ANSWER = "on_answer"
    IMMEDIATE = "immediate"


class ForwardingState(models.TextChoices):
    UNVERIFIED = "unverified"
    ACTIVE = "active"
    INACTIVE = "inactive"
    MISMATCH = "mismatch"


class Line(models.Model):
    """A handset's own phone number, and the forward-on-busy rule that sends its
    calls to our server number."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lines")
    number = models.CharField(max_length=20, unique=True)
    region = models.CharField(max_length=2, blank=True, default="")
    server_number = models.ForeignKey(ServerNumber, on_delete=models.PROTECT, related_name="lines")
    policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.ON_ANSWER)
    forwarding_state = models.CharField(max_length=16, choices=ForwardingState.choices,
                                        default=ForwardingState.UNVERIFIED)
    forwarding_target = models.CharField(max_length=20, blank=True, default="")
    forwarding_verified_at = models.DateTimeField(null=True, blank=True)
    fallback_number = models.CharField(max_length=20, blank=True, default="",
                                       help_text="Where an unmatched forwarded call goes, e.g. voicemail.")
    registered_by = models.ForeignKey("devices.Device", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at"]

    def __str__(self):
        return self.number


class AccountSettings(models.Model):
    """Per-user choices about moving live calls."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="callpull_settings")
    pull_requires_approval = models.BooleanField(default=False)
    monitor_after_switch = models.BooleanField(default=False)
    transfer_allowlist = models.JSONField(default=list, blank=True)
    transfer_pin_hash = models.CharField(max_length=255, blank=True, default="")
