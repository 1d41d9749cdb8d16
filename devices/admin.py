from django.contrib import admin

from devices.models import Device, DeviceConnection


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "kind", "platform", "ring_enabled", "last_seen_at", "revoked_at"]
    list_filter = ["kind", "platform", "ring_enabled"]
    search_fields = ["name", "user__username"]
    readonly_fields = ["id", "token_hash", "created_at", "last_seen_at"]

    def get_queryset(self, request):
        return Device.all_objects.select_related("user")


@admin.register(DeviceConnection)
class DeviceConnectionAdmin(admin.ModelAdmin):
    list_display = ["device", "worker", "connected_at", "seen_at"]
    readonly_fields = ["device", "channel_name", "worker", "connected_at", "seen_at"]
