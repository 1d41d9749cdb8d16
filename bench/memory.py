"""`python -m bench memory`: server RSS per idle authenticated WebSocket, and where it goes.

Starts real servers the way `manage.py serve` does (or, with `--launcher uvicorn`, the
way the ring benchmark does: the uvicorn command line), one per sample, on a fresh copy
of one seeded SQLite database, with the in-memory or the Redis channel layer. Opens N
device sockets (aiohttp, `Authorization: Bearer`, waits for `hello`), waits 2 s, and
reads the server's VmRSS/RssAnon. Per socket = (RSS after - RSS before any socket) / N,
as the ring benchmark computes it; *marginal* = the same after a warm-up of
`--warmup` sockets, so one-off costs (imports on first use, the database thread) are
left out. Every configuration is sampled `--repeat` times, interleaved; medians.

`--trace` runs the server under tracemalloc (which costs memory itself: the RSS then is
not the product's) and writes, per sample, the top allocation sites and the gc-tracked
object counts by type that grew between the warm-up and the end, divided by N.

    .venv/bin/python -m bench memory --sockets 1000,5000 --layers memory,redis --deflate off,on
    .venv/bin/python -m bench memory --sockets 1000 --trace --repeat 1
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import common
from bench.common import ROOT, Server, log
from bench.ringbench import Fleet

SECONDARIES = 4  # as the ring benchmark: a handset and 4 tablets per user


class ServeServer(Server):
    """`manage.py serve` (the product's command) or the bench's uvicorn command line, with
    extra options; optionally under tracemalloc (see `traced`)."""

    def __init__(self, env: dict, log_path: Path, *, launcher: str, options: list[str], trace_dir: Path | None):
        super().__init__("callpull.asgi:application", env, log_path, deflate="--ws-per-message-deflate" in options)
        self.launcher, self.options, self.trace_dir = launcher, options, trace_dir

    def start(self, timeout: float = 60) -> Server:
        prefix = [sys.executable, "-m", "bench.memory", "traced"] if self.trace_dir else [sys.executable]
        if self.launcher == "serve":
            command = prefix + ["manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                                "--log-level", "warning", *self.options]
        else:
            command = prefix + ["-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port),
                                "--lifespan", "auto", "--no-access-log", "--log-level", "warning",
                                "--timeout-graceful-shutdown", "3", "--backlog", "8192", *self.options]
        env = dict(self.env)
        if self.trace_dir:
            env["BENCH_TRACE_DIR"] = str(self.trace_dir)
        pin = common.SERVER_CORES if common.NCPU > 1 else None
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server died:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/api/v1/", timeout=1, trust_env=False).status_code < 500:
                    time.sleep(0.5)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready:\n{self.log_path.read_text()[-3000:]}")

    def status(self) -> dict[str, int]:
        """VmRSS, RssAnon, RssFile of the server process, in bytes."""
        out = {}
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                key = line.split(":")[0]
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(line.split()[1]) * 1024
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far."""
        import psutil
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def dump(self, tag: str) -> Path:
        """Ask the traced server for a tracemalloc snapshot + gc type counts (SIGUSR1)."""
        request = self.trace_dir / "request"
        request.write_text(tag)
        done = self.trace_dir / f"{tag}.done"
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not done.exists() or done.read_text() != "ok":
            raise RuntimeError(f"traced server did not write its snapshot: {done.exists() and done.read_text()}")
        return self.trace_dir / tag


def traced() -> None:
    """`python -m bench.memory traced <server argv…>`: the server under tracemalloc; on
    SIGUSR1 it writes $BENCH_TRACE_DIR/<tag>.snapshot and <tag>.types.json."""
    import tracemalloc
    tracemalloc.start(int(os.environ.get("BENCH_TRACE_FRAMES", "12")))
    trace_dir = Path(os.environ["BENCH_TRACE_DIR"])

    def on_signal(signum, frame):
        tag = (trace_dir / "request").read_text().strip()
        try:  # never let a failure here escape into whatever the server was running
            gc.collect()
            counts = Counter(_type_name(type(o)) for o in gc.get_objects())
            (trace_dir / f"{tag}.types.json").write_text(json.dumps(counts))
            tracemalloc.take_snapshot().dump(str(trace_dir / f"{tag}.snapshot"))
            (trace_dir / f"{tag}.done").write_text("ok")
        except Exception as error:  # noqa: BLE001
            (trace_dir / f"{tag}.done").write_text(f"failed: {error!r}")

    signal.signal(signal.SIGUSR1, on_signal)
    argv = sys.argv[2:]
    if argv[0] == "manage.py":
        from django.core.management import execute_from_command_line
        sys.argv = argv
        execute_from_command_line(argv)
    else:  # -m uvicorn …
        import uvicorn.main
        sys.argv = ["uvicorn", *argv[2:]]
        uvicorn.main.main()


def _type_name(t: type) -> str:
    module = t.__dict__.get("__module__", getattr(t, "__module__", "?"))
    return f"{module if isinstance(module, str) else '?'}.{t.__qualname__}"


def attribution(before: Path, after: Path, n: int, top: int = 25) -> dict:
    """Bytes per socket by allocation site (grouped by the innermost frame in the given
    packages), and gc-tracked objects per socket by type."""
    import tracemalloc
    a = tracemalloc.Snapshot.load(str(before) + ".snapshot")
    b = tracemalloc.Snapshot.load(str(after) + ".snapshot")
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<unknown>"),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    a, b = a.filter_traces(ignore), b.filter_traces(ignore)
    by_line = [{"where": str(s.traceback[0]), "kb_per_socket": round(s.size_diff / n / 1024, 3),
                "blocks_per_socket": round(s.count_diff / n, 2)}
               for s in b.compare_to(a, "lineno")[:top]]
    by_package = Counter()
    for stat in b.compare_to(a, "traceback"):
        by_package[_owner(stat.traceback)] += stat.size_diff
    types_a = json.loads(Path(str(before) + ".types.json").read_text())
    types_b = json.loads(Path(str(after) + ".types.json").read_text())
    grown = {t: round((types_b.get(t, 0) - types_a.get(t, 0)) / n, 2) for t in types_b}
    objects = dict(sorted(((t, v) for t, v in grown.items() if v >= 0.5), key=lambda kv: -kv[1])[:40])
    total = sum(s.size_diff for s in b.compare_to(a, "filename"))
    return {"traced_kb_per_socket": round(total / n / 1024, 2),
            "by_package_kb_per_socket": {k: round(v / n / 1024, 2) for k, v in by_package.most_common(15)},
            "top_lines": by_line, "objects_per_socket": objects}


_OWNERS = [("uvicorn/", "uvicorn"), ("websockets/", "websockets"), ("channels_redis/", "channels_redis"),
           ("channels/", "channels"), ("asgiref/", "asgiref"), ("redis/", "redis-py"), ("django/", "django"),
           ("notifications/", "callpull notifications"), ("devices/", "callpull devices"),
           ("callpull/", "callpull"), ("asyncio/", "asyncio"), ("uvloop", "uvloop"), ("zlib", "zlib")]


def _owner(traceback) -> str:
    """The innermost frame that belongs to a package we name (asyncio last: it is
    usually called on someone's behalf)."""
    frames = list(reversed(traceback))  # tracemalloc keeps the oldest frame first
    for frame in frames:
        name = frame.filename
        for marker, owner in _OWNERS:
            if marker in name and owner != "asyncio":
                return owner
    for frame in frames:
        if "asyncio/" in frame.filename:
            return "asyncio"
    return frames[0].filename.rsplit("/", 1)[-1] if frames else "?"


async def _hold(server: ServeServer, devices: list[dict], warmup: int, compress: bool, trace: bool) -> dict:
    # Fleet takes a seed; one "household" per device keeps the order we ask for.
    def fleet(chunk):
        return Fleet(server.ws_url, [{"handset": d, "secondaries": []} for d in chunk], compress=compress)
    await asyncio.sleep(0.5)
    cold = server.status()
    first = fleet(devices[:warmup])
    await first.connect()
    await asyncio.sleep(1.0)
    warm = server.status()
    if trace:
        await asyncio.to_thread(server.dump, "warm")
    rest = fleet(devices[warmup:])
    cpu = server.cpu_seconds()
    took = await rest.connect()
    cpu = server.cpu_seconds() - cpu
    await asyncio.sleep(2.0)
    after = server.status()
    sample = {}
    if trace:
        await asyncio.to_thread(server.dump, "after")
    n, n_rest = len(first.sockets) + len(rest.sockets), len(rest.sockets)
    failed = first.failed + rest.failed + first.closed_early + rest.closed_early
    sample.update({"sockets": n, "sockets_after_warmup": n_rest, "failed": failed, "connect_s": round(took, 1),
                   "connect_cpu_s_per_1000": round(cpu / max(1, n_rest) * 1000, 2),
                   "rss_before_mb": round(cold["VmRSS"] / 2**20, 1), "rss_after_mb": round(after["VmRSS"] / 2**20, 1),
                   "kb_per_socket": round((after["VmRSS"] - cold["VmRSS"]) / max(1, n) / 1024, 2),
                   "anon_kb_per_socket": round((after["RssAnon"] - cold["RssAnon"]) / max(1, n) / 1024, 2),
                   "marginal_kb_per_socket": round((after["VmRSS"] - warm["VmRSS"]) / max(1, n_rest) / 1024, 2)})
    await first.close()
    await rest.close()
    return sample


def _seed(tmp: Path, sockets: int) -> tuple[Path, list[dict]]:
    users = -(-sockets // (SECONDARIES + 1))
    template = tmp / "template.sqlite3"
    env = common.server_env(f"sqlite:///{template}", None)
    common.migrate(env)
    seed = common.seed(env, users, SECONDARIES, "immediate", tmp / "seed.json")
    devices = []
    for household in seed:  # a user's sockets together, as real fleets are
        devices.append(household["handset"])
        devices.extend(household["secondaries"])
    return template, devices[:sockets]


def run(*, sockets: list[int], layers: list[str], deflate: list[bool], variants: list[str], launcher: str,
        repeat: int, warmup: int, trace: bool, out: Path | None) -> dict:
    common.pin_self_to_client_cores()
    nofile = common.raise_nofile(max(sockets) * 2 + 1024)
    if nofile < max(sockets) + 256:
        raise SystemExit(f"open files limit {nofile} is too low for {max(sockets)} sockets")
    tmp = Path(tempfile.mkdtemp(prefix="callpull-memory-"))
    log(f"memory: {os.cpu_count()} CPUs, load {common.load()}, open files {nofile}, tmp {tmp}")
    template, devices = _seed(tmp, max(sockets))
    results = {"meta": {"command": "python -m bench " + " ".join(sys.argv[1:]), "launcher": launcher,
                        "nofile": nofile, "warmup": warmup, "load_start": common.load(), "trace": trace},
               "samples": []}
    cells = [(n, layer, d, v) for n in sockets for layer in layers for d in deflate for v in variants]

    def stop(signum, frame):  # SIGTERM: stop the server (finally blocks), keep what was measured
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    try:
        for round_ in range(repeat):
            for n, layer, d, variant in cells:
                sample = _sample(tmp, template, devices[:n], layer, d, variant, launcher, warmup, trace)
                sample.update({"round": round_, "target": n, "layer": layer, "deflate": d, "variant": variant,
                               "load": common.load()})
                results["samples"].append(sample)
                log(f"{n:>5} {layer:6s} deflate={'on ' if d else 'off'} {variant:30s}: {sample['sockets']} sockets "
                    f"({sample['failed']} failed) RSS {sample['rss_before_mb']} -> {sample['rss_after_mb']} MB, "
                    f"{sample['kb_per_socket']} KB/socket (anon {sample['anon_kb_per_socket']}, marginal "
                    f"{sample['marginal_kb_per_socket']}), connect CPU {sample['connect_cpu_s_per_1000']} s/1,000, "
                    f"load {sample['load'][0]}")
                if trace:
                    a = sample["attribution"]
                    log(f"   traced {a['traced_kb_per_socket']} KB/socket: {a['by_package_kb_per_socket']}")
    finally:
        results["summary"] = summary(results["samples"])
        if out:
            out.write_text(json.dumps(results, indent=1))
        if os.environ.get("BENCH_KEEP_TMP"):
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(results["summary"]))
    return results


def _variant(variant: str, deflate: bool) -> tuple[list[str], dict[str, str]]:
    """A variant is a space-separated list of extra server options and NAME=value
    environment settings ("default" = none)."""
    words = [] if variant == "default" else variant.split()
    env = dict(w.split("=", 1) for w in words if "=" in w and w.split("=", 1)[0].isupper())
    options = [w for w in words if w.split("=", 1)[0] not in env]
    options += ["--ws-per-message-deflate", "true" if deflate else "false"]
    return options, env


def _sample(tmp, template, devices, layer, deflate, variant, launcher, warmup, trace) -> dict:
    db = tmp / "server.sqlite3"
    shutil.copyfile(template, db)
    redis_url, redis_client = common.claim_redis_db() if layer == "redis" else (None, None)
    trace_dir = None
    if trace:
        trace_dir = tmp / "trace"
        shutil.rmtree(trace_dir, ignore_errors=True)
        trace_dir.mkdir()
    options, extra_env = _variant(variant, deflate)
    env = common.server_env(f"sqlite:///{db}", redis_url, PRESENCE_STALE_SECONDS=600, CALL_RING_SECONDS=60,
                            **extra_env)
    server = ServeServer(env, tmp / "server.log", launcher=launcher, options=options, trace_dir=trace_dir)
    try:
        server.start(timeout=300 if trace else 120)  # a loaded machine, tracemalloc: slow imports
        sample = asyncio.run(_hold(server, devices, warmup, deflate, trace))
        if trace:
            sample["attribution"] = attribution(trace_dir / "warm", trace_dir / "after",
                                                max(1, sample["sockets_after_warmup"]))
        return sample
    finally:
        server.stop()
        if redis_client is not None:
            for key in redis_client.scan_iter(match="asgi*", count=500):
                redis_client.delete(key)
            redis_client.delete("callpull-bench:lock")
            redis_client.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)


