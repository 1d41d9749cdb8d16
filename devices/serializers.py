"""Shapes of devices on the wire."""

import re

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from devices.errors import ServiceError
from devices.models import ConnectType, Device, DeviceKind, Platform
from devices.phone import to_e164
from devices.services import connect_usable, sip_domain_allowed
from devices.webpush import check_subscription

CLIENT_IDENTITY = re.compile(r"^[A-Za-z0-9_.@-]{1,121}$")
SIP_URI = re.compile(r"^sips?:[^\s<>\"]+@[^\s<>\"]+$")


class ConnectSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=ConnectType.choices)
    address = serializers.CharField(max_length=255)

    def validate(self, attrs):
        # A partial update (PATCH) skips missing fields, nested ones too: a target is whole or null.
        missing = {name: ["This field is required."] for name in ("type", "address") if name not in attrs}
        if missing:
            raise serializers.ValidationError(missing)
        kind, address = attrs["type"], attrs["address"].strip()
        if kind == ConnectType.CLIENT and not CLIENT_IDENTITY.match(address):
            raise serializers.ValidationError({"address": "A client identity is 1-121 of A-Z a-z 0-9 _ . @ -."})
        if kind == ConnectType.SIP and not SIP_URI.match(address):
            raise serializers.ValidationError({"address": "A SIP address looks like sip:user@host."})
        if kind == ConnectType.SIP and not sip_domain_allowed(address):
            message = "SIP targets must be on one of this server's SIP domains (SIP_DOMAINS)."
            raise ServiceError("sip_domain_not_allowed", message, fields={"connect.address": [message]})
        if kind == ConnectType.NUMBER:
            address = to_e164(address, field="connect.address")
        return {"type": kind, "address": address}


# An APNs device token as the app reads it from `deviceToken` / PushKit's `credentials.token`,
# written as hex: 32 bytes today (64 digits); Apple says not to assume a fixed length.
APNS_TOKEN = r"^(?:[0-9A-Fa-f]{2}){32,100}$"


class WebPushSubscriptionField(serializers.JSONField):
    """A browser's push subscription, `{endpoint, keys: {p256dh, auth}}` (devices.webpush
    checks it: a known push service, a P-256 key, a 16-byte secret); null removes it."""

    def to_internal_value(self, data):
        try:
            return check_subscription(super().to_internal_value(data))
        except ValueError as exc:
            raise serializers.ValidationError(exc.args[0]) from None


class DeviceInput(serializers.Serializer):
    """`device` in registration, and the body of PATCH /devices/{id} (partial)."""

    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=DeviceKind.choices)
    platform = serializers.ChoiceField(choices=Platform.choices)
    fcm_token = serializers.CharField(max_length=4096, required=False, allow_blank=True)
    apns_voip_token = serializers.RegexField(
        APNS_TOKEN, max_length=200, required=False, allow_blank=True,
        help_text="PushKit VoIP device token (hex, 64 digits or more); empty to remove it. Never echoed.")
    apns_token = serializers.RegexField(
        APNS_TOKEN, max_length=200, required=False, allow_blank=True,
        help_text="APNs device token for alerts (hex, 64 digits or more); empty to remove it. Never echoed.")
    webpush_subscription = WebPushSubscriptionField(
        required=False, allow_null=True, write_only=True,
        help_text="The browser's Web Push subscription (PushSubscription.toJSON(): {endpoint, keys: {p256dh, "
                  "auth}}); null to remove it. Never echoed.")

    def validate_apns_voip_token(self, value):
        return value.lower()

    def validate_apns_token(self, value):
        return value.lower()
    ring_enabled = serializers.BooleanField(required=False)
    connect = ConnectSerializer(required=False, allow_null=True)
    phone_number = serializers.CharField(max_length=32, required=False, allow_blank=True,
                                         help_text="The caller id this device dials in from (E.164).")

    def validate_phone_number(self, value):
        return to_e164(value, field="phone_number") if value else ""



def device_fields(validated_data: dict) -> dict:
    """Validated device input as model fields (`connect` split in two)."""
    data = dict(validated_data)
    if "connect" in data:
        connect = data.pop("connect") or {"type": "", "address": ""}
        data["connect_type"], data["connect_address"] = connect["type"], connect["address"]
    return data


class DeviceUpdateInput(DeviceInput):
    """The kind and platform of a device are what it is; they are not edited.

    `password` or `current_pin` prove the change is the user's own where a change needs
    it (a `number` or `sip` target, a phone number); neither is stored or echoed."""

    kind = None
    platform = None
    password = serializers.CharField(max_length=128, required=False, write_only=True, trim_whitespace=False,
                                     help_text="The account password, for a change that needs it.")
    current_pin = serializers.CharField(max_length=32, required=False, write_only=True, trim_whitespace=False,
                                        help_text="The current transfer PIN, instead of the password.")


class DeviceOutput(serializers.ModelSerializer):
    connect = serializers.SerializerMethodField()
    fcm_registered = serializers.SerializerMethodField()
    apns_voip_registered = serializers.SerializerMethodField()
    apns_registered = serializers.SerializerMethodField()
    webpush = serializers.SerializerMethodField()
    online = serializers.SerializerMethodField()
    me = serializers.SerializerMethodField()

    class Meta:
        model = Device
        fields = ["id", "name", "kind", "platform", "ring_enabled", "connect", "voice_identity", "phone_number",
                  "fcm_registered", "apns_voip_registered", "apns_registered", "webpush", "online", "last_seen_at",
                  "created_at", "me"]

    @extend_schema_field(inline_serializer("ConnectTarget", {
        "type": serializers.ChoiceField(choices=ConnectType.choices), "address": serializers.CharField(),
        "verified": serializers.BooleanField(help_text="May carry calls: a client target, a sip target "
                                                       "on SIP_DOMAINS, a number that passed verification.")},
        allow_null=True))
    def get_connect(self, device) -> dict | None:
        if not device.connect_type:
            return None
        return {"type": device.connect_type, "address": device.connect_address,
                "verified": connect_usable(device)}

    def get_fcm_registered(self, device) -> bool:
        return bool(device.fcm_token)

    def get_apns_voip_registered(self, device) -> bool:
        return bool(device.apns_voip_token)

    def get_apns_registered(self, device) -> bool:
        return bool(device.apns_token)

    def get_webpush(self, device) -> bool:
        """Whether the device has a Web Push subscription (the subscription itself is never echoed)."""
        return bool(device.webpush_subscription)

    def get_online(self, device) -> bool:
        return bool(getattr(device, "online", False))

    def get_me(self, device) -> bool:
        me = self.context.get("me")
        return me is not None and me.pk == device.pk
