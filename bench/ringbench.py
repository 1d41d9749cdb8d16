"""The ring path and its floor: N authenticated WebSockets, open-loop ring reports.

One asyncio client process (aiohttp for HTTP and WebSocket), pinned to the client
core. Every device acks each `call.ringing` as soon as it is read, as an app does.
Each ring report is stamped with time.time() just before the POST; every
`call.ringing` frame is stamped with time.time() as it is read; both on one host
clock. Frames are matched to their ring by the caller number (unique per ring).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import resource
import time
import uuid

import aiohttp

from bench.common import log, percentiles

_callers = itertools.count(1)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Fleet:
    """Every device of the seed on its own WebSocket; readers stamp ring frames."""

    def __init__(self, ws_url: str, seed: list[dict], *, compress: bool = False):
        self.ws_url, self.seed, self.compress = ws_url, seed, compress
        self.session: aiohttp.ClientSession | None = None
        self.sockets = []
        self.readers = []
        self.arrivals: dict[str, list[tuple[float, str]]] = {}
        self.frame_sizes: list[int] = []
        self.failed = 0
        self.closed_early = 0

    async def connect(self, concurrency: int = 50) -> float:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                             timeout=aiohttp.ClientTimeout(total=None))
        devices = []
        for household in self.seed:
            devices.append(household["handset"])
            devices.extend(household["secondaries"])
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def one(device):
            async with gate:
                for attempt in range(3):
                    try:
                        ws = await self.session.ws_connect(
                            self.ws_url, headers={"Authorization": f"Bearer {device['token']}"},
                            compress=15 if self.compress else 0, autoping=True, heartbeat=None,
                            timeout=aiohttp.ClientWSTimeout(ws_close=2), max_msg_size=0)
                        hello = await asyncio.wait_for(ws.receive(), 20)
                        if hello.type != aiohttp.WSMsgType.TEXT or '"hello"' not in hello.data:
                            await ws.close()
                            raise RuntimeError(f"no hello: {hello}")
                        self.sockets.append(ws)
                        self.readers.append(asyncio.create_task(self._read(ws, device["id"])))
                        return
                    except Exception:
                        await asyncio.sleep(0.2 * (attempt + 1))
                self.failed += 1

        await asyncio.gather(*(one(d) for d in devices))
        return time.monotonic() - started

    async def _read(self, ws, device_id: str) -> None:
        arrivals, sizes = self.arrivals, self.frame_sizes
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.time()
            data = message.data
            if '"call.ringing"' not in data:
                continue
            event = json.loads(data)
            arrivals.setdefault(event["call"]["caller"], []).append((now, device_id))
            # As an app does: acknowledge at once (the product's `immediate` waits for the
            # first receipt; the floor ignores it).
            await ws.send_str(f'{{"type":"ack","id":"{event["id"]}"}}')
            if len(sizes) < 200:
                sizes.append(len(data))
        self.closed_early += 1

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        await asyncio.gather(*self.readers, return_exceptions=True)
        if self.session:
            await self.session.close()


async def ring_cell(fleet: Fleet, base_url: str, *, rate: float, duration: float, server=None,
                    drain: float = 10.0) -> dict:
    """Open-loop ring reports at `rate`/s for `duration` s; latencies and losses."""
    households = fleet.seed
    count = max(1, int(rate * duration))
    rings = []
    session = fleet.session
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512),
                                 timeout=aiohttp.ClientTimeout(total=30))

    async def one(index: int, household: dict):
        caller = f"+1556{next(_callers):07d}"
        ring = {"caller": caller, "secondaries": len(household["secondaries"])}
        rings.append(ring)
        body = {"report_id": str(uuid.uuid4()), "line": household["line"], "caller": caller,
                "caller_name": "Bench Caller"}
        ring["sent"] = time.time()
        try:
            async with http.post(base_url + "/api/v1/calls", json=body,
                                 headers={"Authorization": f"Bearer {household['handset']['token']}"}) as resp:
                text = await resp.text()
                ring["answered"] = time.time()
                ring["status"] = resp.status
                if resp.status < 300:
                    try:
                        ring["action"] = json.loads(text).get("instruction", {}).get("action")
                    except ValueError:
                        pass
                else:
                    ring["error"] = text[:300]
        except Exception as error:  # noqa: BLE001
            ring["answered"] = time.time()
            ring["status"] = 0
            ring["error"] = repr(error)[:300]

    cpu0, server_cpu0 = _cpu(), (server.cpu_seconds() if server else 0.0)
    wall0 = time.monotonic()
    start = time.monotonic() + 0.05
    tasks = []
    behind = 0.0
    for index in range(count):
        target = start + index / rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            behind = max(behind, -delay)
        tasks.append(asyncio.create_task(one(index, households[index % len(households)])))
    await asyncio.gather(*tasks)
    # A report the client gave up on (status 0) may still have rung: its frames are expected too.
    expected_total = sum(r["secondaries"] for r in rings if 200 <= r.get("status", 0) < 300 or r.get("status") == 0)
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline:
        got = sum(len(fleet.arrivals.get(r["caller"], ())) for r in rings)
        if got >= expected_total:
            break
        await asyncio.sleep(0.1)
    wall = time.monotonic() - wall0
    client_cpu = _cpu() - cpu0
    server_cpu = (server.cpu_seconds() - server_cpu0) if server else None
    await http.close()
    del session

    http_ms, frame_ms = [], []
    received = 0
    for ring in rings:
        if ring.get("status", 0) and "answered" in ring:
            http_ms.append((ring["answered"] - ring["sent"]) * 1000)
        for arrived, _device in fleet.arrivals.get(ring["caller"], ()):
            frame_ms.append((arrived - ring["sent"]) * 1000)
            received += 1
    ok = [r for r in rings if 200 <= r.get("status", 0) < 300]
    actions = {}
    for ring in ok:
        actions[ring.get("action")] = actions.get(ring.get("action"), 0) + 1
    return {
        "rate": rate, "duration_s": duration, "rings_sent": len(rings), "rings_ok": len(ok),
        "errors": sorted({r.get("error", "") for r in rings if "error" in r})[:5],
        "frames_expected": expected_total, "frames_received": received,
        "frames_lost": expected_total - received, "actions": actions,
        "http_ms": percentiles(http_ms), "frame_ms": percentiles(frame_ms),
        "scheduler_max_lag_ms": round(behind * 1000, 2),
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "server_cpu_pct": round(100 * server_cpu / wall, 1) if server_cpu is not None else None,
        # Robust to a shared machine where latencies are not: the server's CPU (its idle
        # sockets' share included) over the cell and the drain, per ring sent.
        "server_cpu_ms_per_ring": round(1000 * server_cpu / len(rings), 2) if server_cpu is not None and rings
        else None,
        "raw": {"http_ms": http_ms, "frame_ms": frame_ms},
    }


def log_cell(label: str, cell: dict) -> None:
    f, h = cell["frame_ms"], cell["http_ms"]
    log(f"{label}: rings {cell['rings_ok']}/{cell['rings_sent']}, frames {cell['frames_received']}/"
        f"{cell['frames_expected']} (lost {cell['frames_lost']}), frame p50/p99 {f['p50']}/{f['p99']} ms, "
        f"http p50/p99 {h['p50']}/{h['p99']} ms, client cpu {cell['client_cpu_pct']}%, "
        f"server cpu {cell['server_cpu_pct']}% ({cell.get('server_cpu_ms_per_ring')} ms per ring)")
