"""Seed a benchmark database: users, each with one handset (its line's forwarding
active) and K secondary devices. Run with the server's environment
(DATABASE_URL, SERVER_NUMBERS …):

    python -m bench.seed USERS SECONDARIES POLICY OUT.json

Uses the product's own services (devices.services._create_device,
callpull.services.line_register / line_forwarding_confirm). Passwords are hashed with
MD5 for speed: the benchmark never logs in with them (devices use their tokens).
"""

import hashlib
import json
import os
import sys


def main(users: int, secondaries: int, policy: str, out: str, prefix: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callpull.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from callpull import services as line_services
    from devices import services as device_services

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    User = get_user_model()
    now = timezone.now()
    result = []
    with transaction.atomic():
        for index in range(users):
            user = User.objects.create_user(username=f"{prefix}-{index}", password="bench-password")
            handset = device_services._create_device(
                user=user, data={"name": "handset", "kind": "handset", "platform": "android"}, now=now)
            number = f"+1555{index + 1000000:07d}"[:12]
            line, _ = line_services.line_register(device=handset.device, number=number, region=None, now=now)
            line = line_services.line_forwarding_confirm(line=line, state="active",
                                                         target=settings.SERVER_NUMBERS[0], now=now)
            if policy != line.policy:
                line_services.line_update(line=line, data={"policy": policy})
            devices = []
            for k in range(secondaries):
                data = {"name": f"tablet {k}", "kind": "tablet", "platform": "android"}
                if k < int(os.environ.get("BENCH_SEED_FCM_PER_USER", "0")):  # bench/fcmring.py
                    data["fcm_token"] = f"bench-{prefix}-{index}-{k}-" + "t" * 40
                if k < int(os.environ.get("BENCH_SEED_APNS_PER_USER", "0")):  # bench/fcmring.py --push apns
                    data.update(name=f"iPad {k}", platform="ios",
                                apns_voip_token=hashlib.sha256(f"bench-{prefix}-{index}-{k}".encode()).hexdigest())
                reg = device_services._create_device(user=user, data=data, now=now)
                devices.append({"id": str(reg.device.pk), "token": reg.token})
            result.append({"user_id": user.pk, "line": line.number,
                           "handset": {"id": str(handset.device.pk), "token": handset.token},
                           "secondaries": devices})
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "b")
