"""Ring report latency while a push service is healthy, slow or failing: FCM (issue 6:
"unaffected (within 10%) when FCM answers slowly or fails") or APNs (issue 17: "slow and
failing APNs never delay the ring report (HTTP p99 within 10% of the healthy figure)").

    .venv/bin/python -m bench fcmring [--push fcm|apns] [--sockets 1000] [--rates 10,50] [--duration 10]

Embedded configuration (SQLite, in-memory layer, `manage.py serve`, DEBUG off), the
push service's stand-in in its own process with 20 ms latency: `manage.py fakefcm`, or
`manage.py fakeapns --tls` (HTTP/2 over TLS, the server trusting its CA through
APNS_CA_FILE). Every user has a handset and four tablets on WebSockets that ack, and two
of the tablets also carry a push token (an FCM token; with `--push apns`, iPads with a
PushKit `apns_voip_token`), so every ring sends two pushes (VoIP pushes for APNs) besides
its four frames. The same fleet and rates run once per mode: healthy, slow (every request
delayed 1 s), failing (every request answered 503) and, for APNs, timing out (no answer:
the sender's APNS_HTTP_TIMEOUT_SECONDS, 3 s, ends each try). Results:
bench/results/fcm-ring.{json,md} or bench/results/apns-ring.{json,md}.

Cells are kept apart: no call ends during the run (CALL_RING_SECONDS and
CALL_FORWARD_WAIT_SECONDS are an hour: a report answered `reject` keeps its ring deadline,
and the sweeper would send its `call.ended`, with two pushes, into a later cell), and after each
cell the benchmark waits SETTLE_SECONDS, longer than an FCM push can keep retrying (retry
budget + one request timeout), and then until the server's CPU is back to idle (a
saturated cell leaves reports queued), before the next one starts. An APNs push is retried
until its ring deadline (the hour), so pushes a failing cell left waiting behind APNs'
circuit breaker would still be there in the next cell: after each mode the service is made
healthy again and the benchmark waits as after a cell (they go out then, outside any cell;
their CPU is in no cell's CPU per ring), and the next mode starts only once every push
started so far has its final outcome by the server's /metrics (`callpull_pushes_total`):
with the hour-long deadline a push that backed off during a failing mode could otherwise be
retried, and counted, inside a later cell. Besides latency, each cell reports what
depends least on the machine's other load: the server's CPU per ring over the cell and its
settling time (every push's retries and results included), less the server's idle CPU
(1,000 sockets, the sweeper) over as long, and the requests the stand-in received per push.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import common
from bench.common import RESULTS, Database, Server, log, percentiles
from bench.ringbench import Fleet, log_cell, ring_cell

# Longer than a push may keep retrying: FCM_RETRY_BUDGET_SECONDS (4) + FCM_HTTP_TIMEOUT_SECONDS (3) + 1;
# for APNs, longer than one try (APNS_HTTP_TIMEOUT_SECONDS, 3) and the backoff after it.
SETTLE_SECONDS = 8.0
IDLE_SECONDS = 5.0
PUSHES_PER_RING = 2
# After a failing mode: how long every push it started may take to reach its final outcome once
# the service is healthy again (pushes back off up to the last retry's delay, tens of seconds
# with an hour-long ring deadline).
DRAIN_LIMIT_SECONDS = 300.0
METRICS_TOKEN = "fcmring-metrics-token-" + "0" * 16


class FakeFCMControl:
    """The fake FCM's control paths (HTTP/1.1)."""

    def __init__(self, url: str):
        self.url = url

    def clear_rules(self) -> None:
        httpx.delete(self.url + "/_fake/rules", trust_env=False)

    def add_rule(self, rule: dict) -> None:
        httpx.post(self.url + "/_fake/rules", json=rule, trust_env=False).raise_for_status()

    def requests(self) -> int:
        return httpx.get(self.url + "/_fake", trust_env=False).json()["requests"]

    def close(self) -> None:
        pass


class FakeAPNsRingControl(common.FakeAPNsControl):
    def requests(self) -> int:
        return self.counts()["requests"]


