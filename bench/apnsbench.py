"""APNs fan-out: notifications.apns (ours) vs django-push-notifications' APNs path (aioapns).

Run by `python -m bench run` (part `apns`) or `python -m bench apns` as a subprocess on the
client core, while `manage.py fakeapns --tls --latency-ms 20` (simulators.apns.FakeAPNs,
HTTP/2 over TLS as APNs) runs in another process on the server core. bench/run.py runs it
twice, each time against a fake of its own, and reports both (rows tagged `latency_ms`,
`connect_latency_ms`, and `setup_ms`, a new TLS connection's set-up measured against that fake):

- (a) `--connect-latency-ms 0`: every answer 20 ms late, a new connection set up at once;
- (b) `--connect-latency-ms 20`: also every new connection's first flight back (the TLS
  ServerHello) held 20 ms, the TLS 1.3 handshake's one round trip with a server 20 ms away.
  TCP's handshake, another round trip over a real network, is not modelled: (b) is
  conservative for a sender that opens connections. Ours opens its one connection in the
  warm-up below and keeps it (one per worker, as issue 17 asks); django-push-notifications
  opens a new aioapns client's connections inside every `send_message`, so only it pays
  (b)'s set-up in the timed part. issue 17's 3x is judged on (b) (bench/report.py).

One `call.ringing` VoIP push (push type voip, topic `<bundle>.voip`, priority 10, collapse
id = the call) to N tokens, both signed with the same .p8 key (token authentication):

- ours: notifications.apns.send_many (its background loop, one HTTP/2 connection, notifications.http2:
  its own frames and HPACK);
  first/last = when APNs accepted the first/last push (PushResult.sent_at), from the call.
- django-push-notifications 3.3.0: its real QuerySet path with token authentication as its
  README documents (PUSH_NOTIFICATIONS_SETTINGS APNS_AUTH_KEY_PATH, APNS_AUTH_KEY_ID,
  APNS_TEAM_ID, APNS_TOPIC; bench/apns_settings.py):
  `APNSDevice.objects.filter(active=True).send_message(None, extra=…, priority=10,
  collapse_id=…, expiration=…)`, which runs `asyncio.run` over aioapns (a new client, up to
  10 connections, every notification at once). It cannot set `apns-push-type` (its
  `send_message` has no such argument), so its requests go without the header, which Apple
  recommends but requires on watchOS only; the fake takes the type from the `.voip` topic.

The one poke for django-push-notifications: aioapns connects to api.push.apple.com:443,
named by the public class attributes `APNS_SERVER` and `APNS_PORT` of
`aioapns.connection.APNsProductionClientProtocol`; they are set to the fake's host and port
(no hosts file mapping is available). It verifies the fake's certificate with its default
TLS context, which reads SSL_CERT_FILE (the fake's CA, set by bench/run.py); ours reads
APNS_CA_FILE. Everything else is as shipped.

Per row: accepted pushes; first/last accepted; msg/s = accepted / last (the fewest accepted
of the repeats); per-push p50/p99 = when the fake answered each push (its own clock, the
same host), from the call, so both are measured the same way; the sender's CPU per push
(this process, all threads, over the timed part). Median of the repeats, ours and theirs interleaved.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import secrets
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.apns_settings")
import django  # noqa: E402

django.setup()
import aioapns.connection  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from push_notifications.exceptions import APNSError, APNSServerError  # noqa: E402
from push_notifications.models import APNSDevice  # noqa: E402

from bench.common import FakeAPNsControl  # noqa: E402
from notifications import apns  # noqa: E402

CALL_ID = "00000000-0000-0000-0000-000000000000"
DATA = {"type": "call.ringing", "call_id": CALL_ID, "caller": "+15551234567", "caller_name": "Bench Caller",
        "line": "+15557654321", "expires_at": "2026-01-01T00:00:00+00:00"}


def point_aioapns_at(endpoint: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme != "https":
        raise SystemExit(f"aioapns speaks TLS only: APNS_ENDPOINT must be https, not {endpoint}")
    aioapns.connection.APNsProductionClientProtocol.APNS_SERVER = parts.hostname
    aioapns.connection.APNsProductionClientProtocol.APNS_PORT = parts.port or 443


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tokens(n: int) -> list[str]:
    """Fresh hex device tokens (64 digits, as PushKit's), unique to this sample."""
    tag = secrets.token_hex(8)
    return [f"{tag}{i:048x}" for i in range(n)]


def answered(control: FakeAPNsControl | None, start: int, sample: set[str], t0: float) -> tuple[int, list[float]]:
    """(accepted, ms from the call to the fake's answer of each accepted push) of one sample."""
    if control is None:
        return 0, []
    rows = [r for r in control.records(start) if r["token"] in sample and r["status"] == 200]
    return len(rows), sorted((r["received_at"] - t0) * 1000 for r in rows)


def run_ours(n: int, control: FakeAPNsControl | None) -> dict:
    done = threading.Event()
    results = []
    lock = threading.Lock()
    sample = tokens(n)
    payload = {"aps": {}, **DATA}
    pushes = [apns.Push(device_id=str(i), token=t, payload=payload, collapse_key=CALL_ID,
                        deadline=time.time() + 30, voip=True) for i, t in enumerate(sample)]
    start = control.counts()["requests"] if control else 0

    def on_result(result):
        with lock:
            results.append(result)
            if len(results) == n:
                done.set()
    t0, cpu0 = time.time(), cpu_seconds()
    apns.send_many(pushes, on_result)
    done.wait(60)
    wall, cpu = time.time() - t0, cpu_seconds() - cpu0
    accepted = [r.sent_at for r in results if r.ok and r.sent_at]
    ok, per_push = answered(control, start, set(sample), t0)
    return {"ok": len(accepted), "n": n, "first_s": (min(accepted) - t0) if accepted else None,
            "last_s": (max(accepted) - t0) if accepted else wall, "wall_s": wall, "cpu_s": cpu,
            "server_ok": ok, "per_push_ms": per_push}


def run_dpn(n: int, control: FakeAPNsControl | None) -> dict:
    APNSDevice.objects.all().delete()
    sample = tokens(n)
    APNSDevice.objects.bulk_create([APNSDevice(registration_id=t, active=True) for t in sample])
    start = control.counts()["requests"] if control else 0
    t0, cpu0 = time.time(), cpu_seconds()
    error = None
    try:
        response = APNSDevice.objects.filter(active=True).send_message(
            None, extra=DATA, priority=10, collapse_id=CALL_ID, expiration=int(time.time()) + 30)
    except (APNSError, APNSServerError) as exc:  # raised when any push failed
        response, error = [], str(exc)[:200]
    wall, cpu = time.time() - t0, cpu_seconds() - cpu0
    ok_client = sum(1 for r in response for v in r.values() if v == "Success")
    ok, per_push = answered(control, start, set(sample), t0)
    return {"ok": ok if control else ok_client, "n": n, "first_s": (per_push[0] / 1000) if per_push else None,
            "last_s": wall, "wall_s": wall, "cpu_s": cpu, "server_ok": ok, "per_push_ms": per_push,
            "error": error}


def pick(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


def summarize(name: str, n: int, samples: list[dict]) -> dict:
    last = statistics.median(s["last_s"] for s in samples)
    firsts = [s["first_s"] for s in samples if s["first_s"] is not None]
    middle = sorted(samples, key=lambda s: s["last_s"])[len(samples) // 2]  # the median sample's pushes
    return {"impl": name, "tokens": n, "repeats": len(samples), "ok": min(s["ok"] for s in samples),
            "last_ms": round(last * 1000, 1),
            "first_ms": round(statistics.median(firsts) * 1000, 1) if firsts else None,
            "msgs_per_s": round(min(s["ok"] for s in samples) / last, 1) if last else None,
            "push_p50_ms": pick(middle["per_push_ms"], 0.50), "push_p99_ms": pick(middle["per_push_ms"], 0.99),
            "cpu_us_per_push": round(statistics.median(s["cpu_s"] for s in samples) / n * 1e6),
            "samples_last_ms": [round(s["last_s"] * 1000, 1) for s in samples],
            "errors": sorted({s["error"] for s in samples if s.get("error")}),
            "load": [round(x, 2) for x in os.getloadavg()]}


def main(sizes: list[int], repeats: int, out: str, impls: str = "ours,django-push-notifications") -> None:
    # aioapns logs every push it gives up on (its 1 s wait per push in django-push-notifications);
    # the row counts them instead.
    for name in ("aioapns", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    call_command("migrate", verbosity=0, interactive=False)
    point_aioapns_at(settings.APNS_ENDPOINT)
    ca = os.environ.get("APNS_CA_FILE") or os.environ.get("SSL_CERT_FILE")
    control = FakeAPNsControl(settings.APNS_ENDPOINT.rstrip("/"), ca)
    # Warm both paths once (imports, our connection and provider token; theirs makes a new
    # client and connections on every call, as shipped).
    run_ours(4, control)
    run_dpn(4, control)
    rows = []
    for n in sizes:
        samples = {name: [] for name in impls.split(",")}
        for _ in range(repeats):
            if "ours" in samples:
                samples["ours"].append(run_ours(n, control))
            if "django-push-notifications" in samples:
                samples["django-push-notifications"].append(run_dpn(n, control))
        for name, runs in samples.items():
            row = summarize(name, n, runs)
            rows.append(row)
            print(f"apns  {name:>26s} tokens={n:<5d} accepted {row['ok']}/{n}, last {row['last_ms']} ms, "
                  f"{row['msgs_per_s']} msg/s, per push p50/p99 {row['push_p50_ms']}/{row['push_p99_ms']} ms, "
                  f"sender CPU {row['cpu_us_per_push']} µs/push (median of {len(runs)})"
                  + (f"; errors: {row['errors']}" if row["errors"] else ""), flush=True)
    apns.shutdown()
    control.close()
    with open(out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1].split(",")], int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
