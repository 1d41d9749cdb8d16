from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from devices import schema  # noqa: F401  (registers the OpenAPI auth scheme)
