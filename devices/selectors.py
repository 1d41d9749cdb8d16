"""Reads of devices, scoped to their user."""


from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from devices.errors import one_or_not_found
from devices.models import Device, DeviceConnection


def _with_online(queryset: QuerySet, now) -> QuerySet:
    return queryset.annotate(online=Exists(DeviceConnection.objects.live(now).filter(device_id=OuterRef("pk"))))


def devices_for_user(*, user, now=None) -> QuerySet:
    return _with_online(Device.objects.filter(user=user), now or timezone.now()).order_by("created_at")


def device_for_user(*, user, device_id, now=None) -> Device:
    """The user's active device, or 404 (for other users' devices too)."""
    return one_or_not_found(devices_for_user(user=user, now=now), device_id, "device")
