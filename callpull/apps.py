from django.apps import AppConfig


class CallpullConfig(AppConfig):
    name = "callpull"
    default_auto_field = "django.db.models.BigAutoField"
