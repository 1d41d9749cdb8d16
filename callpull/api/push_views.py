"""The key a browser subscribes to Web Push with (notifications.webpush)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.errors import ServiceError
from notifications import webpush

VapidPublicKeyOutput = inline_serializer("VapidPublicKey", {
    "public_key": serializers.CharField(
        help_text="The server's VAPID public key (RFC 8292): base64url of the 65-byte uncompressed P-256 "
                  "point, the `applicationServerKey` a page passes to `pushManager.subscribe`."),
})


class VapidPublicKeyApi(APIView):
    """Public: the key is in every push the server sends; a page needs it before it has subscribed."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=None, auth=[], operation_id="push_vapid_public_key",
        responses={200: VapidPublicKeyOutput,
                   404: OpenApiResponse(description="`webpush_disabled`: the server has no VAPID key.")},
        description="The applicationServerKey for `pushManager.subscribe`; the subscription then goes to "
                    "PATCH /api/v1/devices/me as `webpush_subscription`.")
    def get(self, request):
        key = webpush.vapid_public_key()
        if key is None:
            raise ServiceError("webpush_disabled", "Web Push is off on this server (no VAPID key).")
        return Response({"public_key": key})
