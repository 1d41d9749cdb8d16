from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0007_apns_tokens'),
    ]

    operations = [
        migrations.AddField(
            model_name='device',
            name='webpush_subscription',
            field=models.JSONField(blank=True, help_text="A browser's Web Push subscription {endpoint, keys: {p256dh, auth}} (write-only on the API).", null=True),
        ),
    ]
