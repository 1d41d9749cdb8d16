from django.urls import path

from callpull.telephony import views

urlpatterns = [
    path("voice", views.voice, name="twilio-voice"),
    path("connect", views.connect, name="twilio-connect"),
    path("fallback", views.fallback, name="twilio-fallback"),
    path("dial-status", views.dial_status, name="twilio-dial-status"),
    path("status", views.status, name="twilio-status"),
]
