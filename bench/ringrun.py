"""Orchestrates ring path + floor + memory cells for one configuration."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench import common
from bench.common import Database, Server, log
from bench.ringbench import Fleet, log_cell, ring_cell

SECONDARIES = 4  # per user, plus one handset: 5 sockets per user


def _config_env(config: dict, tmp: Path):
    db = Database(config["db"], tmp)
    redis_url, redis_client = (common.claim_redis_db() if config["redis"] else (None, None))
    return db, redis_url, redis_client


def _release(db, redis_client):
    try:
        db.close()
    finally:
        if redis_client is not None:
            redis_client.delete("callpull-bench:lock")
            redis_client.close()


async def _connect(server: Server, seed, label: str, compress: bool = False) -> tuple[Fleet, dict]:
    rss0, cpu0 = server.rss_bytes(), server.cpu_seconds()
    fleet = Fleet(server.ws_url, seed, compress=compress)
    took = await fleet.connect()
    await asyncio.sleep(2.0)
    rss1, cpu1 = server.rss_bytes(), server.cpu_seconds()
    n = len(fleet.sockets)
    await asyncio.sleep(3.0)  # idle: what do held sockets cost?
    cpu2 = server.cpu_seconds()
    mem = {"sockets": n, "failed": fleet.failed, "connect_s": round(took, 2), "rss_before_mb": round(rss0 / 2**20, 1),
           "rss_after_mb": round(rss1 / 2**20, 1),
           "rss_per_socket_kb": round((rss1 - rss0) / max(1, n) / 1024, 2),
           "rss_per_1000_mb": round((rss1 - rss0) / max(1, n) * 1000 / 2**20, 2),
           "connect_cpu_s_per_1000": round((cpu1 - cpu0) / max(1, n) * 1000, 3),
           "idle_cpu_pct_per_1000": round(100 * (cpu2 - cpu1) / 3.0 / max(1, n) * 1000, 3),
           "compression": compress, "load": common.load()}
    log(f"{label}: {n} sockets connected ({fleet.failed} failed) in {took:.1f}s; server RSS "
        f"{mem['rss_before_mb']} -> {mem['rss_after_mb']} MB ({mem['rss_per_socket_kb']} KB/socket), "
        f"idle CPU {mem['idle_cpu_pct_per_1000']}%/1000 sockets")
    return fleet, mem


def run_config(config: dict, sockets_list: list[int], rates: list[float], duration: float, tmp: Path,
               memory_deflate: bool) -> dict:
    """Ring path and floor cells for every (sockets, rate) of one configuration."""
    out = {"config": config, "cells": [], "memory": []}
    pin = config["workers"] == 1
    for sockets in sockets_list:
        users = max(1, sockets // (SECONDARIES + 1))
        db, redis_url, redis_client = _config_env(config, tmp)
        try:
            env = common.server_env(db.url, redis_url, production=True, RATE_LIMIT_SIGNUP=100000, CALL_RING_SECONDS=60,
                                    PRESENCE_STALE_SECONDS=600)
            common.migrate(env)
            seed = common.seed(env, users, SECONDARIES, "immediate", tmp / f"seed-{db.name}.json")
            frame_bytes = 700
            product = {}
            # Ring path on the product.
            server = Server("callpull.asgi:application", env, tmp / f"server-{db.name}.log",
                            workers=config["workers"], pin=pin).start()
            try:
                product = asyncio.run(_product_cells(server, seed, config, sockets, rates, duration))
                out["memory"].append(product.pop("memory"))
                frame_bytes = product.pop("frame_bytes") or frame_bytes
            finally:
                server.stop()
            # Floor on the same sockets (same seed, same groups, same-size frame).
            floor_env = {**env, "DJANGO_SETTINGS_MODULE": "bench.floor.settings",
                         "BENCH_FLOOR_SEED": str(tmp / f"seed-{db.name}.json"), "BENCH_FRAME_BYTES": str(frame_bytes)}
            if redis_client is not None:
                for key in redis_client.scan_iter(match="asgi*", count=500):
                    redis_client.delete(key)
            floor = Server("bench.floor.app:application", floor_env, tmp / f"floor-{db.name}.log",
                           workers=config["workers"], pin=pin).start()
            try:
                floor_cells = asyncio.run(_floor_cells(floor, seed, config, sockets, rates, duration))
            finally:
                floor.stop()
            for cell, fcell in zip(product["cells"], floor_cells, strict=True):
                cell["floor"] = fcell
                out["cells"].append(cell)
            if memory_deflate:
                server = Server("callpull.asgi:application", env, tmp / f"deflate-{db.name}.log",
                                workers=config["workers"], deflate=True, pin=pin).start()
                try:
                    out["memory"].append(asyncio.run(_memory_only(server, seed, config, sockets)))
                finally:
                    server.stop()
        finally:
            _release(db, redis_client)
    return out


def _label(config, sockets, rate, what):
    return f"{what:5s} {config['name']:>16s} sockets={sockets:<5d} rate={rate:g}/s"


async def _product_cells(server, seed, config, sockets, rates, duration):
    fleet, mem = await _connect(server, seed, f"ring  {config['name']:>16s} sockets={sockets}")
    mem.update({"config": config["name"], "target_sockets": sockets, "app": "callpull"})
    cells = []
    try:
        for rate in rates:
            cell = await ring_cell(fleet, server.base_url, rate=rate, duration=max(duration, 20 / rate),
                                   server=server)
            cell.update({"config": config["name"], "sockets": len(fleet.sockets), "target_sockets": sockets,
                         "load": common.load(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            log_cell(_label(config, sockets, rate, "ring"), cell)
            cells.append(cell)
        sizes = fleet.frame_sizes
        frame_bytes = int(sum(sizes) / len(sizes)) if sizes else None
    finally:
        await fleet.close()
    return {"cells": cells, "memory": mem, "frame_bytes": frame_bytes}


async def _floor_cells(server, seed, config, sockets, rates, duration):
    fleet, _mem = await _connect(server, seed, f"floor {config['name']:>16s} sockets={sockets}")
    cells = []
    try:
        for rate in rates:
            cell = await ring_cell(fleet, server.base_url, rate=rate, duration=max(duration, 20 / rate),
                                   server=server)
            cell.update({"load": common.load(), "sockets": len(fleet.sockets)})
            log_cell(_label(config, sockets, rate, "floor"), cell)
            cells.append(cell)
    finally:
        await fleet.close()
    return cells


async def _memory_only(server, seed, config, sockets):
    fleet, mem = await _connect(server, seed, f"mem   {config['name']:>16s} sockets={sockets} deflate",
                                compress=True)
    mem.update({"config": config["name"], "target_sockets": sockets, "app": "callpull"})
    await fleet.close()
    return mem
