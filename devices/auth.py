"""Bearer device tokens for HTTP, and the permissions built on them.

`request.user` is the device's user, `request.auth` the Device itself.
"""

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, permissions
from rest_framework.exceptions import AuthenticationFailed

from devices.errors import ServiceError
from devices.models import Device
from devices.secrets import digest

# Refreshing last_seen_at on every request would turn each read into a write.
LAST_SEEN_RESOLUTION = timedelta(seconds=60)


def device_for_token(token: str) -> Device | None:
    if not token:
        return None
    # token_hash is unique: no ordering or LIMIT to plan.
    found = list(Device.objects.select_related("user").filter(token_hash=digest(token), user__is_active=True)
                 .order_by())
    return found[0] if found else None


def bearer_token(header_value: str | bytes | None) -> str | None:
    if not header_value:
        return None
    if isinstance(header_value, bytes):
        header_value = header_value.decode("latin-1")
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def touch_last_seen(device: Device, now=None) -> None:
    now = now or timezone.now()
    if device.last_seen_at is None or now - device.last_seen_at > LAST_SEEN_RESOLUTION:
        Device.all_objects.filter(pk=device.pk).update(last_seen_at=now)
        device.last_seen_at = now


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        token = bearer_token(header)
        if token is None:
            raise AuthenticationFailed("Use 'Authorization: Bearer <device token>'.", code="invalid_token")
        device = device_for_token(token)
        if device is None:
            raise AuthenticationFailed("The device token is not valid or was revoked.", code="invalid_token")
        touch_last_seen(device)
        return device.user, device

    def authenticate_header(self, request):
        return 'Bearer realm="callpull"'


class IsDevice(permissions.BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.auth, Device)


class IsHandset(IsDevice):
    def has_permission(self, request, view):
        if not super().has_permission(request, view):
            return False
        if request.auth.is_secondary:
            raise ServiceError("handset_only", "Only a handset may do this.")
        return True


class IsSecondary(IsDevice):
    def has_permission(self, request, view):
        if not super().has_permission(request, view):
            return False
        if not request.auth.is_secondary:
            raise ServiceError("secondary_only", "Only a secondary device (not the handset) may do this.")
        return True
