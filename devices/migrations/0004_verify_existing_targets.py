"""Targets that were already in use when verification came (0003): `client` targets need
no proof, and `sip` targets on the operator's SIP_DOMAINS have theirs from the list, as a
new one would get at write time. `number` targets stay unverified until their owner
proves them (POST /api/v1/devices/me/number-verification)."""

from django.db import migrations
from django.utils import timezone

from devices.services import sip_domain_allowed


def verify_existing(apps, schema_editor):
    Device = apps.get_model("devices", "Device")
    now = timezone.now()
    pending = Device.objects.filter(connect_verified_at__isnull=True)
    pending.filter(connect_type="client").update(connect_verified_at=now)
    for device in pending.filter(connect_type="sip").only("pk", "connect_address"):
        if sip_domain_allowed(device.connect_address):  # the same rule as a new target's
            Device.objects.filter(pk=device.pk).update(connect_verified_at=now)


class Migration(migrations.Migration):
    dependencies = [("devices", "0003_security")]
    operations = [migrations.RunPython(verify_existing, migrations.RunPython.noop)]
