"""HTTP endpoints for accounts, devices, pairing codes and WebSocket tickets.

Each view validates its input, calls one service or selector, and renders.
"""

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from devices import audit, selectors, services
from devices.auth import IsDevice
from devices.errors import ServiceError
from devices.serializers import DeviceInput, DeviceOutput, DeviceUpdateInput, device_fields


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _address(text: str):
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address, networks) -> bool:
    return address is not None and any(address in network for network in networks)


def client_ip(request) -> str:
    """The client's address. `X-Forwarded-For` counts only when the peer is one of
    TRUSTED_PROXIES; then the client is the right-most address in it that is not a trusted
    proxy (what is left of it, any client could have written)."""
    remote = request.META.get("REMOTE_ADDR") or ""
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not networks or not _trusted(_address(remote), networks):
        return remote or "unknown"
    hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return remote  # a trusted proxy does not write garbage: the header is not to be believed
        if not _trusted(address, networks):
            return str(address)
    return str(_address(hops[0])) if hops else remote


def validated(serializer_class, data, **kwargs):
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer


class AccountCreateApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    class SignupInput(serializers.Serializer):
        username = serializers.RegexField(r"^[\w.@+-]+$", max_length=150)
        password = serializers.CharField(max_length=128, trim_whitespace=False)

    class SignupOutput(serializers.Serializer):
        id = serializers.IntegerField()
        username = serializers.CharField()

    @extend_schema(request=SignupInput, responses={201: SignupOutput}, operation_id="account_create", auth=[])
    def post(self, request):
        data = validated(self.SignupInput, request.data).validated_data
        user = services.user_signup(username=data["username"], password=data["password"],
                                    client_ip=client_ip(request))
        return Response(self.SignupOutput(user).data, status=status.HTTP_201_CREATED)


RegistrationOutput = inline_serializer("Registration", {"device": DeviceOutput(), "token": serializers.CharField()})


class DeviceListCreateApi(APIView):
    class RegisterInput(serializers.Serializer):
        username = serializers.CharField(required=False, max_length=150)
        password = serializers.CharField(required=False, max_length=128, trim_whitespace=False)
        pairing_code = serializers.CharField(required=False, max_length=32)
        device = DeviceInput()

        def validate(self, attrs):
            has_password = "username" in attrs or "password" in attrs
            if has_password == ("pairing_code" in attrs):
                raise serializers.ValidationError("Give either username and password, or pairing_code.")
            if has_password and not ("username" in attrs and "password" in attrs):
                missing = "password" if "username" in attrs else "username"
                raise serializers.ValidationError({missing: "This field is required with " +
                                                   ("username." if missing == "password" else "password.")})
            return attrs

    def _registering(self) -> bool:
        request = getattr(self, "request", None)
        return request is not None and request.method == "POST"

    def get_authenticators(self):
        # Registration must work with a stale or missing token in the header.
        return [] if self._registering() else super().get_authenticators()

    def get_permissions(self):
        return [AllowAny()] if self._registering() else super().get_permissions()

    @extend_schema(responses={200: DeviceOutput(many=True)}, operation_id="devices_list")
    def get(self, request):
        devices = selectors.devices_for_user(user=request.user)
        return Response(DeviceOutput(devices, many=True, context={"me": request.auth}).data)

    @extend_schema(request=RegisterInput, responses={201: RegistrationOutput}, operation_id="device_register",
                   auth=[])
    def post(self, request):
        data = validated(self.RegisterInput, request.data).validated_data
        device_data = device_fields(data["device"])
        now = timezone.now()
        if "pairing_code" in data:
            registration = services.device_register_with_pairing_code(
                code=data["pairing_code"], data=device_data, client_ip=client_ip(request), now=now)
        else:
            registration = services.device_register_with_password(
                username=data["username"], password=data["password"], data=device_data,
                client_ip=client_ip(request), now=now)
        device = selectors.device_for_user(user=registration.device.user, device_id=registration.device.pk, now=now)
        return Response({"device": DeviceOutput(device, context={"me": device}).data, "token": registration.token},
                        status=status.HTTP_201_CREATED)