@dataclass(frozen=True)
class PushService:
    name: str    # the key of each cell's mode, and the results' file name: fcm-ring.*, apns-ring.*
    label: str
    modes: dict  # mode name → the stand-in's rule (None: healthy)
    seed_variable: str  # bench/seed.py: how many tablets of each user carry this service's token

    def start(self, tmp: Path, base_env: dict) -> tuple[subprocess.Popen, dict, object]:
        """The stand-in in its own process: (process, the server's settings for it, its control)."""
        if self.name == "fcm":
            fake, url, creds = common.start_fake_fcm(tmp, base_env)
            return fake, {"FCM_CREDENTIALS_FILE": str(creds), "FCM_ENDPOINT": url}, FakeFCMControl(url)
        fake, settings = common.start_fake_apns(tmp, base_env, latency_ms=20, tls=True)
        return fake, {**settings, "APNS_HTTP_TIMEOUT_SECONDS": "3"}, \
            FakeAPNsRingControl(settings["APNS_ENDPOINT"], Path(settings["APNS_CA_FILE"]))


SERVICES = {
    "fcm": PushService("fcm", "FCM", {
        "healthy": None,
        "slow (+1 s per request)": {"delay_ms": 1000},
        "failing (503 to every request)": {"fail": "unavailable"},
    }, "BENCH_SEED_FCM_PER_USER"),
    "apns": PushService("apns", "APNs", {
        "healthy": None,
        "slow (+1 s per request)": {"delay_ms": 1000},
        "failing (503 to every request)": {"fail": "ServiceUnavailable"},
        "timing out (no answer to any request)": {"fail": "timeout"},
    }, "BENCH_SEED_APNS_PER_USER"),
}


async def _cells(server: Server, seed: list, control, service: PushService, rates: list[float],
                 duration: float, settle: float = SETTLE_SECONDS, repeats: int = 1) -> list[dict]:
    fleet = Fleet(server.ws_url, seed)
    await fleet.connect()
    log(f"{service.name}ring: {len(fleet.sockets)} sockets connected ({fleet.failed} failed)")
    cells = []
    # The server's CPU with the sockets connected and nothing ringing (pings, the sweeper),
    # subtracted from each cell's CPU per ring.
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(IDLE_SECONDS)
    idle_rate = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    log(f"{service.name}ring: idle server CPU {100 * idle_rate:.1f}%")
    started = 0  # pushes the cells so far started (PUSHES_PER_RING per ring)
    try:
        # With repeats, the modes take turns (healthy, slow, failing, …, healthy, slow, …) so that a
        # slow minute of the machine falls on every mode alike; `pooled` merges each mode's turns.
        for mode, rule in [item for _ in range(repeats) for item in service.modes.items()]:
            control.clear_rules()
            if rule:
                control.add_rule(rule)
            for rate in rates:
                cpu0, requests0, t0 = server.cpu_seconds(), control.requests(), time.monotonic()
                cell = await ring_cell(fleet, server.base_url, rate=rate, duration=max(duration, 20 / rate),
                                       server=server)
                cell.update({service.name: mode, "mode": mode, "push": service.name, "sockets": len(fleet.sockets),
                             "load": common.load()})
                await asyncio.sleep(settle)
                await _until_idle(server, idle_rate)
                rings = max(1, cell["rings_ok"])
                busy = server.cpu_seconds() - cpu0 - idle_rate * (time.monotonic() - t0)
                cell["server_cpu_ms_per_ring"] = round(busy * 1000 / rings, 2)
                cell["server_idle_cpu_pct"] = round(100 * idle_rate, 2)
                cell[f"{service.name}_requests_per_push"] = round((control.requests() - requests0)
                                                                  / (rings * PUSHES_PER_RING), 2)
                started += cell["rings_ok"] * PUSHES_PER_RING
                log_cell(f"{service.name}ring {mode:>38s} rate={rate:g}/s", cell)
                cells.append(cell)
            # The service is back before the next mode: pushes held behind the breaker or backing
            # off (retried until their ring deadline) go out now, not inside the next mode's cells,
            # and the next mode starts only once every push so far has its outcome.
            control.clear_rules()
            drain = await _drained(server, service.name, started)
            if rule:
                await asyncio.sleep(settle)
                await _until_idle(server, idle_rate)
            for cell in cells[-len(rates):]:
                cell["drained_after_s"] = drain
    finally:
        control.clear_rules()
        await fleet.close()
    return pooled(cells, service.name) if repeats > 1 else cells


