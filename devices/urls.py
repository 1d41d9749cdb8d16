from django.urls import path

from devices import api

urlpatterns = [
    path("accounts", api.AccountCreateApi.as_view(), name="accounts"),
    path("account/audit-log", api.AuditLogApi.as_view(), name="account-audit-log"),
    path("devices", api.DeviceListCreateApi.as_view(), name="devices"),
    path("devices/<str:device_id>", api.DeviceDetailApi.as_view(), name="device-detail"),
    path("pairing-codes", api.PairingCodeCreateApi.as_view(), name="pairing-codes"),
    path("ws-tickets", api.WsTicketCreateApi.as_view(), name="ws-tickets"),
]
