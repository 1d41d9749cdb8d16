from django.contrib import admin
from django.db.models import Count, OuterRef, Subquery

from callpull.models import AccountSettings, Call, Line, ServerNumber
from devices.admin import CHANGELIST_CSS, compact_time, shortened


def sharing_summary() -> str:
    """How many lines share their server number with another line: their network-forwarded
    calls are attributed only when the carrier sends ForwardedFrom (docs/CALLS.md)."""
    loads = list(Line.objects.order_by().values("server_number").annotate(n=Count("id")).values_list("n", flat=True))
    sharing = sum(load for load in loads if load > 1)
    return f"{sum(loads)} lines, {sharing} share a server number"


@admin.register(ServerNumber)
class ServerNumberAdmin(admin.ModelAdmin):
    list_display = ["number", "active", "line_count"]
    list_filter = ["active"]

    class Media:
        css = CHANGELIST_CSS

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(line_count=Count("lines"))

    @admin.display(description="lines", ordering="line_count")
    def line_count(self, number):
        return number.line_count

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}),
                                                 "title": f"Server numbers ({sharing_summary()})"})


@admin.register(Line)
class LineAdmin(admin.ModelAdmin):
    list_display = ["number", "owner", "server_number", "sharing", "policy", "forwarding", "verified"]
    list_filter = ["policy", "forwarding_state", "no_answer_state", "unreachable_state", "always_state",
                   "carrier_profile", "server_number"]
    list_select_related = ["user", "server_number"]
    search_fields = ["number", "user__username"]
    readonly_fields = ["id", "created_at", "forwarding_verified_at", "no_answer_verified_at",
                       "unreachable_verified_at", "always_verified_at"]

    class Media:
        css = CHANGELIST_CSS

    def get_queryset(self, request):
        others = (Line.objects.filter(server_number=OuterRef("server_number")).exclude(pk=OuterRef("pk"))
                  .order_by().values("server_number").annotate(n=Count("id")).values("n"))
        return super().get_queryset(request).annotate(sharing_with=Subquery(others))

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "title": f"Lines ({sharing_summary()})"})

    @admin.display(description="shared", ordering="sharing_with")
    def sharing(self, line):
        """How many other lines have this line's server number."""
        return line.sharing_with or 0

    @admin.display(description="forwarding", ordering="forwarding_state")
    def forwarding(self, line):
        """The busy kind's state, then the network kinds that are active (no_answer, unreachable, always)."""
        network = ", ".join(kind.replace("_", " ") for kind in line.network_kinds_active())
        return f"busy {line.forwarding_state}" + (f"; {network}" if network else "")

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
    list_filter = ["state", "policy", "forwarding_kind"]
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