def pooled(cells: list[dict], name: str) -> list[dict]:
    """One cell per (mode, rate) from its turns: their samples together (percentiles of all the
    rings), counts added up, CPU figures and load averaged; `turns` keeps each turn's p99."""
    groups: dict = {}
    for cell in cells:
        groups.setdefault((cell[name], cell["rate"]), []).append(cell)
    merged = []
    for turns in groups.values():
        cell = dict(turns[0])
        http = [x for turn in turns for x in turn["raw"]["http_ms"]]
        frames = [x for turn in turns for x in turn["raw"]["frame_ms"]]
        cell.update(http_ms=percentiles(http), frame_ms=percentiles(frames),
                    raw={"http_ms": http, "frame_ms": frames}, turns=[turn["http_ms"]["p99"] for turn in turns])
        for key in ("rings_sent", "rings_ok", "frames_expected", "frames_received", "frames_lost"):
            cell[key] = sum(turn[key] for turn in turns)
        for key in ("server_cpu_pct", "server_cpu_ms_per_ring", f"{name}_requests_per_push"):
            values = [turn[key] for turn in turns if turn.get(key) is not None]
            cell[key] = round(sum(values) / len(values), 2) if values else None
        cell["load"] = [round(sum(turn["load"][i] for turn in turns) / len(turns), 2) for i in range(3)]
        cell["drained_after_s"] = [turn.get("drained_after_s") for turn in turns]
        merged.append(cell)
    return merged


def pushes_done(server: Server, transport: str) -> int:
    """Pushes over `transport` that reached their final outcome, from the server's /metrics."""
    response = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                         trust_env=False, timeout=10)
    response.raise_for_status()
    return int(sum(sample.value for family in text_string_to_metric_families(response.text)
                   for sample in family.samples
                   if sample.name == "callpull_pushes_total" and sample.labels.get("transport") == transport))


async def _drained(server: Server, transport: str, expected: int, limit: float = DRAIN_LIMIT_SECONDS) -> float:
    """Wait until every push started so far (`expected`) has its final outcome; the seconds it took.
    A push still retrying would otherwise be sent, and pay its CPU, inside a later mode's cells."""
    t0 = time.monotonic()
    while (done := pushes_done(server, transport)) < expected:
        if time.monotonic() - t0 > limit:
            log(f"ring: {expected - done} {transport} pushes still pending after {limit:g} s")
            break
        await asyncio.sleep(1.0)
    return round(time.monotonic() - t0, 1)