def _device_from_path(request, device_id: str):
    if device_id == "me":
        device_id = request.auth.pk
    return selectors.device_for_user(user=request.user, device_id=device_id)


class DeviceDetailApi(APIView):
    @extend_schema(responses={200: DeviceOutput}, operation_id="device_get")
    def get(self, request, device_id):
        device = _device_from_path(request, device_id)
        return Response(DeviceOutput(device, context={"me": request.auth}).data)

    @extend_schema(request=DeviceUpdateInput, responses={200: DeviceOutput}, operation_id="device_update")
    def patch(self, request, device_id):
        device = _device_from_path(request, device_id)
        serializer = validated(DeviceUpdateInput, request.data, partial=True)
        unknown = set(request.data) - set(serializer.fields) if isinstance(request.data, dict) else set()
        if unknown:
            raise ServiceError("unknown_fields", "These fields cannot be changed: " + ", ".join(sorted(unknown)),
                           fields={name: ["Not editable."] for name in sorted(unknown)})
        data = dict(serializer.validated_data)
        password, current_pin = data.pop("password", None), data.pop("current_pin", None)
        services.device_update(device=device, data=device_fields(data), by=request.auth, password=password,
                               current_pin=current_pin, client_ip=client_ip(request), now=timezone.now())
        return Response(DeviceOutput(device, context={"me": request.auth}).data)

    @extend_schema(responses={204: None}, operation_id="device_delete")
    def delete(self, request, device_id):
        device = _device_from_path(request, device_id)
        services.device_revoke(device=device, now=timezone.now(), by=request.auth, client_ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditLogApi(APIView):
    class Query(serializers.Serializer):
        limit = serializers.IntegerField(min_value=1, max_value=200, default=50)

    class EntryOutput(serializers.Serializer):
        id = serializers.IntegerField()
        action = serializers.CharField()
        detail = serializers.DictField()
        device = serializers.SerializerMethodField()
        client_ip = serializers.CharField()
        at = serializers.DateTimeField()

        @extend_schema_field(inline_serializer("AuditDevice", {
            "id": serializers.UUIDField(), "name": serializers.CharField(), "kind": serializers.CharField()},
            allow_null=True))
        def get_device(self, entry) -> dict | None:
            device = entry.device
            return None if device is None else {"id": str(device.pk), "name": device.name, "kind": device.kind}

    @extend_schema(parameters=[OpenApiParameter("limit", int, description="1-200, default 50")],
                   responses={200: EntryOutput(many=True)}, operation_id="account_audit_log",
                   description="Sensitive changes to the account, newest first: what, by which device, "
                               "when and from which address.")
    def get(self, request):
        query = validated(self.Query, request.query_params).validated_data
        entries = audit.audit_entries_for_user(user=request.user, limit=query["limit"])
        return Response(self.EntryOutput(entries, many=True).data)


class PairingCodeCreateApi(APIView):
    permission_classes = [IsDevice]

    class PairingCodeOutput(serializers.Serializer):
        code = serializers.CharField()
        expires_at = serializers.DateTimeField()

    @extend_schema(request=None, responses={201: PairingCodeOutput}, operation_id="pairing_code_create")
    def post(self, request):
        code, expires_at = services.pairing_code_create(device=request.auth, now=timezone.now())
        body = self.PairingCodeOutput({"code": code, "expires_at": expires_at}).data
        return Response(body, status=status.HTTP_201_CREATED)


class WsTicketCreateApi(APIView):
    class WsTicketOutput(serializers.Serializer):
        ticket = serializers.CharField()
        expires_in = serializers.IntegerField(help_text="seconds")

    @extend_schema(request=None, responses={201: WsTicketOutput}, operation_id="ws_ticket_create")
    def post(self, request):
        ticket, expires_in = services.ws_ticket_issue(device=request.auth, now=timezone.now())
        body = self.WsTicketOutput({"ticket": ticket, "expires_in": expires_in}).data
        return Response(body, status=status.HTTP_201_CREATED)
