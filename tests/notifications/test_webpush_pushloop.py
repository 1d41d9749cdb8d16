"""notifications.pushloop, the scaffolding FCM, APNs and Web Push share: the breaker's rules,
Retry-After, the sender's results thread and drain, the slot that follows the settings; and
APNS_CA_FILE reaching the APNs sender's configuration."""

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from notifications import apns, pushloop


def test_the_breaker_opens_on_different_keys_failing_in_a_row_and_an_answer_closes_it():
    breaker = pushloop.Breaker("test", threshold=3, open_seconds=0.25, max_open_seconds=2.0)
    for _ in range(5):
        breaker.verdict("same", pushloop.FAILED, "unavailable", probe=False)
    assert breaker.closed  # one key failing again and again is that key's problem
    breaker.verdict("a", pushloop.FAILED, "unavailable", probe=False)
    breaker.verdict("b", pushloop.UNKNOWN, "timeout", probe=False)  # says nothing either way
    breaker.verdict("c", pushloop.FAILED, "unavailable", probe=False)
    assert not breaker.closed and breaker.error == "unavailable"

    breaker.verdict("probe", pushloop.FAILED, "unavailable", probe=True, retry_after=1.5)
    assert 1.4 < breaker.open_until - time.time() <= 1.5  # the service's Retry-After
    breaker.verdict("probe", pushloop.ANSWERED, None, probe=True)
    assert breaker.closed and breaker.error is None


def test_admit_holds_requests_while_open_and_lets_one_probe_through():
    async def scenario():
        breaker = pushloop.Breaker("test", threshold=1, open_seconds=0.05)
        breaker.verdict("a", pushloop.FAILED, "internal", probe=False)
        assert await breaker.admit(time.time() + 0.01) is None   # its own limit came first
        assert await breaker.admit(time.time() + 1.0) is True     # the probe, once the wait is over
        waiting = asyncio.ensure_future(breaker.admit(time.time() + 1.0))
        await asyncio.sleep(0.02)
        assert not waiting.done()                                  # held while the probe is out
        breaker.verdict("probe", pushloop.ANSWERED, None, probe=True)
        assert await waiting is False
    asyncio.run(scenario())


class CountingBreaker(pushloop.Breaker):
    """Counts the held pushes woken (their turn given)."""
    woken = 0

    def _wake(self, count: int) -> None:
        live = sum(not turn.done() for turn in self.waiting)
        super()._wake(count)
        self.woken += live - sum(not turn.done() for turn in self.waiting)


def test_each_turn_of_an_open_breaker_wakes_one_held_push_not_all_of_them():
    """Hundreds of pushes held during an outage: each probe turn wakes the next in line only,
    and closing wakes them all (waking every one at each turn cost the loop a burst)."""
    async def scenario():
        breaker = CountingBreaker("test", threshold=1, open_seconds=0.05, max_open_seconds=0.05)
        breaker.verdict("a", pushloop.FAILED, "internal", probe=False)
        held = [asyncio.ensure_future(breaker.admit(time.time() + 5)) for _ in range(50)]
        await asyncio.sleep(0.15)
        assert [t.result() for t in held if t.done()] == [True]       # one probe
        assert breaker.woken == 1
        breaker.verdict("probe", pushloop.FAILED, "internal", probe=True)  # open again
        await asyncio.sleep(0.15)
        assert [t.result() for t in held if t.done()] == [True, True]  # the next one probes
        assert breaker.woken == 2
        breaker.verdict("probe", pushloop.ANSWERED, None, probe=True)  # closed: everyone goes
        results = await asyncio.gather(*held)
        assert results.count(True) == 2 and results.count(False) == 48
        assert breaker.woken == 50
    asyncio.run(scenario())


def test_a_held_push_cancelled_on_its_turn_passes_the_turn_on():
    async def scenario():
        breaker = pushloop.Breaker("test", threshold=1, open_seconds=0.05, max_open_seconds=0.05)
        held = []
        turn = breaker._probe_turn

        def turn_then_cancel():  # the first in line is cancelled right as its turn comes
            turn()
            held[0].cancel()
        breaker._probe_turn = turn_then_cancel
        breaker.verdict("a", pushloop.FAILED, "internal", probe=False)
        held += [asyncio.ensure_future(breaker.admit(time.time() + 5)) for _ in range(2)]
        assert await asyncio.wait_for(held[1], 1) is True  # the turn went on to the next in line
        assert held[0].cancelled()
    asyncio.run(scenario())


def test_retry_after_is_seconds_or_an_http_date_and_the_backoff_doubles():
    assert pushloop.retry_after_seconds("2") == 2.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 < pushloop.retry_after_seconds(later) <= 30
    assert pushloop.retry_after_seconds("soon") is None and pushloop.retry_after_seconds(None) is None
    assert 0.1 <= pushloop.retry_delay(None, 1, 0.1) <= 0.15
    assert 0.4 <= pushloop.retry_delay(None, 3, 0.1) <= 0.6
    assert 2.0 <= pushloop.retry_delay(2.0, 5, 0.1) <= 2.1


@dataclass(frozen=True)
class Thing:
    device_id: str
    collapse_key: str = "call"


class Echo(pushloop.Sender):
    name = "echo"

    async def _send(self, push, delay):
        await asyncio.sleep(delay)
        return (push, "sent", threading.current_thread().name)

    def _unknown(self, push):
        return (push, "unknown", threading.current_thread().name)


def test_results_come_from_the_results_thread_and_close_reports_the_unfinished_as_unknown():
    sender = Echo(config="a")
    results, done = [], threading.Event()

    def on_result(result):
        results.append(result)
        if len(results) == 2:
            done.set()

    sender.submit([Thing("fast")], on_result, 0.0)
    sender.submit([Thing("slow")], on_result, 30.0)
    time.sleep(0.2)
    sender.close(0.2)

    assert done.wait(5)
    assert [(r[0].device_id, r[1]) for r in results] == [("fast", "sent"), ("slow", "unknown")]
    assert {r[2] for r in results} <= {"echo-sender"}  # built on the loop ...
    assert not sender.loop_thread.is_alive() and not sender.result_thread.is_alive()


def test_the_slot_builds_once_and_replaces_the_sender_when_the_settings_change():
    config = {"value": "a"}
    slot = pushloop.Slot(lambda: config["value"], lambda value: Echo(config=value))
    first = slot.get()
    assert slot.get() is first
    config["value"] = "b"
    second = slot.get()
    assert second is not first and second.config == "b" and not first.loop_thread.is_alive()
    slot.shutdown(1.0)
    assert not second.loop_thread.is_alive()


def test_apns_ca_file_reaches_the_apns_sender_configuration(settings, tmp_path):
    settings.APNS_KEY_FILE, settings.APNS_KEY_ID, settings.APNS_TEAM_ID = str(tmp_path / "k.p8"), "K", "T"
    settings.APNS_BUNDLE_ID, settings.APNS_ENDPOINT = "org.example", "https://apns.local:8443"
    settings.APNS_CA_FILE = str(tmp_path / "ca.pem")
    assert apns.Config.from_settings().ca_file == str(tmp_path / "ca.pem")
    settings.APNS_CA_FILE = None
    assert apns.Config.from_settings().ca_file is None
