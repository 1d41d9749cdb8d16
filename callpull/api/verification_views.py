"""HTTP endpoints of number verification: the calling device proves its own
`number` connect target (callpull/verification.py)."""

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from callpull import verification
from devices import selectors
from devices.api import validated
from devices.serializers import DeviceOutput

VerificationEnvelope = inline_serializer("NumberVerificationEnvelope", {
    "verification": inline_serializer("NumberVerification", {
        "id": serializers.UUIDField(),
        "number": serializers.CharField(help_text="The number being called (E.164)."),
        "expires_at": serializers.DateTimeField(help_text="The code is good until then."),
        "attempts_left": serializers.IntegerField(),
    }),
})


class NumberVerificationStartApi(APIView):
    @extend_schema(
        request=None, operation_id="number_verification_start",
        responses={202: VerificationEnvelope,
                   502: OpenApiResponse(description="`provider_unavailable`: the call could not be placed; "
                                                    "nothing was stored.")},
        description="The provider calls the calling device's own `number` connect target and reads out a "
                    "6-digit code. A newer request supersedes older ones. 409 `no_number_target`, "
                    "`already_verified`; 429 when started too often.")
    def post(self, request):
        started = verification.verification_start(device=request.auth, now=timezone.now())
        body = {"verification": {"id": str(started.pk), "number": started.number,
                                 "expires_at": serializers.DateTimeField().to_representation(started.expires_at),
                                 "attempts_left": verification.attempts_left(started)}}
        return Response(body, status=status.HTTP_202_ACCEPTED)


class NumberVerificationConfirmApi(APIView):
    class ConfirmInput(serializers.Serializer):
        code = serializers.CharField(max_length=32, help_text="The 6 digits the call read out.")

        def validate_code(self, value):
            code = verification.normalize_code(value)
            if code is None:
                raise serializers.ValidationError(f"The code is {verification.CODE_DIGITS} digits.")
            return code

    @extend_schema(
        request=ConfirmInput, responses={200: DeviceOutput}, operation_id="number_verification_confirm",
        description="The code read out for the device's current number: the device, now verified. "
                    "400 `wrong_code` (attempts left in the message); 409 `verification_expired` after "
                    "5 wrong codes, expiry, or a change of number (start again).")
    def post(self, request):
        code = validated(self.ConfirmInput, request.data).validated_data["code"]
        now = timezone.now()
        device = verification.verification_confirm(device=request.auth, code=code, now=now)
        device = selectors.device_for_user(user=request.user, device_id=device.pk, now=now)
        return Response(DeviceOutput(device, context={"me": request.auth}).data)
