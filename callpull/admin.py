from django.contrib import admin

from callpull.models import AccountSettings, Line, ServerNumber


@admin.register(ServerNumber)
class ServerNumberAdmin(admin.ModelAdmin):
    list_display = ["number", "active"]
    list_filter = ["active"]


@admin.register(Line)
class LineAdmin(admin.ModelAdmin):
    list_display = ["number", "user", "server_number", "policy", "forwarding_state", "forwarding_verified_at"]
    list_filter = ["policy", "forwarding_state", "server_number"]
    search_fields = ["number", "user__username"]
    readonly_fields = ["id", "created_at", "forwarding_verified_at"]


@admin.register(AccountSettings)
class AccountSettingsAdmin(admin.ModelAdmin):
    list_display = ["user", "pull_requires_approval", "monitor_after_switch"]
    exclude = ["transfer_pin_hash"]
