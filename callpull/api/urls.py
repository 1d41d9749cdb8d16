from django.urls import path

from callpull.api import views

urlpatterns = [
    path("account", views.AccountApi.as_view(), name="account"),
    path("lines", views.LineListCreateApi.as_view(), name="lines"),
    path("lines/<str:line_id>", views.LineDetailApi.as_view(), name="line-detail"),
    path("lines/<str:line_id>/forwarding", views.LineForwardingApi.as_view(), name="line-forwarding"),
]
