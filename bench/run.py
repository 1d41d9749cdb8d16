"""`python -m bench run --profile quick|full`: every benchmark, then the report."""
from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common, report, ringrun, webhook
from bench.common import RAW, ROOT, Database, Server, log

PROFILES = {
    "quick": {
        "configs": [{"name": "embedded", "db": "sqlite", "redis": False, "workers": 1}],
        "sockets": [100, 1000], "rates": [1, 10], "duration": 10, "fcm_sizes": [1, 10, 100], "fcm_repeats": 3,
        "apns_sizes": [100, 1000], "apns_repeats": 3, "webhook_rounds": 5,
    },
    "full": {
        "configs": [{"name": "embedded", "db": "sqlite", "redis": False, "workers": 1},
                    {"name": "pg+redis 1 worker", "db": "postgres", "redis": True, "workers": 1},
                    {"name": "pg+redis 2 workers", "db": "postgres", "redis": True, "workers": 2}],
        "sockets": [100, 1000, 5000], "rates": [1, 10, 50, 100], "duration": 10,
        "fcm_sizes": [1, 10, 100, 1000], "fcm_repeats": 3, "apns_sizes": [100, 1000], "apns_repeats": 5,
        "webhook_rounds": 10,
    },
}


def run(profile: str, only: set[str] | None = None, overrides: dict | None = None) -> Path:
    spec = dict(PROFILES[profile])
    for key, value in (overrides or {}).items():
        if key == "configs" and value:
            spec["configs"] = [c for c in spec["configs"] if c["name"] in value]
        elif value:
            spec[key] = value
    RAW.mkdir(parents=True, exist_ok=True)
    common.pin_self_to_client_cores()
    nofile = common.raise_nofile(65536)
    tmp = Path(tempfile.mkdtemp(prefix="callpull-bench-"))
    started = time.time()
    argv = shlex.join(sys.argv[1:]) if sys.argv[0].endswith(("bench/__main__.py", "-m")) else f"run --profile {profile}"
    meta = {"profile": profile, "overrides": {k: v for k, v in (overrides or {}).items() if v},
            "command": f".venv/bin/python -m bench {argv}",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "load_start": common.load(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "nofile": nofile,
            "pinning": ("server processes (uvicorn, 1 worker), the fake FCM and the fake APNs on core 0; the "
                        "benchmark client and the FCM and APNs senders on core 1; 2-worker servers, PostgreSQL and "
                        "Redis unpinned")
            if (os.cpu_count() or 1) > 1 else "none (1 CPU)"}
    log(f"bench {profile}: {os.cpu_count()} CPUs, load {meta['load_start']}, open files {nofile}, tmp {tmp}")
    results = {"meta": meta, "ring": [], "memory": [], "fcm": [], "apns": [], "webhook": None}
    completed = False

    def stop(signum, frame):  # SIGTERM: stop servers (finally blocks) and keep what was measured
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    try:
        if not only or "ring" in only:
            for config in spec["configs"]:
                out = ringrun.run_config(config, spec["sockets"], spec["rates"], spec["duration"], tmp,
                                         memory_deflate=True)
                results["ring"].extend(out["cells"])
                results["memory"].extend(out["memory"])
        if not only or "fcm" in only:
            results["fcm"] = run_fcm(spec["fcm_sizes"], spec["fcm_repeats"], tmp)
        if not only or "apns" in only:
            results["apns"] = run_apns_conditions(spec["apns_sizes"], spec["apns_repeats"], tmp)
        if not only or "webhook" in only:
            results["webhook"] = run_webhook(spec["webhook_rounds"], tmp)
        completed = True
    finally:
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta["load_end"] = common.load()
        meta["duration_s"] = round(time.time() - started, 1)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
        meta["completed"] = completed
        (RAW / f"{stamp}-{profile}.json").write_text(json.dumps(results))
        if completed:
            path = report.write(results, stamp)
        else:  # an interrupted run never replaces latest.*
            path = RAW / f"{stamp}-{profile}-partial.md"
            path.write_text(report.markdown(results))
        log(f"done in {meta['duration_s']} s: {path} (raw samples: {RAW / (stamp + '-' + profile + '.json')})")
    return path


def run_fcm(sizes: list[int], repeats: int, tmp: Path) -> list[dict]:
    env = common.server_env(f"sqlite:///{tmp / 'fcm-main.sqlite3'}", None)
    pin = common.SERVER_CORES if common.NCPU > 1 else None
    fake, url, creds = common.start_fake_fcm(tmp, env, latency_ms=20, pin=pin)
    try:
        out = tmp / "fcm.json"
        bench_env = {**env, "DJANGO_SETTINGS_MODULE": "bench.fcm_settings", "BENCH_FCM_DB": str(tmp / "fcm.sqlite3"),
                     "FCM_CREDENTIALS_FILE": str(creds), "FCM_ENDPOINT": url,
                     "FCM_HTTP_TIMEOUT_SECONDS": "10", "FCM_RETRY_BUDGET_SECONDS": "10"}
        done = subprocess.run([sys.executable, "-m", "bench.fcmbench", ",".join(map(str, sizes)), str(repeats),
                               str(out)], cwd=ROOT, env=bench_env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError("fcm benchmark failed")
        return json.loads(out.read_text())
    finally:
        common.stop_process(fake)


def run_apns(sizes: list[int], repeats: int, tmp: Path, latency_ms: float = 20, *, connect_latency_ms: float = 0,
             impls: str = "", py_spy: Path | None = None) -> list[dict]:
    """bench/apnsbench.py in a subprocess (this process's core) against `manage.py fakeapns
    --tls` in its own process (the server core): ours vs django-push-notifications
    (`impls`: a subset; `py_spy`: record the subprocess with py-spy into this raw file).
    The fake delays every answer by `latency_ms` and every new connection's handshake by
    `connect_latency_ms`; each row carries both, and `setup_ms`: a new TLS connection's
    set-up as measured from this process against that fake (median of 5)."""
    env = common.server_env(f"sqlite:///{tmp / 'apns-main.sqlite3'}", None)
    pin = common.SERVER_CORES if common.NCPU > 1 else None
    fake, apns_settings = common.start_fake_apns(tmp, env, latency_ms=latency_ms,
                                                 connect_latency_ms=connect_latency_ms, tls=True, pin=pin)
    try:
        control = common.FakeAPNsControl(apns_settings["APNS_ENDPOINT"], Path(apns_settings["APNS_CA_FILE"]))
        try:
            setup_ms = control.setup_ms()
        finally:
            control.close()
        out = tmp / f"apns-{latency_ms:g}-{connect_latency_ms:g}.json"
        bench_env = {**env, **apns_settings, "DJANGO_SETTINGS_MODULE": "bench.apns_settings",
                     "BENCH_APNS_DB": str(tmp / "apns-dpn.sqlite3"), "APNS_HTTP_TIMEOUT_SECONDS": "10",
                     # aioapns (django-push-notifications) trusts what its default TLS context does
                     "SSL_CERT_FILE": apns_settings["APNS_CA_FILE"]}
        command = [sys.executable, "-m", "bench.apnsbench", ",".join(map(str, sizes)), str(repeats), str(out)]
        command += [impls] if impls else []
        if py_spy:
            command = [str(Path(sys.executable).parent / "py-spy"), "record", "--threads", "--format", "raw",
                       "--rate", "250", "--output", str(py_spy), "--", *command]
        log(f"apns fan-out: answers +{latency_ms:g} ms, connection set-up +{connect_latency_ms:g} ms "
            f"(a new TLS connection measured at {setup_ms} ms)")
        done = subprocess.run(command, cwd=ROOT, env=bench_env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError("apns benchmark failed")
        rows = json.loads(out.read_text())
    finally:
        common.stop_process(fake)
    for row in rows:
        row.update(latency_ms=latency_ms, connect_latency_ms=connect_latency_ms, setup_ms=setup_ms)
    return rows


def run_apns_conditions(sizes: list[int], repeats: int, tmp: Path, latency_ms: float = 20,
                        connect_latency_ms: float | None = None) -> list[dict]:
    """The APNs fan-out under both conditions, one after the other, each against a fake of
    its own: (a) every answer `latency_ms` late, connections set up at once; (b) the same,
    and every new connection's handshake `connect_latency_ms` late (default: `latency_ms`,
    one round trip; TCP's own is not modelled, so (b) is conservative for a sender that
    opens connections). The rows of both, (a)'s first."""
    connect = latency_ms if connect_latency_ms is None else connect_latency_ms
    if connect <= 0:
        raise ValueError("condition (b) needs a connection set-up latency above 0")
    return (run_apns(sizes, repeats, tmp, latency_ms, connect_latency_ms=0)
            + run_apns(sizes, repeats, tmp, latency_ms, connect_latency_ms=connect))


def run_apns_alone(sizes: list[int], repeats: int, latency_ms: float = 20, connect_latency_ms: float | None = None,
                   results_dir: Path = common.RESULTS, profile: bool = False) -> Path:
    """`python -m bench apns`: the APNs fan-out on its own, both conditions
    (run_apns_conditions) → `results_dir`/apns.{json,md}; with `profile`, ours alone under
    py-spy, answers `latency_ms` late and connections at once → `results_dir`/apns-profile.md."""
    common.pin_self_to_client_cores()
    tmp = Path(tempfile.mkdtemp(prefix="callpull-apns-"))
    if profile:
        return _profile_apns(sizes, repeats, latency_ms, results_dir, tmp)
    connect = latency_ms if connect_latency_ms is None else connect_latency_ms
    started = time.time()
    meta = {"command": ".venv/bin/python -m bench " + shlex.join(sys.argv[1:]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "load_start": common.load(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "latency_ms": latency_ms,
            "connect_latency_ms": connect}
    rows = run_apns_conditions(sizes, repeats, tmp, latency_ms, connect)
    meta["load_end"], meta["duration_s"] = common.load(), round(time.time() - started, 1)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "apns.json").write_text(json.dumps({"meta": meta, "apns": rows}, indent=1))
    path = results_dir / "apns.md"
    path.write_text(f"# APNs fan-out: ours vs django-push-notifications\n\nCommand: `{meta['command']}`. Started "
                    f"{meta['started']}, took {meta['duration_s']} s on {meta['cpus']} CPUs; load average at start "
                    f"{meta['load_start']}, at end {meta['load_end']} (shared machine: compare within a run).\n\n"
                    + report.apns_table(rows) + "\n")
    log(f"wrote {path}")
    return path


def _profile_apns(sizes: list[int], repeats: int, latency_ms: float, results_dir: Path, tmp: Path) -> Path:
    raw = tmp / "apns-py-spy.txt"
    command = ".venv/bin/python -m bench " + shlex.join(sys.argv[1:])
    rows = run_apns(sizes, repeats, tmp, latency_ms, impls="ours", py_spy=raw)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "apns-profile.md"
    path.write_text(f"# Where our APNs sender's time goes (py-spy)\n\nCommand: `{command}` "
                    f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, load {common.load()}): "
                    f"`notifications.apns.send_many` alone (answers +{latency_ms:g} ms, connection set-up "
                    "not delayed: ours sets its one connection up before the timed part), " + ", ".join(
                        f"{r['tokens']} tokens: {r['msgs_per_s']} msg/s, {r['cpu_us_per_push']} µs CPU per push"
                        for r in rows) + f", {repeats} repeats each, under `py-spy record --threads` "
                    "(250 Hz).\n\n" + report.py_spy_summary(str(raw)) + "\n")
    log(f"wrote {path}")
    return path


def run_webhook(rounds: int, tmp: Path, concurrency: int = 20) -> dict:
    db = Database("sqlite", tmp)
    # As production runs: DEBUG off and the provider's credentials, so no simulator (the
    # held callers' webhooks never call the provider's REST API).
    env = common.server_env(db.url, None, production=True, CALL_RING_SECONDS=60, PRESENCE_STALE_SECONDS=600,
                            CALL_FORWARD_WAIT_SECONDS=60)
    common.migrate(env)
    seed = common.seed(env, concurrency, 1, "immediate", tmp / "seed-webhook.json", prefix="w")
    server = Server("callpull.asgi:application", env, tmp / "webhook.log").start()
    try:
        return asyncio.run(webhook.run(server, seed, concurrency=concurrency, rounds=rounds))
    finally:
        server.stop()
        db.close()
