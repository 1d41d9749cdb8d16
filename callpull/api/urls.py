from django.urls import path

from callpull.api import call_views, push_views, verification_views, views, voice_views

urlpatterns = [
    path("account", views.AccountApi.as_view(), name="account"),
    # One segment more than devices/<str:device_id> (devices/urls.py), so never shadowed by it.
    path("devices/me/number-verification", verification_views.NumberVerificationStartApi.as_view(),
         name="number-verification"),
    path("devices/me/number-verification/confirm", verification_views.NumberVerificationConfirmApi.as_view(),
         name="number-verification-confirm"),
    path("devices/me/voice-token", voice_views.VoiceTokenApi.as_view(), name="voice-token"),
    path("push/vapid-public-key", push_views.VapidPublicKeyApi.as_view(), name="vapid-public-key"),
    path("lines", views.LineListCreateApi.as_view(), name="lines"),
    path("lines/<str:line_id>", views.LineDetailApi.as_view(), name="line-detail"),
    path("lines/<str:line_id>/forwarding", views.LineForwardingApi.as_view(), name="line-forwarding"),
    path("calls", call_views.CallListReportApi.as_view(), name="calls"),
    path("calls/<str:call_id>", call_views.CallDetailApi.as_view(), name="call-detail"),
    path("calls/<str:call_id>/answer", call_views.CallAnswerApi.as_view(), name="call-answer"),
    path("calls/<str:call_id>/decline", call_views.CallDeclineApi.as_view(), name="call-decline"),
    path("calls/<str:call_id>/handset-events", call_views.CallHandsetEventApi.as_view(), name="call-handset-events"),
    path("calls/<str:call_id>/pull", call_views.CallPullApi.as_view(), name="call-pull"),
    path("calls/<str:call_id>/transfer", call_views.CallTransferApi.as_view(), name="call-transfer"),
    path("pulls/<str:pull_id>", call_views.PullDetailApi.as_view(), name="pull-detail"),
    path("pulls/<str:pull_id>/approve", call_views.PullApproveApi.as_view(), name="pull-approve"),
    path("pulls/<str:pull_id>/deny", call_views.PullDenyApi.as_view(), name="pull-deny"),
]
