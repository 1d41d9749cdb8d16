"""Ring report latency while FCM is healthy, slow or failing (issue 6: "unaffected
(within 10%) when FCM answers slowly or fails").

    .venv/bin/python -m bench fcmring [--sockets 1000] [--rates 10,50] [--duration 10]

Embedded configuration (SQLite, in-memory layer, `manage.py serve`, DEBUG off), the
fake FCM (`manage.py fakefcm`, 20 ms latency) in its own process; every user has a
handset and four tablets on WebSockets that ack, and two of the tablets also carry an
FCM token, so every ring sends two pushes besides its four frames. The same fleet and
rates run three times: FCM healthy, FCM slow (every request delayed 1 s) and FCM failing
(every request answered 503). Results: bench/results/fcm-ring.{json,md}.

Cells are kept apart: no call ends during the run (CALL_RING_SECONDS and
CALL_FORWARD_WAIT_SECONDS are an hour: a report answered `reject` keeps its ring deadline,
and the sweeper would send its `call.ended`, with two pushes, into a later cell), and after each
cell the benchmark waits SETTLE_SECONDS, longer than a push can keep retrying (retry
budget + one request timeout), and then until the server's CPU is back to idle (a
saturated cell leaves reports queued), before the next one starts. Besides latency, each cell
reports what depends least on the machine's other load: the server's CPU per ring over
the cell and its settling time (every push's retries and results included), less the
server's idle CPU (1,000 sockets, the sweeper) over as long, and the requests the fake
FCM received per push.
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import common
from bench.common import RESULTS, Database, Server, log
from bench.ringbench import Fleet, log_cell, ring_cell

# Longer than a push may keep retrying: FCM_RETRY_BUDGET_SECONDS (4) + FCM_HTTP_TIMEOUT_SECONDS (3) + 1.
SETTLE_SECONDS = 8.0
IDLE_SECONDS = 5.0
PUSHES_PER_RING = 2

MODES = {
    "healthy": None,
    "slow (+1 s per request)": {"delay_ms": 1000},
    "failing (503 to every request)": {"fail": "unavailable"},
}


async def _cells(server: Server, seed: list, fake_url: str, rates: list[float], duration: float) -> list[dict]:
    fleet = Fleet(server.ws_url, seed)
    await fleet.connect()
    log(f"fcmring: {len(fleet.sockets)} sockets connected ({fleet.failed} failed)")
    cells = []
    # The server's CPU with the sockets connected and nothing ringing (pings, the sweeper),
    # subtracted from each cell's CPU per ring.
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(IDLE_SECONDS)
    idle_rate = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    log(f"fcmring: idle server CPU {100 * idle_rate:.1f}%")
    try:
        for mode, rule in MODES.items():
            httpx.delete(fake_url + "/_fake/rules", trust_env=False)
            if rule:
                httpx.post(fake_url + "/_fake/rules", json=rule, trust_env=False).raise_for_status()
            for rate in rates:
                cpu0, requests0, t0 = server.cpu_seconds(), _fake_requests(fake_url), time.monotonic()
                cell = await ring_cell(fleet, server.base_url, rate=rate, duration=max(duration, 20 / rate),
                                       server=server)
                cell.update({"fcm": mode, "sockets": len(fleet.sockets), "load": common.load()})
                await asyncio.sleep(SETTLE_SECONDS)
                await _until_idle(server, idle_rate)
                rings = max(1, cell["rings_ok"])
                busy = server.cpu_seconds() - cpu0 - idle_rate * (time.monotonic() - t0)
                cell["server_cpu_ms_per_ring"] = round(busy * 1000 / rings, 2)
                cell["server_idle_cpu_pct"] = round(100 * idle_rate, 2)
                cell["fcm_requests_per_push"] = round((_fake_requests(fake_url) - requests0)
                                                      / (rings * PUSHES_PER_RING), 2)
                log_cell(f"fcmring {mode:>30s} rate={rate:g}/s", cell)
                cells.append(cell)
    finally:
        httpx.delete(fake_url + "/_fake/rules", trust_env=False)
        await fleet.close()
    return cells


async def _until_idle(server: Server, idle_rate: float, limit: float = 60.0) -> None:
    """Wait (up to `limit` s) until the server is back to its idle CPU: a saturated cell
    leaves rings queued that would otherwise be served, and pushed, in the next cell."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(1.0)
        if (server.cpu_seconds() - cpu0) / (time.monotonic() - t0) <= idle_rate + 0.05:
            return
    log("fcmring: the server did not get back to idle before the next cell")


