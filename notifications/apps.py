from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from devices.signals import account_changed, device_revoked
        from notifications import account, presence

        device_revoked.connect(presence.on_device_revoked, dispatch_uid="notifications.device_revoked")
        account_changed.connect(account.on_account_changed, dispatch_uid="notifications.account_changed")
