"""The APNs benchmarks run, on a tiny size (no speed is asserted): the fan-out of
bench/apnsbench.py, ours and django-push-notifications' aioapns path, against `manage.py
fakeapns --tls` in its own process, with answers delayed (a) and with new connections'
handshakes delayed too (b), with its table (both conditions, the ratio paired by condition)
and targets (judged on (b)); and the ring report under
healthy, slow, failing and timing-out APNs (`python -m bench fcmring --push apns`) through a
real server whose iPads carry VoIP tokens. Needs requirements-bench.txt (psutil, aiohttp,
django-push-notifications, aioapns), as the soak's smoke test does."""

import json

import pytest

from bench import fcmring, report, run

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
def test_the_apns_fan_out_benchmark_sends_through_both_senders_over_tls_under_both_conditions(tmp_path):
    rows = run.run_apns_conditions([3], 1, tmp_path, latency_ms=5, connect_latency_ms=30)

    assert [(row["connect_latency_ms"], row["impl"]) for row in rows] == [
        (0, "ours"), (0, "django-push-notifications"), (30, "ours"), (30, "django-push-notifications")], rows
    for row in rows:
        assert (row["tokens"], row["ok"], row["errors"], row["latency_ms"]) == (3, 3, [], 5), row
        assert row["msgs_per_s"] > 0 and row["push_p50_ms"] is not None and row["cpu_us_per_push"] > 0, row
    a_ours, a_theirs, b_ours, b_theirs = rows
    # (b)'s fake holds every new connection's handshake back 30 ms: a set-up measured from the
    # client, and theirs' first answer (a new aioapns client connects inside send_message),
    # cannot come sooner.
    assert b_ours["setup_ms"] >= 30 and b_theirs["first_ms"] >= 30 + 5, rows
    table = report.apns_table(rows)
    assert "| (a) answers +5 ms | django-push-notifications | 3 | 3/3 |" in table
    assert "| (b) answers +5 ms, connection set-up +30 ms | django-push-notifications | 3 | 3/3 |" in table
    assert (f"Ours / theirs, msg/s: (a) answers +5 ms: 3 tokens {a_ours['msgs_per_s'] / a_theirs['msgs_per_s']:.2f}x"
            f"; (b) answers +5 ms, connection set-up +30 ms: 3 tokens "
            f"{b_ours['msgs_per_s'] / b_theirs['msgs_per_s']:.2f}x.") in table, table
    targets = report.apns_targets(rows)  # measured at 3 tokens only: both targets say so
    assert [t[2] for t in targets] == ["not measured: `python -m bench apns` or `run --only apns`"] * 2


def test_the_apns_target_is_judged_on_connection_set_up_with_the_answers_only_figures_beside_it():
    def row(impl, tokens, connect, msgs_per_s):
        return {"impl": impl, "tokens": tokens, "ok": tokens, "msgs_per_s": msgs_per_s, "latency_ms": 20,
                "connect_latency_ms": connect}
    rows = [row("ours", 100, 0, 350), row("django-push-notifications", 100, 0, 100),
            row("ours", 100, 20, 250), row("django-push-notifications", 100, 20, 100),
            row("ours", 1000, 0, 200), row("django-push-notifications", 1000, 0, 100),
            row("ours", 1000, 20, 400), row("django-push-notifications", 1000, 20, 100)]

    at_100, at_1000 = report.apns_targets(rows)
    assert at_100[1].startswith("fake APNs over TLS, (b) answers +20 ms, connection set-up +20 ms"), at_100
    assert at_100[2].startswith("2.50x (250 vs 100 accepted/s") and at_100[3].startswith("missed: 2.50x"), at_100
    assert "(a) answers +20 ms only: 3.50x (350 vs 100 accepted/s" in at_100[2], at_100
    assert at_1000[2].startswith("4.00x (400 vs 100") and at_1000[3] == "met", at_1000
    assert "(a) answers +20 ms only: 2.00x" in at_1000[2], at_1000
    only_a = report.apns_targets([r for r in rows if not r["connect_latency_ms"]])
    assert [t[3] for t in only_a] == ["–", "–"] and "(a) answers +20 ms only: 3.50x" in only_a[0][2], only_a


@pytest.mark.timeout(300)
def test_the_ring_benchmark_rings_ipads_with_apns_healthy_slow_failing_and_timing_out(tmp_path):
    path = fcmring.run(sockets=10, rates=[20], duration=1, push="apns", results=tmp_path, settle=1)

    data = json.loads((tmp_path / "apns-ring.json").read_text())
    cells = {cell["apns"].split(" ")[0]: cell for cell in data["cells"]}
    assert list(cells) == ["healthy", "slow", "failing", "timing"], data["cells"]
    for cell in cells.values():
        assert cell["rings_ok"] == cell["rings_sent"] > 0 and cell["frames_lost"] == 0, cell
    # Two iPads per user: each healthy ring's two VoIP pushes reached the server and were answered.
    assert cells["healthy"]["apns_requests_per_push"] >= 1, cells["healthy"]
    assert "| timing out (no answer to any request) | 20/s |" in path.read_text()
    rows = report.ring_targets(data, "apns")
    assert [r[0] for r in rows] == [f"HTTP p99 within 10% when APNs is slow/failing ({mode})"
                                    for mode in ("slow", "failing", "timing out")]
