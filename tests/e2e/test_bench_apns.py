"""The APNs benchmarks run, on a tiny size (no speed is asserted): the fan-out of
bench/apnsbench.py, ours and django-push-notifications' aioapns path, against `manage.py
fakeapns --tls` in its own process, with its table and targets; and the ring report under
healthy, slow, failing and timing-out APNs (`python -m bench fcmring --push apns`) through a
real server whose iPads carry VoIP tokens. Needs requirements-bench.txt (psutil, aiohttp,
django-push-notifications, aioapns), as the soak's smoke test does."""

import json

import pytest

from bench import fcmring, report, run

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
def test_the_apns_fan_out_benchmark_sends_through_both_senders_over_tls(tmp_path):
    rows = run.run_apns([3], 1, tmp_path, latency_ms=5)

    by_impl = {row["impl"]: row for row in rows}
    assert set(by_impl) == {"ours", "django-push-notifications"}, rows
    for row in rows:
        assert (row["tokens"], row["ok"], row["errors"]) == (3, 3, []), row
        assert row["msgs_per_s"] > 0 and row["push_p50_ms"] is not None and row["cpu_us_per_push"] > 0, row
    table = report.apns_table(rows)
    assert "| django-push-notifications | 3 | 3/3 |" in table and "Ours / theirs, msg/s: 3 tokens" in table
    targets = report.apns_targets(rows)  # measured at 3 tokens only: both targets say so
    assert [t[2] for t in targets] == ["not measured: `python -m bench apns` or `run --only apns`"] * 2


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
