"""HTTP endpoints of the ring flow: report, list, read, answer, decline, handset events."""

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from callpull import calls, moves
from callpull.api.serializers import (
    CallListQuery,
    CallOutput,
    CallReportInput,
    CallReportOutput,
    DeclineInput,
    HandsetEventInput,
    PullEnvelope,
    TransferInput,
)
from callpull.models import Call
from callpull.representations import call_to_dict, call_with_timeline, pull_to_dict
from devices.api import validated
from devices.auth import IsDevice, IsHandset, IsSecondary


class CallListReportApi(APIView):
    def get_permissions(self):
        return [IsHandset()] if self.request.method == "POST" else [IsDevice()]

    @extend_schema(parameters=[CallListQuery], responses={200: CallOutput(many=True)}, operation_id="calls_list",
                   description="The user's calls, newest first, without timelines.")
    def get(self, request):
        query = validated(CallListQuery, request.query_params).validated_data
        found = Call.objects.select_related("line").filter(user=request.user)
        if "state" in query:
            found = found.filter(state=query["state"])
        return Response([call_to_dict(call) for call in found.order_by("-created_at")[:query["limit"]]])

    @extend_schema(request=CallReportInput, responses={201: CallReportOutput, 200: CallReportOutput},
                   operation_id="call_report",
                   description="Handset only. A repeated report_id returns the same call with 200.")
    def post(self, request):
        data = validated(CallReportInput, request.data).validated_data
        report = calls.call_report(
            device=request.auth, report_id=data["report_id"], line=data["line"], caller=data.get("caller"),
            caller_name=data.get("caller_name") or "", now=timezone.now())
        call = report.call
        shown = call_with_timeline(call) if report.timeline is None else {**call_to_dict(call),
                                                                         "timeline": report.timeline}
        return Response({"call": shown, "instruction": report.instruction.to_dict()},
                        status=status.HTTP_201_CREATED if report.created else status.HTTP_200_OK)


class CallDetailApi(APIView):
    @extend_schema(responses={200: CallOutput}, operation_id="call_get")
    def get(self, request, call_id):
        return Response(call_with_timeline(calls.call_for_user(user=request.user, call_id=call_id)))


class CallAnswerApi(APIView):
    permission_classes = [IsSecondary]

    @extend_schema(request=None, responses={200: CallOutput}, operation_id="call_answer",
                   description="Secondary devices only. The first answer wins; the others get 409 already_answered.")
    def post(self, request, call_id):
        call = calls.call_for_user(user=request.user, call_id=call_id)
        call = calls.call_answer(call=call, device=request.auth, now=timezone.now())
        return Response(call_with_timeline(call))


class CallDeclineApi(APIView):
    @extend_schema(request=DeclineInput, responses={200: CallOutput}, operation_id="call_decline")
    def post(self, request, call_id):
        data = validated(DeclineInput, request.data).validated_data
        call = calls.call_for_user(user=request.user, call_id=call_id)
        call = calls.call_decline(call=call, device=request.auth, scope=data["scope"], now=timezone.now())
        return Response(call_with_timeline(call))


class CallHandsetEventApi(APIView):
    permission_classes = [IsHandset]

    @extend_schema(request=HandsetEventInput, responses={200: CallOutput}, operation_id="call_handset_event")
    def post(self, request, call_id):
        data = validated(HandsetEventInput, request.data).validated_data
        call = calls.call_for_user(user=request.user, call_id=call_id)
        call = calls.call_handset_event(call=call, device=request.auth, event=data["event"], now=timezone.now())
        return Response(call_with_timeline(call))


class CallPullApi(APIView):
    @extend_schema(request=None, responses={202: PullEnvelope}, operation_id="call_pull",
                   description="Move the live call to the calling device. 409 when the call is not movable.")
    def post(self, request, call_id):
        call = calls.call_for_user(user=request.user, call_id=call_id)
        pull = moves.pull_request(call=call, device=request.auth, now=timezone.now())
        return Response({"pull": pull_to_dict(pull)}, status=status.HTTP_202_ACCEPTED)


class PullDetailApi(APIView):
    @extend_schema(responses={200: PullEnvelope}, operation_id="pull_get",
                   description="A pull's progress: awaiting_approval, approved, denied, completed, failed.")
    def get(self, request, pull_id):
        return Response({"pull": pull_to_dict(moves.pull_for_user(user=request.user, pull_id=pull_id))})


def _decide(request, pull_id, *, approve: bool) -> Response:
    pull = moves.pull_for_user(user=request.user, pull_id=pull_id)
    pull = moves.pull_decide(pull=pull, device=request.auth, approve=approve, now=timezone.now())
    return Response({"pull": pull_to_dict(pull)})


class PullApproveApi(APIView):
    @extend_schema(request=None, responses={200: PullEnvelope}, operation_id="pull_approve",
                   description="Only the device holding the call.")
    def post(self, request, pull_id):
        return _decide(request, pull_id, approve=True)


class PullDenyApi(APIView):
    @extend_schema(request=None, responses={200: PullEnvelope}, operation_id="pull_deny",
                   description="Only the device holding the call.")
    def post(self, request, pull_id):
        return _decide(request, pull_id, approve=False)


class CallTransferApi(APIView):
    @extend_schema(request=TransferInput, responses={202: CallOutput}, operation_id="call_transfer",
                   description="Hand the live call to a number on the user's allow-list, with the transfer PIN. "
                               "A number off the list is 403 whatever the PIN; wrong PINs are rate-limited.")
    def post(self, request, call_id):
        data = validated(TransferInput, request.data).validated_data
        call = calls.call_for_user(user=request.user, call_id=call_id)
        moves.call_transfer(call=call, device=request.auth, number=data["number"], pin=data["pin"],
                            now=timezone.now())
        call.refresh_from_db()
        return Response(call_with_timeline(call), status=status.HTTP_202_ACCEPTED)
