from django.contrib import admin

from callpull.models import AccountSettings, Call, Line, ServerNumber
from devices.admin import CHANGELIST_CSS, compact_time, shortened


@admin.register(ServerNumber)
class ServerNumberAdmin(admin.ModelAdmin):
    list_display = ["number", "active"]
    list_filter = ["active"]

    class Media:
        css = CHANGELIST_CSS


@admin.register(Line)
class LineAdmin(admin.ModelAdmin):
    list_display = ["number", "owner", "server_number", "policy", "forwarding_state", "verified"]
    list_filter = ["policy", "forwarding_state", "server_number"]
    list_select_related = ["user", "server_number"]
    search_fields = ["number", "user__username"]
    readonly_fields = ["id", "created_at", "forwarding_verified_at"]

    class Media:
        css = CHANGELIST_CSS

    @admin.display(description="user", ordering="user__username")
    def owner(self, line):
        return shortened(line.user.username, 24)

    @admin.display(description="verified", ordering="forwarding_verified_at")
    def verified(self, line):
        return compact_time(line.forwarding_verified_at)


@admin.register(AccountSettings)
class AccountSettingsAdmin(admin.ModelAdmin):
    list_display = ["owner", "pull_requires_approval", "monitor_after_switch"]
    list_select_related = ["user"]
    search_fields = ["user__username"]
    exclude = ["transfer_pin_hash"]

    class Media:
        css = CHANGELIST_CSS

    @admin.display(description="user", ordering="user__username")
    def owner(self, settings):
        return shortened(settings.user.username, 40)


@admin.register(Call)
class CallAdmin(admin.ModelAdmin):
    """Calls for looking up, not for editing: their state changes only through the call workflow."""

    # The line names its user (searchable by username); five columns fit beside the filters.
    list_display = ["started", "line", "caller", "short_caller_name", "state"]
    list_display_links = ["started"]
    list_filter = ["state", "policy"]
    list_select_related = ["line"]
    list_per_page = 50
    search_fields = ["id", "caller", "line__number", "user__username"]
    date_hierarchy = "created_at"

    class Media:
        css = CHANGELIST_CSS

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="started", ordering="created_at")
    def started(self, call):
        return compact_time(call.created_at)

    @admin.display(description="caller name", ordering="caller_name")
    def short_caller_name(self, call):
        return shortened(call.caller_name, 24)
