"""Delivery records: one row per event per device per transport.

notifications knows events and devices, not calls: `ref` is an opaque UUID the
sender groups deliveries by (callpull uses the call id and merges these rows
into the call's timeline).
"""

from django.db import models


class Transport(models.TextChoices):
    WEBSOCKET = "websocket"
    FCM = "fcm"
    APNS = "apns"
    WEBPUSH = "webpush"


class Delivery(models.Model):
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=40)
    ref = models.UUIDField(null=True, db_index=True)
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="deliveries")
    transport = models.CharField(max_length=16, choices=Transport.choices)
    queued_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True)
    delivered_at = models.DateTimeField(null=True)
    error = models.CharField(max_length=40, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event_id", "device", "transport"], name="delivery_once"),
        ]
        indexes = [models.Index(fields=["event_id", "device"])]