def summary(samples: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault((s["target"], s["layer"], s["deflate"], s["variant"]), []).append(s)
    rows = []
    for (n, layer, d, variant), group in groups.items():
        def med(key, group=group):
            return round(statistics.median(s[key] for s in group), 2)
        rows.append({"sockets": n, "layer": layer, "deflate": d, "variant": variant, "samples": len(group),
                     "failed": sum(s["failed"] for s in group), "kb_per_socket": med("kb_per_socket"),
                     "kb_per_socket_all": [s["kb_per_socket"] for s in group],
                     "anon_kb_per_socket": med("anon_kb_per_socket"),
                     "marginal_kb_per_socket": med("marginal_kb_per_socket"),
                     "connect_cpu_s_per_1000": med("connect_cpu_s_per_1000"),
                     "rss_before_mb": med("rss_before_mb"), "rss_after_mb": med("rss_after_mb")})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| sockets | layer | deflate | server options | KB/socket (median) | samples | anon | marginal | "
             "RSS before → after MB | connect CPU s / 1,000 | failed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['sockets']} | {r['layer']} | {'on' if r['deflate'] else 'off'} | {r['variant']} | "
                     f"**{r['kb_per_socket']}** | {', '.join(map(str, r['kb_per_socket_all']))} | "
                     f"{r['anon_kb_per_socket']} | {r['marginal_kb_per_socket']} | {r['rss_before_mb']} → "
                     f"{r['rss_after_mb']} | {r['connect_cpu_s_per_1000']} | {r['failed']} |")
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "traced":
    traced()
