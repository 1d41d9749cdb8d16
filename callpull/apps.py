from django.apps import AppConfig


class CallpullConfig(AppConfig):
    name = "callpull"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from callpull import calls, revocation, services
        from devices.signals import device_revoked, transfer_pin_check
        from notifications.signals import deliveries_acked, device_connected

        device_connected.connect(calls.on_device_connected, dispatch_uid="callpull.device_connected")
        deliveries_acked.connect(calls.on_deliveries_acked, dispatch_uid="callpull.deliveries_acked")
        device_revoked.connect(revocation.on_device_revoked, dispatch_uid="callpull.device_revoked")
        transfer_pin_check.connect(services.transfer_pin_matches, dispatch_uid="callpull.transfer_pin_check")
