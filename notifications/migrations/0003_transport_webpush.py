from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('notifications', '0002_transport_apns'),
    ]

    operations = [
        migrations.AlterField(
            model_name='delivery',
            name='transport',
            field=models.CharField(choices=[('websocket', 'Websocket'), ('fcm', 'Fcm'), ('apns', 'Apns'), ('webpush', 'Webpush')], max_length=16),
        ),
    ]
