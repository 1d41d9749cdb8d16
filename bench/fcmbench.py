"""FCM fan-out: notifications.fcm (ours) vs fcm-django vs a loop of messaging.send.

Run by `python -m bench run` as a subprocess pinned to the client core, while
`manage.py fakefcm --latency-ms 20` (simulators.fcm.FakeFCM) runs in another
process on the server core. fcm-django and naive use real firebase-admin; ours builds
FCM HTTP v1 requests itself (firebase-admin's credential for the access token only).

- ours: notifications.fcm.send_many (its own event loop and aiohttp); first/last = when
  FCM accepted the first/last push (PushResult.sent_at), from the call.
- fcm-django: FCMDevice.objects.filter(...).send_message(Message(data=…), app=app),
  its real QuerySet path (messaging.send_each per 500, then its bookkeeping).
- naive: for each token, messaging.send(Message(token=…, data=…), app=app).

Each row also gives the sender's CPU per push (this process, all threads, over the timed
part): when it is well below the wall time per push, the fake (one process, one core) is
what limits the rate, not the sender.

fcm-django and naive use a firebase-admin App configured as a user would, plus the
one poke needed to reach the fake: `_fcm_url` points at it, and the endpoint gets a
pooled adapter of 100 connections (firebase-admin mounts exactly that for
https://fcm.googleapis.com only). Their retries and trust_env stay as shipped.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.fcm_settings")
import django  # noqa: E402

django.setup()
import firebase_admin  # noqa: E402
import requests.adapters  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from firebase_admin import credentials, messaging  # noqa: E402

from notifications import fcm  # noqa: E402

DATA = {"type": "call.ringing", "call_id": "00000000-0000-0000-0000-000000000000", "caller": "+15551234567",
        "caller_name": "Bench Caller", "line": "+15557654321", "expires_at": "2026-01-01T00:00:00+00:00"}


def plain_app():
    app = firebase_admin.initialize_app(credentials.Certificate(settings.FCM_CREDENTIALS_FILE),
                                        {"httpTimeout": 10}, name="bench-plain")
    service = messaging._get_messaging_service(app)
    endpoint = settings.FCM_ENDPOINT.rstrip("/")
    service._fcm_url = f"{endpoint}/v1/projects/{service._project_id}/messages:send"
    service._client.session.mount(endpoint, requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=100))
    return app


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tokens(n: int, tag: str) -> list[str]:
    return [f"bench-{tag}-{i:05d}-" + "x" * 140 for i in range(n)]


def run_ours(n: int) -> dict:
    done = threading.Event()
    results = []
    lock = threading.Lock()
    pushes = [fcm.Push(device_id=str(i), token=t, data=DATA, collapse_key="bench", deadline=time.time() + 30)
              for i, t in enumerate(tokens(n, "ours"))]
    t0, cpu0 = time.time(), cpu_seconds()

    def on_result(result):
        with lock:
            results.append(result)
            if len(results) == n:
                done.set()
    fcm.send_many(pushes, on_result)
    done.wait(60)
    wall, cpu = time.time() - t0, cpu_seconds() - cpu0
    accepted = [r.sent_at for r in results if r.ok and r.sent_at]
    return {"ok": len(accepted), "n": n, "first_s": (min(accepted) - t0) if accepted else None,
            "last_s": (max(accepted) - t0) if accepted else None, "wall_s": wall, "cpu_s": cpu}


def run_fcm_django(n: int, app) -> dict:
    from fcm_django.models import FCMDevice
    FCMDevice.objects.all().delete()
    FCMDevice.objects.bulk_create([FCMDevice(registration_id=t, type="android", active=True)
                                   for t in tokens(n, f"dj{time.monotonic_ns()}")])
    t0, cpu0 = time.time(), cpu_seconds()
    response = FCMDevice.objects.filter(active=True).send_message(messaging.Message(data=DATA), app=app)
    wall, cpu = time.time() - t0, cpu_seconds() - cpu0
    batch = response.response
    return {"ok": batch.success_count, "n": n, "first_s": None, "last_s": wall, "wall_s": wall, "cpu_s": cpu}


def run_naive(n: int, app) -> dict:
    t0, cpu0 = time.time(), cpu_seconds()
    ok = 0
    first = None
    for t in tokens(n, "naive"):
        messaging.send(messaging.Message(token=t, data=DATA), app=app)
        ok += 1
        if first is None:
            first = time.time() - t0
    wall, cpu = time.time() - t0, cpu_seconds() - cpu0
    return {"ok": ok, "n": n, "first_s": first, "last_s": wall, "wall_s": wall, "cpu_s": cpu}


def main(sizes: list[int], repeats: int, out: str) -> None:
    call_command("migrate", verbosity=0, interactive=False)
    app = plain_app()
    # Warm every path once (token grant, connection set-up, imports).
    run_ours(4)
    run_fcm_django(4, app)
    run_naive(2, app)
    rows = []
    for n in sizes:
        for name, fn in (("ours", lambda n=n: run_ours(n)), ("fcm-django", lambda n=n: run_fcm_django(n, app)),
                         ("naive loop", lambda n=n: run_naive(n, app))):
            reps = repeats if (name != "naive loop" or n <= 100) else 1
            samples = [fn() for _ in range(reps)]
            last = statistics.median(s["last_s"] for s in samples)
            firsts = [s["first_s"] for s in samples if s["first_s"] is not None]
            row = {"impl": name, "tokens": n, "repeats": reps, "ok": min(s["ok"] for s in samples),
                   "last_ms": round(last * 1000, 1), "first_ms": round(statistics.median(firsts) * 1000, 1)
                   if firsts else None, "msgs_per_s": round(n / last, 1) if last else None,
                   "cpu_us_per_push": round(statistics.median(s["cpu_s"] for s in samples) / n * 1e6),
                   "samples_last_ms": [round(s["last_s"] * 1000, 1) for s in samples],
                   "load": [round(x, 2) for x in os.getloadavg()]}
            rows.append(row)
            print(f"fcm   {name:>10s} tokens={n:<5d} accepted {row['ok']}/{n}, last {row['last_ms']} ms, "
                  f"first {row['first_ms']} ms, {row['msgs_per_s']} msg/s, sender CPU {row['cpu_us_per_push']} µs/push "
                  f"(median of {reps})", flush=True)
    fcm.shutdown()
    with open(out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1].split(",")], int(sys.argv[2]), sys.argv[3])