async def _until_idle(server: Server, idle_rate: float, limit: float = 60.0) -> None:
    """Wait (up to `limit` s) until the server is back to its idle CPU: a saturated cell
    leaves rings queued that would otherwise be served, and pushed, in the next cell."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(1.0)
        if (server.cpu_seconds() - cpu0) / (time.monotonic() - t0) <= idle_rate + 0.05:
            return
    log("ring: the server did not get back to idle before the next cell")


def markdown(cells: list[dict], meta: dict) -> str:
    service = SERVICES[meta.get("push", "fcm")]
    pushes = "2 VoIP pushes (to iPads' PushKit tokens)" if service.name == "apns" else "2 pushes"
    lines = [f"# Ring report latency with {service.label} healthy, slow and failing", "",
             f"Command: `{meta['command']}`. {meta['started']}, {meta['sockets']} sockets, {pushes} and 4 frames "
             f"per ring, load at start {meta['load_start']}. *Server CPU per ring*: the server process's CPU over "
             f"the cell and after it ({meta.get('settle_s', SETTLE_SECONDS):g} s, then until it is idle again: "
             "every retry and result of its pushes), less its idle CPU over as long (measured before the first "
             "cell), per ring; "
             f"*{service.label} requests per push*: send requests the stand-in answered, per push; "
             "*drained after*: once a mode's cells are over the service is healthy again and the next mode "
             "waits until every push started so far has its final outcome (the server's /metrics), so no "
             "push of a failing mode is retried inside a later cell; how long that took (s)."
             + (f" {meta['repeats']} turns of every mode, interleaved; each row pools its turns' rings "
                "(*p99 per turn* lists each turn's own)." if meta.get("repeats", 1) > 1 else ""), "",
             f"| {service.label} | rate | rings ok/sent | HTTP p50 / p95 / p99 / max (ms) | p99 vs healthy "
             f"| frame p50 / p99 (ms) | frames lost | server CPU | server CPU per ring (ms) "
             f"| {service.label} requests per push | load 1m | p99 per turn (ms) | p99 per turn vs healthy's "
             "| drained after (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    healthy = {c["rate"]: c["http_ms"]["p99"] for c in cells if c[service.name] == "healthy"}
    healthy_turns = {c["rate"]: c.get("turns", []) for c in cells if c[service.name] == "healthy"}
    for c in cells:
        h, f = c["http_ms"], c["frame_ms"]
        base = healthy.get(c["rate"])
        ratio = f"{h['p99'] / base:.2f}x" if base and h["p99"] else "–"
        lines.append(f"| {c[service.name]} | {c['rate']:g}/s | {c['rings_ok']}/{c['rings_sent']} | "
                     f"{h['p50']} / {h['p95']} / {h['p99']} / {h['max']} | {ratio} | {f['p50']} / {f['p99']} | "
                     f"{c['frames_lost']} | "
                     f"{c['server_cpu_pct']}% | {c.get('server_cpu_ms_per_ring', '–')} | "
                     f"{c.get(service.name + '_requests_per_push', '–')} | {c['load'][0]} | "
                     f"{', '.join(f'{p:g}' for p in c.get('turns', [])) or '–'} | "
                     f"{_turn_ratios(c.get('turns', []), healthy_turns.get(c['rate'], []))} | "
                     f"{_listed(c.get('drained_after_s'))} |")
    return "\n".join(lines) + "\n"


def _turn_ratios(turns: list[float], healthy: list[float]) -> str:
    """Each turn's p99 against the healthy mode's p99 of the same turn (they ran minutes apart)."""
    pairs = [f"{p / h:.2f}x" for p, h in zip(turns, healthy, strict=False) if h]
    return ", ".join(pairs) or "–"


def _listed(value) -> str:
    if value is None:
        return "–"
    return ", ".join(f"{v:g}" for v in value if v is not None) if isinstance(value, list) else f"{value:g}"


def run(sockets: int, rates: list[float], duration: float, push: str = "fcm", results: Path = RESULTS,
        settle: float = SETTLE_SECONDS, modes: list[str] | None = None, repeats: int = 1) -> Path:
    service = SERVICES[push]
    if modes:  # a subset, by first word: healthy, slow, failing, timing
        unknown = set(modes) - {name.split(" ")[0] for name in service.modes}
        if unknown:
            raise SystemExit(f"unknown modes for {push}: {', '.join(sorted(unknown))}")
        service = PushService(service.name, service.label, {name: rule for name, rule in service.modes.items()
                                                             if name.split(" ")[0] in modes}, service.seed_variable)
    common.pin_self_to_client_cores()
    common.raise_nofile(65536)
    tmp = Path(tempfile.mkdtemp(prefix=f"callpull-{push}ring-"))
    meta = {"command": ".venv/bin/python -m bench " + " ".join(sys.argv[1:]), "sockets": sockets, "push": push,
            "settle_s": settle, "repeats": repeats,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_start": common.load()}
    db = Database("sqlite", tmp)
    base_env = common.server_env(db.url, None, production=True, RATE_LIMIT_SIGNUP=100000, CALL_RING_SECONDS=3600,
                                 CALL_FORWARD_WAIT_SECONDS=3600, PRESENCE_STALE_SECONDS=600,
                                 METRICS_TOKEN=METRICS_TOKEN)
    fake, service_env, control = service.start(tmp, base_env)
    try:
        env = {**base_env, **service_env}
        common.migrate(env)
        users = max(1, sockets // 5)
        seed = common.seed({**env, service.seed_variable: "2"}, users, 4, "immediate", tmp / "seed.json")
        server = Server("callpull.asgi:application", env, tmp / "server.log").start()
        try:
            cells = asyncio.run(_cells(server, seed, control, service, rates, duration, settle, repeats))
        finally:
            server.stop()
    finally:
        control.close()
        common.stop_process(fake)
        db.close()
    for cell in cells:
        cell.pop("raw", None)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{push}-ring.json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
    path = results / f"{push}-ring.md"
    path.write_text(markdown(cells, meta))
    log(f"wrote {path}")
    return path


def add_arguments(parser) -> None:
    parser.add_argument("--push", choices=sorted(SERVICES), default="fcm",
                        help="the push service made slow and failing (default fcm; apns: iPads with VoIP tokens)")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rates", default="10,50")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="turns of every mode, interleaved; each (mode, rate) row pools its turns' rings")
    parser.add_argument("--modes", default="", help="comma-separated subset by first word: healthy,slow,failing"
                        " (and timing for apns); default all")


def command(args) -> int:
    print(run(args.sockets, [float(x) for x in args.rates.split(",")], args.duration, args.push,
              modes=[m for m in args.modes.split(",") if m], repeats=args.repeats).read_text())
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    raise SystemExit(command(parser.parse_args()))
