"""`python -m bench profile`: py-spy on the product server during one ring cell.

Embedded defaults (SQLite, in-memory layer, 1 worker pinned to core 0), 1,000
sockets, 10 rings/s for 20 s; py-spy samples the server at 250 Hz (with idle frames
excluded) and writes a speedscope file under bench/results/raw/; the top functions
by own (self) samples and by inclusive samples go to bench/results/profile.md.
"""
from __future__ import annotations

import asyncio
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common, ringrun
from bench.common import RAW, RESULTS, Database, Server, log
from bench.ringbench import Fleet, log_cell, ring_cell


def run(sockets: int = 1000, rate: float = 10, duration: float = 20) -> Path:
    common.pin_self_to_client_cores()
    common.raise_nofile()
    RAW.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="callpull-profile-"))
    db = Database("sqlite", tmp)
    env = common.server_env(db.url, None, production=True, CALL_RING_SECONDS=60, PRESENCE_STALE_SECONDS=600)
    common.migrate(env)
    seed = common.seed(env, sockets // 5, ringrun.SECONDARIES, "immediate", tmp / "seed.json")
    server = Server("callpull.asgi:application", env, tmp / "server.log").start()
    out = RAW / f"profile-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.speedscope.json"
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        async def go():
            fleet = Fleet(server.ws_url, seed)
            await fleet.connect()
            await asyncio.sleep(1)
            spy = subprocess.Popen([py_spy, "record", "--pid", str(server.process.pid), "--rate", "250",
                                    "--duration", str(int(duration) + 2), "--format", "speedscope",
                                    "--output", str(out), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            await asyncio.sleep(1)
            cell = await ring_cell(fleet, server.base_url, rate=rate, duration=duration, server=server)
            cell["sockets"] = len(fleet.sockets)
            log_cell(f"profile sockets={len(fleet.sockets)} rate={rate:g}/s", cell)
            await asyncio.get_running_loop().run_in_executor(None, spy.wait)
            await fleet.close()
            return cell, spy.stderr.read().decode()[-500:]
        cell, spy_err = asyncio.run(go())
    finally:
        server.stop()
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {spy_err}")
    return write(out, cell, sockets, rate, duration)


def write(path: Path, cell: dict, sockets: int, rate: float, duration: float, top: int = 25) -> Path:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    own, inclusive = collections.Counter(), collections.Counter()
    total = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            total += weight
            if not stack:
                continue
            leaf = frames[stack[-1]]
            own[(leaf["name"], leaf.get("file", ""), leaf.get("line", 0))] += weight
            for index in set(stack):
                frame = frames[index]
                inclusive[(frame["name"], frame.get("file", ""))] += weight

    def short(file: str) -> str:
        for marker in ("site-packages/", "/work/main/", "lib/python3"):
            if marker in file:
                return file.split(marker, 1)[1]
        return file

    lines = ["# Ring path profile (py-spy)", "",
             f"`.venv/bin/python -m bench profile`: py-spy record at 250 Hz on the product server (embedded "
             f"defaults: SQLite, in-memory channel layer, 1 uvicorn worker pinned to core 0) while the client held "
             f"{cell['sockets']} sockets and sent {cell['rings_sent']} ring reports at {rate:g}/s "
             f"({duration:g} s, policy immediate, 4 secondaries per user). Idle samples excluded (py-spy default), "
             f"so percentages are of the server's non-idle sampled time ({total:.2f} s summed over all threads). "
             f"Load average {common.load()}; the machine is shared, so absolute numbers are noisy. "
             f"Raw: `{path.relative_to(common.ROOT)}` (speedscope; gitignored).", "",
             f"Cell: frame p50/p99 {cell['frame_ms']['p50']}/{cell['frame_ms']['p99']} ms, HTTP p50/p99 "
             f"{cell['http_ms']['p50']}/{cell['http_ms']['p99']} ms, frames {cell['frames_received']}/"
             f"{cell['frames_expected']}, server CPU {cell['server_cpu_pct']}% of a core.", "",
             "## Top functions by inclusive samples (time in the function and what it calls)", "",
             "| % | function | file |", "| --- | --- | --- |"]
    for (name, file), weight in inclusive.most_common(top + 10)[:top + 10]:
        lines.append(f"| {100 * weight / max(1, total):.1f} | `{name}` | {short(file)} |")
    lines += ["", "## Top functions by own samples (where the CPU actually is)", "",
              "| % | function | file:line |", "| --- | --- | --- |"]
    for (name, file, line), weight in own.most_common(top):
        lines.append(f"| {100 * weight / max(1, total):.1f} | `{name}` | {short(file)}:{line} |")
    target = RESULTS / "profile.md"
    target.write_text("\n".join(lines) + "\n")
    log(f"profile: {target}")
    return target
