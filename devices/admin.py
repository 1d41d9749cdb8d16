from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.utils.dateformat import format as format_date
from django.utils.html import format_html
from django.utils.timezone import localtime

from devices.models import Device, DeviceConnection

# The changelists' small stylesheet (served from the project's static files): long values
# break inside their cell instead of widening the table past a 1280 px window.
CHANGELIST_CSS = {"all": ["devices/admin/changelist.css"]}


def shortened(value: str, limit: int):
    """`value` cut to `limit` characters with an ellipsis; the whole value in its tooltip."""
    if len(value) <= limit:
        return value
    return format_html('<span title="{}">{}…</span>', value, value[:limit - 1])


def compact_time(value):
    """A time as "2026-12-05 00:31" (16 characters; the admin's own format takes 24); "-" for none."""
    return format_date(localtime(value), "Y-m-d H:i") if value else "-"


class RemovedFilter(admin.SimpleListFilter):
    title = "removed"
    parameter_name = "removed"

    def lookups(self, request, model_admin):
        return [("no", "No"), ("yes", "Yes")]

    def queryset(self, request, queryset):
        if self.value() in ("no", "yes"):
            return queryset.filter(revoked_at__isnull=self.value() == "no")
        return queryset


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    # Beside the navigation and the filters at 1280 px the list has about 630 px: five short
    # columns. The platform is a filter; a removed device says so after its name (and is a
    # filter); the name and the owner are cut to a length, and the last-seen time is compact.
    list_display = ["short_name", "owner", "kind", "rings", "seen"]
    list_display_links = ["short_name"]
    list_filter = ["kind", "platform", "ring_enabled", RemovedFilter]
    list_select_related = ["user"]
    list_per_page = 50
    ordering = ["-created_at"]
    search_fields = ["name", "user__username"]
    # The token's digest is of no use to a person and is a 64-character line; it is not shown.
    readonly_fields = ["id", "voice_identity", "created_at", "last_seen_at", "revoked_at"]

    class Media:
        css = CHANGELIST_CSS

    def get_queryset(self, request):
        return Device.all_objects.select_related("user")

    @admin.display(description="name", ordering="name")
    def short_name(self, device):
        name = shortened(device.name, 40)
        return format_html("{} <strong>(removed)</strong>", name) if device.revoked_at else name

    @admin.display(description="user", ordering="user__username")
    def owner(self, device):
        return shortened(device.user.username, 24)

    @admin.display(description="rings", boolean=True, ordering="ring_enabled")
    def rings(self, device):
        return device.ring_enabled

    @admin.display(description="last seen", ordering="last_seen_at")
    def seen(self, device):
        return compact_time(device.last_seen_at)


@admin.register(DeviceConnection)
class DeviceConnectionAdmin(admin.ModelAdmin):
    # Not the `device` field itself: the admin keeps a foreign key's cell on one line.
    list_display = ["short_name", "worker", "connected", "seen"]
    list_display_links = ["short_name"]
    list_select_related = ["device"]
    readonly_fields = ["device", "channel_name", "worker", "connected_at", "seen_at"]

    class Media:
        css = CHANGELIST_CSS

    @admin.display(description="device", ordering="device__name")
    def short_name(self, connection):
        return shortened(str(connection.device), 40)

    @admin.display(description="connected", ordering="connected_at")
    def connected(self, connection):
        return compact_time(connection.connected_at)

    @admin.display(description="seen", ordering="seen_at")
    def seen(self, connection):
        return compact_time(connection.seen_at)


# The accounts (this package signs users up): Django's own user admin with a list that fits
# 1280 px whatever was typed at sign-up (a username may be 150 characters, an address 254).
admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class AccountAdmin(UserAdmin):
    list_display = ["short_username", "short_email", "full_name", "is_staff"]
    list_display_links = ["short_username"]

    class Media:
        css = CHANGELIST_CSS

    @admin.display(description="username", ordering="username")
    def short_username(self, user):
        return shortened(user.get_username(), 32)

    @admin.display(description="email address", ordering="email")
    def short_email(self, user):
        return shortened(user.email, 32)

    @admin.display(description="name", ordering="last_name")
    def full_name(self, user):
        return shortened(user.get_full_name(), 32)
