"""HTTP endpoint of voice access tokens (callpull/voice.py)."""

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from callpull import voice

VoiceTokenOutput = inline_serializer("VoiceToken", {
    "token": serializers.CharField(help_text="A Twilio Access Token (JWT) for the device's voice SDK."),
    "identity": serializers.CharField(help_text="The device's `client` identity the token is for "
                                                "(its `voice_identity`)."),
    "expires_at": serializers.DateTimeField(help_text="The token stops working then: fetch a new one before."),
})


class VoiceTokenApi(APIView):
    @extend_schema(
        request=None, responses={200: VoiceTokenOutput,
                                 503: OpenApiResponse(description="`voice_tokens_not_configured`: the server has "
                                                                  "no API key to sign tokens with.")},
        operation_id="voice_token_issue",
        description="A new access token for the calling device's voice identity: a Voice grant allowing "
                    "incoming calls, the push credential of the device's platform, and the outgoing TwiML "
                    "application when the server has one. 403 `no_voice_identity` for a handset; 429 when "
                    "fetched too often.")
    def post(self, request):
        issued = voice.voice_token_issue(device=request.auth, now=timezone.now())
        return Response({"token": issued.token, "identity": issued.identity,
                         "expires_at": serializers.DateTimeField().to_representation(issued.expires_at)})
