"""Reads of devices, scoped to their user."""

from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from devices.errors import one_or_not_found
from devices.models import Device, DeviceConnection


def _with_online(queryset: QuerySet, now) -> QuerySet:
    fresh = now - timedelta(seconds=settings.PRESENCE_STALE_SECONDS)
    return queryset.annotate(
        online=Exists(DeviceConnection.objects.filter(device_id=OuterRef("pk"), seen_at__gt=fresh))
    )


def devices_for_user(*, user, now=None) -> QuerySet:
    return _with_online(Device.objects.filter(user=user), now or timezone.now()).order_by("created_at")


def device_for_user(*, user, device_id, now=None) -> Device:
    """The user's active device, or 404 (for other users' devices too)."""
    return one_or_not_found(devices_for_user(user=user, now=now), device_id, "device")


def device_is_online(*, device_id, now=None) -> bool:
    now = now or timezone.now()
    fresh = now - timedelta(seconds=settings.PRESENCE_STALE_SECONDS)
    return DeviceConnection.objects.filter(device_id=device_id, seen_at__gt=fresh).exists()