def _fake_requests(fake_url: str) -> int:
    return httpx.get(fake_url + "/_fake", trust_env=False).json()["requests"]


def markdown(cells: list[dict], meta: dict) -> str:
    lines = ["# Ring report latency with FCM healthy, slow and failing", "",
             f"Command: `{meta['command']}`. {meta['started']}, {meta['sockets']} sockets, 2 pushes and 4 frames "
             f"per ring, load at start {meta['load_start']}. *Server CPU per ring*: the server process's CPU over "
             f"the cell and after it ({SETTLE_SECONDS:g} s, then until it is idle again: every retry and result of "
             "its pushes), less its idle "
             "CPU over as long (measured before the first cell), per ring; "
             "*FCM requests per push*: send requests the fake received, per push.", "",
             "| FCM | rate | rings ok/sent | HTTP p50 / p95 / p99 / max (ms) | p99 vs healthy | frame p50 / p99 (ms) "
             "| frames lost | server CPU | server CPU per ring (ms) | FCM requests per push | load 1m |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    healthy = {c["rate"]: c["http_ms"]["p99"] for c in cells if c["fcm"] == "healthy"}
    for c in cells:
        h, f = c["http_ms"], c["frame_ms"]
        base = healthy.get(c["rate"])
        ratio = f"{h['p99'] / base:.2f}x" if base and h["p99"] else "–"
        lines.append(f"| {c['fcm']} | {c['rate']:g}/s | {c['rings_ok']}/{c['rings_sent']} | {h['p50']} / {h['p95']} / "
                     f"{h['p99']} / {h['max']} | {ratio} | {f['p50']} / {f['p99']} | {c['frames_lost']} | "
                     f"{c['server_cpu_pct']}% | {c.get('server_cpu_ms_per_ring', '–')} | "
                     f"{c.get('fcm_requests_per_push', '–')} | {c['load'][0]} |")
    return "\n".join(lines) + "\n"


def run(sockets: int, rates: list[float], duration: float) -> Path:
    common.pin_self_to_client_cores()
    common.raise_nofile(65536)
    tmp = Path(tempfile.mkdtemp(prefix="callpull-fcmring-"))
    meta = {"command": ".venv/bin/python -m bench " + " ".join(sys.argv[1:]), "sockets": sockets,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_start": common.load()}
    db = Database("sqlite", tmp)
    base_env = common.server_env(db.url, None, production=True, RATE_LIMIT_SIGNUP=100000, CALL_RING_SECONDS=3600,
                                 CALL_FORWARD_WAIT_SECONDS=3600, PRESENCE_STALE_SECONDS=600)
    fake, fake_url, creds = common.start_fake_fcm(tmp, base_env)
    try:
        env = {**base_env, "FCM_CREDENTIALS_FILE": str(creds), "FCM_ENDPOINT": fake_url}
        common.migrate(env)
        users = max(1, sockets // 5)
        seed = common.seed({**env, "BENCH_SEED_FCM_PER_USER": "2"}, users, 4, "immediate", tmp / "seed.json")
        server = Server("callpull.asgi:application", env, tmp / "server.log").start()
        try:
            cells = asyncio.run(_cells(server, seed, fake_url, rates, duration))
        finally:
            server.stop()
    finally:
        common.stop_process(fake)
        db.close()
    for cell in cells:
        cell.pop("raw", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fcm-ring.json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
    path = RESULTS / "fcm-ring.md"
    path.write_text(markdown(cells, meta))
    log(f"wrote {path}")
    return path


def add_arguments(parser) -> None:
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rates", default="10,50")
    parser.add_argument("--duration", type=float, default=10.0)


def command(args) -> int:
    print(run(args.sockets, [float(x) for x in args.rates.split(",")], args.duration).read_text())
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    raise SystemExit(command(parser.parse_args()))
