from django.apps import AppConfig


class CallpullConfig(AppConfig):
    name = "callpull"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from callpull import calls
        from notifications.signals import device_connected

        device_connected.connect(calls.on_device_connected, dispatch_uid="callpull.device_connected")
