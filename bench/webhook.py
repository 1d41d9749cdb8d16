"""Voice-webhook latency under concurrent forwarded calls.

20 users (a handset with an active line on policy `immediate`, one tablet on its
WebSocket). Each round: every handset reports a ring (instruction `reject`), then
the provider's 20 voice webhooks for those forwarded calls are posted at once, each
signed with twilio's RequestValidator for the public URL, as the provider signs it.
The server runs as in production (DEBUG off, the provider's credentials set).
Besides latency: the server's CPU while the webhooks of a round were in flight,
per webhook (`server_cpu_ms_per_webhook`), which other processes' load hardly moves.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from twilio.request_validator import RequestValidator

from bench import common
from bench.common import SERVER_NUMBER, TWILIO_AUTH_TOKEN, log, percentiles
from bench.ringbench import Fleet


async def run(server, seed, *, concurrency: int, rounds: int) -> dict:
    async with aiohttp.ClientSession() as http:
        url = common.PUBLIC_BASE_URL + "/telephony/twilio/voice"
        account_sid = server.env["TWILIO_ACCOUNT_SID"]
        fleet = Fleet(server.ws_url, [{**h, "handset": h["handset"]} for h in seed])
        await fleet.connect()
        validator = RequestValidator(TWILIO_AUTH_TOKEN)
        latencies, statuses, matched, actions, burst_cpu = [], {}, 0, {}, 0.0
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        for round_ in range(rounds):
            households = seed[:concurrency]
            calls = []

            async def report(h, round_=round_, calls=calls):
                caller = f"+1557{round_:02d}{len(calls):03d}{uuid.uuid4().int % 100:02d}"
                calls.append((h, caller))
                async with http.post(server.base_url + "/api/v1/calls",
                                     json={"report_id": str(uuid.uuid4()), "line": h["line"], "caller": caller},
                                     headers={"Authorization": f"Bearer {h['handset']['token']}"}) as resp:
                    body = await resp.json()
                    action = body.get("instruction", {}).get("action")
                    actions[action] = actions.get(action, 0) + 1
            await asyncio.gather(*(report(h) for h in households))
            await asyncio.sleep(0.2)

            async def webhook(h, caller):
                nonlocal matched
                params = {"AccountSid": account_sid, "CallSid": "CA" + uuid.uuid4().hex, "From": caller,
                          "To": SERVER_NUMBER, "ForwardedFrom": h["line"], "CallStatus": "ringing",
                          "Direction": "inbound", "ApiVersion": "2010-04-01"}
                signature = validator.compute_signature(url, params)
                sent = time.perf_counter()
                async with http.post(server.base_url + "/telephony/twilio/voice", data=params,
                                     headers={"X-Twilio-Signature": signature}) as resp:
                    text = await resp.text()
                latencies.append((time.perf_counter() - sent) * 1000)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if "<Conference" in text:
                    matched += 1
            burst_cpu0 = server.cpu_seconds()
            await asyncio.gather(*(webhook(h, c) for h, c in calls))
            burst_cpu += server.cpu_seconds() - burst_cpu0
            await asyncio.sleep(0.3)
        cpu = server.cpu_seconds() - cpu0
        wall = time.monotonic() - t0
        await fleet.close()
    result = {"concurrency": concurrency, "rounds": rounds, "expected": concurrency * rounds,
              "received": len(latencies), "matched_conference": matched, "statuses": statuses,
              "report_actions": actions, "latency_ms": percentiles(latencies), "load": common.load(),
              "server_cpu_pct": round(100 * cpu / wall, 1),
              "server_cpu_ms_per_webhook": round(1000 * burst_cpu / max(1, len(latencies)), 2), "raw": latencies}
    lat = result["latency_ms"]
    log(f"hook  concurrency={concurrency} rounds={rounds}: {len(latencies)}/{concurrency * rounds} answered, "
        f"{matched} matched a call, statuses {statuses}, p50/p99 {lat['p50']}/{lat['p99']} ms, "
        f"server CPU {result['server_cpu_ms_per_webhook']} ms per webhook, load {result['load']}")
    return result
