from django.urls import path

from callpull.telephony import views

urlpatterns = [
    path("voice", views.voice, name="twilio-voice"),
    path("conference", views.conference, name="twilio-conference"),
    path("dial-in-pin", views.dial_in_pin, name="twilio-dial-in-pin"),
    path("dial-in-choice", views.dial_in_choice, name="twilio-dial-in-choice"),
    path("join", views.join, name="twilio-join"),
    path("screen", views.screen, name="twilio-screen"),
    path("fallback", views.fallback, name="twilio-fallback"),
    path("dial-status", views.dial_status, name="twilio-dial-status"),
    path("status", views.status, name="twilio-status"),
]
