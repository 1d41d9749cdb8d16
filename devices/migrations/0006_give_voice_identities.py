"""Devices registered before voice identities (0005) get one now, as a new one gets at
registration: every tablet, desktop and web device, revoked ones too (so an identity is
never handed out twice). Those that had set no connect target are reached at their
identity from now on (`client:<identity>`, which needs no proof), as a new device is."""

from django.db import migrations
from django.utils import timezone

from devices.models import VOICE_KINDS, new_voice_identity


def give_identities(apps, schema_editor):
    Device = apps.get_model("devices", "Device")
    now = timezone.now()
    for pk in Device.objects.filter(kind__in=[kind.value for kind in VOICE_KINDS],
                                    voice_identity__isnull=True).values_list("pk", flat=True):
        identity = new_voice_identity()
        Device.objects.filter(pk=pk).update(voice_identity=identity)
        Device.objects.filter(pk=pk, connect_type="").update(connect_type="client", connect_address=identity,
                                                             connect_verified_at=now)


class Migration(migrations.Migration):
    dependencies = [("devices", "0005_device_voice_identity")]
    operations = [migrations.RunPython(give_identities, migrations.RunPython.noop)]
