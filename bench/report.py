"""latest.json, latest.md and PNG plots under bench/results/ from one run's results."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from bench.common import RESULTS


def _strip_raw(results: dict) -> dict:
    out = copy.deepcopy(results)
    for cell in out.get("ring", []):
        cell.pop("raw", None)
        cell.get("floor", {}).pop("raw", None)
    if out.get("webhook"):
        out["webhook"].pop("raw", None)
    return out


def _q(p: dict, key: str) -> str:
    value = p.get(key)
    return "–" if value is None else f"{value:.1f}"


def _pq(p: dict) -> str:
    return " / ".join(_q(p, k) for k in ("p50", "p95", "p99", "max"))


def _ratio(a, b):
    return None if not a or not b else a / b


def _fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}x"


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    ring = results.get("ring", [])
    if ring:
        def closeness(cell):
            return (-abs(cell["rate"] - 50) if cell["rate"] <= 50 else -abs(cell["rate"] - 50) - 0.5,
                    -abs(cell["target_sockets"] - 2000))
        best = {}
        for cell in ring:
            best.setdefault(cell["config"], []).append(cell)
        for config, cells in best.items():
            cell = max(cells, key=closeness)
            where = f"{config}, {cell['sockets']} sockets, {cell['rate']:g}/s" + (
                "" if (cell["rate"] == 50 and cell["target_sockets"] >= 2000) else
                " (nearest measured cell to 50/s with 2,000 sockets)")
            ratio = _ratio(cell["frame_ms"]["p99"], cell["floor"]["frame_ms"]["p99"])
            lost = cell["frames_lost"]
            met = ratio is not None and ratio <= 2 and lost == 0
            rows.append(("Ring p99 ≤ 2x floor, 0 frames lost", where,
                         f"{_fmt_ratio(ratio)} ({cell['frame_ms']['p99']} vs {cell['floor']['frame_ms']['p99']} ms), "
                         f"lost {lost}/{cell['frames_expected']}",
                         "met" if met else (f"missed: {ratio / 2:.1f}x over the 2x bound" if ratio and ratio > 2
                                            else f"missed: {lost} frames lost")))
            p50 = cell["frame_ms"]["p50"]
            rows.append(("Ring p50 < 20 ms", where, f"{p50} ms",
                         "met" if p50 is not None and p50 < 20 else f"missed by {p50 - 20:.1f} ms"))
            p99 = cell["http_ms"]["p99"]
            rows.append(("Ring report HTTP p99 < 50 ms", where, f"{p99} ms",
                         "met" if p99 is not None and p99 < 50 else f"missed by {p99 - 50:.1f} ms"))
    rows += ring_targets(_sibling("fcm-ring.json"), "fcm")
    rows += ring_targets(_sibling("apns-ring.json"), "apns")
    memory = [m for m in results.get("memory", []) if m.get("sockets")]
    for compression in (False, True):
        rows_m = [m for m in memory if m["compression"] is compression]
        if rows_m:
            m = max(rows_m, key=lambda r: (r["sockets"], r["config"] == "embedded"))
            kb = m["rss_per_socket_kb"]
            where = f"{m['config']}, {m['sockets']} sockets, deflate {'on' if compression else 'off'}" + (
                "" if m["sockets"] >= 5000 else " (target is at 5,000)")
            rows.append(("Idle socket < 25 KB RSS", where, f"{kb} KB",
                         "met" if kb < 25 else f"missed by {kb - 25:.1f} KB ({kb / 25:.1f}x)"))
    rows += _memory_targets(_sibling("memory.json"))
    fcm = results.get("fcm") or []
    for n in (100, 1000):
        ours = next((r for r in fcm if r["impl"] == "ours" and r["tokens"] == n), None)
        theirs = next((r for r in fcm if r["impl"] == "fcm-django" and r["tokens"] == n), None)
        if ours and theirs:
            ratio = ours["msgs_per_s"] / theirs["msgs_per_s"]
            rows.append((f"FCM ≥ 3x fcm-django at {n} tokens", "fake FCM, 20 ms latency",
                         f"{ratio:.2f}x ({ours['msgs_per_s']} vs {theirs['msgs_per_s']} msg/s)",
                         "met" if ratio >= 3 else f"missed: {ratio:.2f}x of 3x ({3 / ratio:.1f}x short)"))
        else:
            rows.append((f"FCM ≥ 3x fcm-django at {n} tokens", "–", "not measured in this profile", "–"))
    rows += apns_targets(results.get("apns") or _apns_rows(_sibling("apns.json")))
    hook = results.get("webhook")
    if hook:
        p99 = hook["latency_ms"]["p99"]
        rows.append(("Voice webhook p99 < 20 ms", f"{hook['concurrency']} concurrent forwarded calls",
                     f"{p99} ms", "met" if p99 is not None and p99 < 20 else f"missed by {p99 - 20:.1f} ms"))
    return rows


def _sibling(name: str) -> dict | None:
    """Results another command wrote next to latest.* (`bench fcmring`, `bench memory
    --out bench/results/memory.json`): their targets are judged from them, named as such."""
    path = RESULTS / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _apns_rows(data: dict | None) -> list[dict]:
    """The rows of a results/apns.json, each with its condition (files written before rows
    carried it: the run's `latency_ms`, connections set up at once)."""
    meta = (data or {}).get("meta", {})
    return [{"latency_ms": meta.get("latency_ms", 20), "connect_latency_ms": 0, **row}
            for row in (data or {}).get("apns", [])]


def apns_condition(row: dict) -> tuple[float, float]:
    """(answers' added latency, new connections' added latency) in ms. Rows of a `run`
    written before rows carried it: 20 ms, connections at once (all `run` ever used)."""
    return row.get("latency_ms", 20), row.get("connect_latency_ms", 0)


def apns_condition_label(condition: tuple[float, float]) -> str:
    latency, connect = condition
    if connect:
        return f"(b) answers +{latency:g} ms, connection set-up +{connect:g} ms"
    return f"(a) answers +{latency:g} ms"


def _apns_pair(rows: list[dict], condition: tuple[float, float], n: int) -> tuple[dict, dict, float] | None:
    """(ours, theirs, ours / theirs accepted msg/s) at `n` tokens under `condition`."""
    here = [r for r in rows if apns_condition(r) == condition and r["tokens"] == n]
    ours = next((r for r in here if r["impl"] == "ours"), None)
    theirs = next((r for r in here if r["impl"] != "ours"), None)
    if ours and theirs and ours["msgs_per_s"] and theirs["msgs_per_s"]:
        return ours, theirs, ours["msgs_per_s"] / theirs["msgs_per_s"]
    return None


def apns_targets(apns: list[dict]) -> list[tuple[str, str, str, str]]:
    """Judged on condition (b), the new connections' handshake delayed as the answers are
    (django-push-notifications sets up a new client's connections on every send, ours
    keeps one per worker); (a)'s figures, answers delayed only, in words beside it."""
    conditions = sorted({apns_condition(r) for r in apns})
    judged = next((c for c in conditions if c[1] > 0), None)
    plain = next((c for c in conditions if c[1] == 0), None)
    rows = []
    for n in (100, 1000):
        name = f"APNs ≥ 3x django-push-notifications at {n} tokens"
        b = _apns_pair(apns, judged, n) if judged else None
        a = _apns_pair(apns, plain, n) if plain else None
        also = (f"; {apns_condition_label(plain)} only: {a[2]:.2f}x ({a[0]['msgs_per_s']} vs {a[1]['msgs_per_s']} "
                f"accepted/s; accepted {a[0]['ok']}/{n} vs {a[1]['ok']}/{n})") if a else ""
        if b:
            ours, theirs, ratio = b
            rows.append((name, f"fake APNs over TLS, {apns_condition_label(judged)} (one round trip: TCP's "
                         "handshake not modelled)",
                         f"{ratio:.2f}x ({ours['msgs_per_s']} vs {theirs['msgs_per_s']} accepted/s; "
                         f"accepted {ours['ok']}/{n} vs {theirs['ok']}/{n}){also}",
                         "met" if ratio >= 3 else f"missed: {ratio:.2f}x of 3x ({3 / ratio:.1f}x short)"))
        elif a:
            rows.append((name, "–", "not measured with connection set-up delayed (condition (b)): rerun "
                         "`python -m bench apns`" + also, "–"))
        else:
            rows.append((name, "–", "not measured: `python -m bench apns` or `run --only apns`", "–"))
    return rows


def ring_targets(data: dict | None, transport: str) -> list[tuple[str, str, str, str]]:
    """HTTP p99 of the ring report under a slow or failing push service vs healthy, from
    `python -m bench fcmring [--push apns]` (results/fcm-ring.json, results/apns-ring.json)."""
    label = {"fcm": "FCM", "apns": "APNs"}[transport]
    name = f"HTTP p99 within 10% when {label} is slow/failing"
    if not data:
        return [(name, "–", f"not measured: run `python -m bench fcmring --push {transport}`", "–")]
    started = data.get("meta", {}).get("started", "?")
    by_rate: dict[float, dict[str, dict]] = {}
    for cell in data.get("cells", []):
        by_rate.setdefault(cell["rate"], {})[(cell.get("mode") or cell[transport]).split(" ")[0]] = cell
    rows = []
    for rate, cells in sorted(by_rate.items()):
        healthy = cells.get("healthy", {}).get("http_ms", {}).get("p99")
        for mode in ("slow", "failing", "timing"):
            p99 = cells.get(mode, {}).get("http_ms", {}).get("p99")
            if not healthy or p99 is None:
                continue
            ratio = p99 / healthy
            where = f"bench fcmring{' --push apns' if transport == 'apns' else ''} {started}"
            rows.append((f"{name} ({'timing out' if mode == 'timing' else mode})",
                         f"{where}, {cells[mode]['sockets']} sockets, {rate:g}/s",
                         f"{p99} vs {healthy} ms healthy ({(ratio - 1) * 100:+.0f}%)",
                         "met" if ratio <= 1.1 else f"missed: {ratio:.2f}x of healthy (bound 1.10x)"))
    return rows


def _memory_targets(memory: dict | None) -> list[tuple[str, str, str, str]]:
    rows = []
    for row in (memory or {}).get("summary", []):
        if row["sockets"] < 5000 or row["variant"] != "default":
            continue
        kb = row["kb_per_socket"]
        rows.append(("Idle socket < 25 KB RSS", f"bench memory, {row['sockets']} sockets, {row['layer']} layer, "
                     f"deflate {'on' if row['deflate'] else 'off'}, median of {row['samples']}", f"{kb} KB",
                     "met" if kb < 25 else f"missed by {kb - 25:.1f} KB ({kb / 25:.1f}x)"))
    return rows


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# callpull benchmark — profile `{meta['profile']}`", "",
             f"Command: `{meta['command']}`" + (" (= `make bench`)" if meta["command"].endswith("run --profile quick")
                                                 else "") + ". "
             f"Started {meta['started']}, took {meta.get('duration_s')} s on {meta['cpus']} CPUs, Python "
             f"{meta['python']}. Load average (1/5/15 min) at start {meta['load_start']}, at end "
             f"{meta.get('load_end')}: other engineers' tests share this machine, so numbers are noisy.",
             f"Core pinning: {meta['pinning']}.", ""]
    if meta.get("merged_from"):
        lines += [f"Merged from raw files: {', '.join(meta['merged_from'])}. "
                  f"'took' is the first piece's time.", ""]
    if meta.get("completed") is False:
        lines += ["**Interrupted run: only the cells below were measured (the rest of the profile is missing).**", ""]
    lines += ["## Targets (issue 6)", "",
             "| target | cell | measured | verdict |", "| --- | --- | --- | --- |"]
    for row in targets(results):
        lines.append("| " + " | ".join(row) + " |")
    if results.get("ring"):
        lines += ["", "## Ring path vs floor", "",
                  "Latencies in ms as p50 / p95 / p99 / max. *Frame* = report sent → `call.ringing` read at each "
                  "notified device (4 secondaries per user; 5 sockets per user with the handset). Policy `immediate`: "
                  "the HTTP answer carries the `reject` instruction, so *HTTP* is also the reject-instruction latency. "
                  "Floor = bare Channels app doing only `group_send` of a same-size frame to the same device groups.",
                  "",
                  "| config | sockets | rings/s | rings ok/sent | frames recv/exp (lost) | HTTP | frame | floor frame "
                  "| ratio p50 | ratio p99 | client CPU | server CPU | load 1m |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in results["ring"]:
            f = c["floor"]
            lines.append(
                f"| {c['config']} | {c['sockets']} | {c['rate']:g} | {c['rings_ok']}/{c['rings_sent']} | "
                f"{c['frames_received']}/{c['frames_expected']} ({c['frames_lost']}) | {_pq(c['http_ms'])} | "
                f"{_pq(c['frame_ms'])} | {_pq(f['frame_ms'])} | "
                f"{_fmt_ratio(_ratio(c['frame_ms']['p50'], f['frame_ms']['p50']))} | "
                f"{_fmt_ratio(_ratio(c['frame_ms']['p99'], f['frame_ms']['p99']))} | {c['client_cpu_pct']}% | "
                f"{c['server_cpu_pct']}% | {c['load'][0]} |")
        floor_lost = sum(c["floor"]["frames_lost"] for c in results["ring"])
        lines.append(f"\nFloor frames lost in all cells: {floor_lost}. CPU columns are % of one core over the "
                     "cell (client = the benchmark process; server = uvicorn worker(s)).")
    if results.get("memory"):
        lines += ["", "## Memory and CPU of idle authenticated sockets", "",
                  "| config | deflate | sockets (failed) | RSS before → after (MB) | RSS per socket | per 1,000 "
                  "| connect CPU s / 1,000 | idle CPU % / 1,000 | load 1m |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in results["memory"]:
            lines.append(f"| {m['config']} | {'on' if m['compression'] else 'off'} | {m['sockets']} ({m['failed']}) | "
                         f"{m['rss_before_mb']} → {m['rss_after_mb']} | {m['rss_per_socket_kb']} KB | "
                         f"{m['rss_per_1000_mb']} MB | {m['connect_cpu_s_per_1000']} | "
                         f"{m['idle_cpu_pct_per_1000']} | {m['load'][0]} |")
    if results.get("fcm"):
        lines += ["", "## FCM fan-out (our FCM HTTP v1 client → simulators.fcm, 20 ms added latency)", "",
                  "*ours* = notifications.fcm.send_many; *fcm-django* = `FCMDevice.objects.filter(…).send_message` "
                  "(its messaging.send_each path); *naive loop* = `messaging.send` per token. Median of repeats.", "",
                  "| impl | tokens | accepted | first accepted (ms) | last accepted (ms) | msg/s | samples (ms) "
                  "| load 1m |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["fcm"]:
            lines.append(f"| {r['impl']} | {r['tokens']} | {r['ok']}/{r['tokens']} | {r['first_ms'] or '–'} | "
                         f"{r['last_ms']} | {r['msgs_per_s']} | {r['samples_last_ms']} | {r['load'][0]} |")
    if results.get("apns"):
        lines += ["", apns_table(results["apns"])]
    hook = results.get("webhook")
    if hook:
        lines += ["", "## Voice webhook", "",
                  "| concurrent | answered / expected | matched a call | statuses | latency ms p50 / p95 / p99 / max "
                  "| server CPU | load 1m |", "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| {hook['concurrency']} | {hook['received']}/{hook['expected']} | {hook['matched_conference']} | "
                  f"{hook['statuses']} | {_pq(hook['latency_ms'])} | {hook['server_cpu_pct']}% | {hook['load'][0]} |"]
    lines += ["", "Plots: `ring-latency.png`, `ring-cdf.png`, `fcm.png` beside this file."]
    return "\n".join(lines) + "\n"


def apns_table(rows: list[dict]) -> str:
    conditions = list(dict.fromkeys(apns_condition(r) for r in rows))
    setups = {}
    for r in rows:
        if r.get("setup_ms") is not None:
            setups.setdefault(apns_condition(r), r["setup_ms"])
    lines = ["## APNs fan-out (one VoIP push to N tokens → simulators.apns over TLS)", "",
             "*ours* = notifications.apns.send_many (one HTTP/2 connection, notifications.http2); "
             "*django-push-notifications* = "
             "`APNSDevice.objects.filter(active=True).send_message(…)` (3.3.0, aioapns, token authentication), "
             "aioapns pointed at the fake by its `APNsProductionClientProtocol.APNS_SERVER`/`APNS_PORT`. "
             "msg/s = accepted pushes / last accepted (fewest accepted of the repeats); per push = from the call "
             "to the fake's answer, median sample; sender CPU = the sending process's CPU per push. "
             "Median of repeats, interleaved.", "",
             "Conditions, each against a fake of its own, one after the other: *(a)* the fake delays every answer "
             "(from when it read the request); a new connection is set up at once. *(b)* it also holds back every new "
             "connection's first flight (the TLS ServerHello) by the set-up delay the condition names: the round "
             "trip of a TLS 1.3 handshake with a server that far away. TCP's handshake, one more round trip over "
             "a real network, is not modelled, so (b) still undercharges a sender that opens connections. Ours "
             "sets up its one connection "
             "while warming up and keeps it (one per worker); django-push-notifications sets up a new aioapns "
             "client's connections on every `send_message`."
             + (" A new TLS connection to each fake, measured from the benchmark (median of 5): " + ", ".join(
                 f"{apns_condition_label(c)}: {setups[c]} ms" for c in conditions if c in setups) + "."
                if setups else ""), "",
             "| condition | impl | tokens | accepted | first / last accepted (ms) | msg/s | per push p50 / p99 (ms) "
             "| sender CPU µs/push | samples (ms) | errors | load 1m |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        errors = "; ".join(e[:80] for e in r.get("errors") or []) or "–"
        lines.append(f"| {apns_condition_label(apns_condition(r))} | {r['impl']} | {r['tokens']} | "
                     f"{r['ok']}/{r['tokens']} | {r['first_ms'] or '–'} / "
                     f"{r['last_ms']} | {r['msgs_per_s']} | {r['push_p50_ms']} / {r['push_p99_ms']} | "
                     f"{r['cpu_us_per_push']} | {r['samples_last_ms']} | {errors} | {r['load'][0]} |")
    ratios = []
    for condition in conditions:
        pairs = [(n, _apns_pair(rows, condition, n)) for n in sorted({r["tokens"] for r in rows})]
        pairs = [f"{n} tokens {pair[2]:.2f}x" for n, pair in pairs if pair]
        if pairs:
            ratios.append(f"{apns_condition_label(condition)}: " + ", ".join(pairs))
    if ratios:
        lines += ["", "Ours / theirs, msg/s: " + "; ".join(ratios) + "."]
    return "\n".join(lines)


# What the sender thread's samples are spent in (`python -m bench apns --profile`): the first
# group a frame's file matches, innermost frame first.
GROUPS = (("hpack (header compression)", "hpack/"), ("h2 (HTTP/2 state machine)", "h2/"),
          ("TLS (ssl)", "ssl.py"), ("asyncio (event loop, tasks, transports)", "asyncio/"),
          ("PyJWT / json", ("jwt/", "json/")), ("notifications.http2 (our HTTP/2 client)", "notifications/http2"),
          ("notifications.apns / pushloop (ours)", "notifications/"))


def py_spy_summary(raw: str, thread: str = "apns-sender") -> str:
    """py-spy's raw (collapsed) stacks → where the sender thread's time goes, as markdown."""
    from collections import Counter
    groups, selfs, total, threads = Counter(), Counter(), 0, Counter()
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            threads[frames[0].split(": ")[-1]] += int(count)
            if thread not in frames[0]:
                continue
            total += int(count)
            leaf = frames[-1]
            selfs[leaf] += int(count)
            for frame in reversed(frames):
                where = frame.rpartition("(")[2]
                name = next((g for g, keys in GROUPS if any(k in where for k in
                                                            ((keys,) if isinstance(keys, str) else keys))), None)
                if name:
                    groups[name] += int(count)
                    break
            else:
                groups["other"] += int(count)
    lines = [f"Samples of the `{thread}` thread: {total} (all threads: {dict(threads.most_common(5))}).", "",
             "| where the innermost frame of a known library is | share |", "| --- | --- |"]
    lines += [f"| {name} | {100 * n / max(1, total):.0f}% |" for name, n in groups.most_common()]
    lines += ["", "| top self frames | share |", "| --- | --- |"]
    lines += [f"| `{name[:110]}` | {100 * n / max(1, total):.1f}% |" for name, n in selfs.most_common(15)]
    return "\n".join(lines)


def plots(results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ring = results.get("ring", [])
    if ring:
        fig, ax = plt.subplots(figsize=(8, 5))
        keys = sorted({(c["config"], c["target_sockets"]) for c in ring})
        for config, sockets in keys:
            cells = sorted([c for c in ring if c["config"] == config and c["target_sockets"] == sockets],
                           key=lambda c: c["rate"])
            rates = [c["rate"] for c in cells]
            line, = ax.plot(rates, [c["frame_ms"]["p99"] for c in cells], marker="o",
                            label=f"ring p99 {config} {sockets} sockets")
            ax.plot(rates, [c["frame_ms"]["p50"] for c in cells], marker=".", linestyle=":", color=line.get_color(),
                    label=f"ring p50 {config} {sockets}")
            ax.plot(rates, [c["floor"]["frame_ms"]["p99"] for c in cells], marker="x", linestyle="--",
                    color=line.get_color(), label=f"floor p99 {config} {sockets}")
        ax.axhline(20, color="grey", linewidth=0.8, linestyle="-.", label="p50 target 20 ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ring reports per second")
        ax.set_ylabel("report → frame latency (ms)")
        ax.set_title("Ring path vs floor")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "ring-latency.png", dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 5))
        for c in ring:
            for which, samples, style in (("ring", c.get("raw", {}).get("frame_ms", []), "-"),
                                          ("floor", c["floor"].get("raw", {}).get("frame_ms", []), "--")):
                if samples:
                    ordered = sorted(samples)
                    ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], linestyle=style,
                            label=f"{which} {c['config']} {c['sockets']}s {c['rate']:g}/s")
        ax.set_xscale("log")
        ax.set_xlabel("report → frame latency (ms)")
        ax.set_ylabel("fraction of frames")
        ax.set_title("Latency CDF per cell")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(RESULTS / "ring-cdf.png", dpi=110)
        plt.close(fig)
    fcm = results.get("fcm") or []
    if fcm:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for impl in ("ours", "fcm-django", "naive loop"):
            rows = sorted([r for r in fcm if r["impl"] == impl], key=lambda r: r["tokens"])
            ax.plot([r["tokens"] for r in rows], [r["last_ms"] for r in rows], marker="o",
                    label=f"{impl}: last accepted")
            if impl == "ours":
                ax.plot([r["tokens"] for r in rows], [r["first_ms"] for r in rows], marker=".", linestyle=":",
                        label="ours: first accepted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel("ms from the call")
        ax.set_title("FCM fan-out against the fake (20 ms latency)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "fcm.png", dpi=110)
        plt.close(fig)


def write(results: dict, stamp: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(_strip_raw(results), indent=1))
    try:
        plots(results)
    except Exception as error:  # a plot must not lose the numbers
        print(f"plots failed: {error!r}")
    path = RESULTS / "latest.md"
    path.write_text(markdown(results))
    return path
