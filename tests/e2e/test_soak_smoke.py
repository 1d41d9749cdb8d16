"""The soak (bench/soak.py), short: about twenty seconds of calls with a random fault
every few seconds through a real server, so that CI runs its code and its checks can
fail; and /metrics scraped at its end adds up to its own totals.

It runs in whatever configuration the pass has: SQLite and the in-memory layer (FCM
faults, dropped sockets, SQLite locks), or PostgreSQL behind the soak's TCP proxy
with a private redis-server when REDIS_URL is set (also proxy cuts and Redis
restarts). The seed and the exact command to replay a failure are in the message.
"""

import os

import pytest

from bench import soak

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)  # 20 s of calls, plus a fresh database, a server, users and the drain
def test_twenty_seconds_of_calls_with_random_faults_all_end_and_every_ring_is_acked(tmp_path):
    summary = soak.run(minutes=20 / 60, rate=1.5, users=4, database="auto", redis="auto", fault_every=(2.5, 5.0),
                       results_dir=tmp_path, name="soak-smoke", progress_every=5, tmp_dir=tmp_path)
    report = (tmp_path / "soak-smoke.md").read_text()
    assert summary["calls"]["placed"] >= 20, report
    assert summary["faults"]["count"] >= 3, report
    assert summary["rings"]["expected"] > 0, report
    assert summary["checks"] == {"every_call_terminal": True, "every_expected_ring_acked": True,
                                 "no_unregistered_token_remains": True, "no_5xx_but_503": True,
                                 "metrics_add_up": True}, \
        f"{summary['meta']['command']} (REDIS_URL {'set' if os.environ.get('REDIS_URL') else 'unset'}):\n{report}"
    # /metrics scraped at the end adds up to the soak's own totals (bench/soak.py, _metrics_check).
    metrics = summary["metrics"]
    assert metrics["scraped"]["rings"] == metrics["soak"]["calls_held"] >= summary["calls"]["reported"], report
    assert metrics["scraped"]["websockets_open"] == metrics["soak"]["sockets_open"] == summary["meta"]["sockets"], \
        report
    assert metrics["scraped"]["fcm_pushes"].get("accepted", 0) > 0, report
    assert metrics["scraped"]["webhooks"] > 0, report
