"""HTTP endpoints for lines, their forwarding and the account's settings."""

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from callpull import selectors, services
from callpull.api.serializers import (
    AccountOutput,
    AccountUpdateInput,
    ForwardingInput,
    LineCreateInput,
    LineOutput,
    LineUpdateInput,
)
from devices.api import client_ip, validated
from devices.auth import IsDevice, IsHandset


class LineListCreateApi(APIView):
    def get_permissions(self):
        return [IsHandset()] if self.request.method == "POST" else [IsDevice()]

    @extend_schema(responses={200: LineOutput(many=True)}, operation_id="lines_list")
    def get(self, request):
        return Response(LineOutput(selectors.lines_for_user(user=request.user), many=True).data)

    @extend_schema(request=LineCreateInput, responses={201: LineOutput, 200: LineOutput},
                   operation_id="line_register", description="Handset only. Registering a number again "
                   "returns the existing line with 200.")
    def post(self, request):
        data = validated(LineCreateInput, request.data).validated_data
        line, created = services.line_register(device=request.auth, number=data["number"],
                                               region=data.get("region"), now=timezone.now())
        return Response(LineOutput(line).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class LineDetailApi(APIView):
    @extend_schema(responses={200: LineOutput}, operation_id="line_get")
    def get(self, request, line_id):
        return Response(LineOutput(selectors.line_for_user(user=request.user, line_id=line_id)).data)

    @extend_schema(request=LineUpdateInput, responses={200: LineOutput}, operation_id="line_update")
    def patch(self, request, line_id):
        line = selectors.line_for_user(user=request.user, line_id=line_id)
        data = validated(LineUpdateInput, request.data, partial=True).validated_data
        return Response(LineOutput(services.line_update(line=line, data=data)).data)


class LineForwardingApi(APIView):
    permission_classes = [IsHandset]

    @extend_schema(request=ForwardingInput, responses={200: LineOutput}, operation_id="line_forwarding_confirm",
                   description="Handset only: what the handset's interrogation of a forwarding kind reported "
                               "(*#67# busy, the default; *#61# no_answer, *#62# unreachable, *#21# always, "
                               "*#004# conditional = busy + no_answer + unreachable).")
    def post(self, request, line_id):
        line = selectors.line_for_user(user=request.user, line_id=line_id)
        data = validated(ForwardingInput, request.data).validated_data
        line = services.line_forwarding_confirm(line=line, kind=data["kind"], state=data["state"],
                                                target=data.get("target"), timer=data.get("timer"),
                                                now=timezone.now())
        return Response(LineOutput(line).data)


class AccountApi(APIView):
    @extend_schema(responses={200: AccountOutput}, operation_id="account_get")
    def get(self, request):
        return Response(AccountOutput(services.account_settings_get(user=request.user)).data)

    @extend_schema(request=AccountUpdateInput, responses={200: AccountOutput}, operation_id="account_update")
    def patch(self, request):
        data = dict(validated(AccountUpdateInput, request.data, partial=True).validated_data)
        password, current_pin = data.pop("password", None), data.pop("current_pin", None)
        account = services.account_settings_update(user=request.user, device=request.auth, data=data,
                                                   password=password, current_pin=current_pin,
                                                   client_ip=client_ip(request), now=timezone.now())
        return Response(AccountOutput(account).data)
