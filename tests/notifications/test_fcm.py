"""notifications.fcm over HTTP against the fake FCM server (simulators.fcm): delivery, errors,
retries, results, the circuit breaker."""

import json
import threading
import time
import urllib.request

import pytest

from notifications import fcm
from simulators.fcm import FakeFCM
from tests.notifications.conftest import Results, make_push, wait_until

# --- what a delivered push looks like ----------------------------------------------------


def test_a_push_is_delivered_as_a_data_only_high_priority_message(fake_fcm, send):
    push = make_push("token-delivered-1", call_id="call-42", ring_seconds=20)

    [result] = send([push])

    assert result.ok and result.error is None and not result.drop_token
    assert result.push is push and result.attempts == 1
    assert result.message_id.startswith("projects/callpull-fake/messages/")
    assert push.deadline - 20 <= result.sent_at <= time.time()
    [received] = fake_fcm.messages()
    message = received.message
    assert message["token"] == "token-delivered-1"
    assert "notification" not in message
    assert message["data"] == push.data and all(isinstance(v, str) for v in message["data"].values())
    assert message["android"]["priority"] == "high"
    assert message["android"]["collapse_key"] == "call-42"
    ttl = float(message["android"]["ttl"].rstrip("s"))
    assert 18 <= ttl <= 20


def test_ttl_is_at_least_one_second_when_the_ring_is_nearly_over(fake_fcm, send):
    [result] = send([make_push(ring_seconds=0.5)])

    assert result.ok
    assert fake_fcm.messages()[0].message["android"]["ttl"] == "1s"


def test_a_push_with_non_string_data_is_refused():
    with pytest.raises(ValueError):
        make_push(data={"call_id": "call-1", "attempt": 1})


def test_send_many_refuses_non_string_data_before_sending_anything(fake_fcm):
    good, bad = make_push("token-good-000"), make_push("token-bad-0000")
    bad.data["attempt"] = 2  # changed after the Push was built

    with pytest.raises(ValueError):
        fcm.send_many([good, bad], Results())

    time.sleep(0.1)
    assert fake_fcm.requests() == []


# --- errors and dead tokens ---------------------------------------------------------------


@pytest.mark.parametrize("failure", ["unregistered", "invalid_token", "sender_id_mismatch"])
def test_a_token_fcm_will_never_accept_is_to_be_dropped(fake_fcm, send, failure):
    fake_fcm.fail(failure, token="token-dead-0000")

    results = {r.push.token: r for r in send([make_push("token-dead-0000"), make_push("token-alive-000")])}
    dead, alive = results["token-dead-0000"], results["token-alive-000"]

    assert (dead.ok, dead.error, dead.drop_token, dead.attempts) == (False, failure, True, 1)
    assert alive.ok and not alive.drop_token


def test_a_payload_fcm_refuses_keeps_the_token(fake_fcm, send):
    # FCM refuses reserved data keys with INVALID_ARGUMENT; the token is fine.
    [result] = send([make_push(data={"from": "+15551234567"})])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, "invalid_argument", False, 1)


def test_a_scripted_invalid_argument_about_the_payload_keeps_the_token(fake_fcm, send):
    fake_fcm.fail("invalid_argument")

    [result] = send([make_push()])

    assert (result.error, result.drop_token) == ("invalid_argument", False)


def test_third_party_auth_errors_are_reported_and_keep_the_token(fake_fcm, send):
    fake_fcm.fail("third_party_auth")

    [result] = send([make_push()])

    assert (result.ok, result.error, result.drop_token) == (False, "third_party_auth", False)


# --- retries --------------------------------------------------------------------------------


def test_two_503s_then_success_is_delivered_on_the_third_attempt(fake_fcm, send):
    fake_fcm.fail("unavailable", times=2)

    [result] = send([make_push("token-flaky-000")])

    assert result.ok and result.attempts == 3
    statuses = [r.status for r in fake_fcm.requests("token-flaky-000")]
    assert statuses == [503, 503, 200]


def test_a_500_with_no_retry_budget_is_one_request(fake_fcm, send, settings):
    settings.FCM_RETRY_BUDGET_SECONDS = 0
    fake_fcm.fail("internal")

    [result] = send([make_push()])

    assert (result.error, result.attempts) == ("internal", 1)
    assert len(fake_fcm.requests()) == 1


def test_quota_exceeded_waits_as_long_as_retry_after_says(fake_fcm, send):
    fake_fcm.fail("quota_exceeded", times=1, retry_after=1)

    [result] = send([make_push("token-quota-000")])

    assert result.ok and result.attempts == 2
    first, second = fake_fcm.requests("token-quota-000")
    assert first.status == 429
    assert 1.0 <= second.received_at - first.received_at < 1.5


def test_a_retry_after_beyond_the_budget_gives_up_at_once(fake_fcm, send, settings):
    settings.FCM_RETRY_BUDGET_SECONDS = 1.0
    fake_fcm.fail("quota_exceeded", retry_after=30)

    [result] = send([make_push()])

    assert (result.error, result.attempts) == ("quota_exceeded", 1)
    assert len(fake_fcm.requests()) == 1


def test_persistent_503_stops_at_the_retry_budget(fake_fcm, send, settings):
    settings.FCM_RETRY_BUDGET_SECONDS = 0.35
    fake_fcm.fail("unavailable")
    started = time.time()

    [result] = send([make_push()])

    assert (result.ok, result.error, result.drop_token) == (False, "unavailable", False)
    # backoff 0.1, 0.2, 0.4 s: a 0.35 s budget allows a few tries, not an open-ended retry loop
    assert 2 <= result.attempts <= 4
    assert all(r.received_at <= started + 0.35 + 0.15 for r in fake_fcm.requests())  # none begun past the budget


def test_retries_stop_at_the_end_of_the_ring_even_with_budget_left(fake_fcm, send, settings):
    settings.FCM_RETRY_BUDGET_SECONDS = 30
    fake_fcm.fail("internal")
    push = make_push(ring_seconds=0.4)

    [result] = send([push])

    assert result.error == "internal" and result.attempts >= 2
    assert all(r.received_at < push.deadline for r in fake_fcm.requests())
    assert time.time() < push.deadline + 0.2


def test_a_hung_request_times_out_and_is_retried(fake_fcm, send, settings):
    settings.FCM_HTTP_TIMEOUT_SECONDS = 0.2
    fake_fcm.fail("timeout", times=1)
    started = time.time()

    [result] = send([make_push()])

    assert result.ok and result.attempts == 2
    assert time.time() - started >= 0.2  # the first try was given its full timeout


def test_a_request_hanging_past_the_deadline_is_reported_at_the_deadline(fake_fcm, send):
    fake_fcm.fail("timeout")
    push = make_push(ring_seconds=0.25)

    [result] = send([push])

    assert (result.ok, result.error, result.attempts) == (False, "timeout", 1)
    assert time.time() < push.deadline + 0.3


def test_a_push_past_its_deadline_expires_without_a_request(fake_fcm, send):
    [result] = send([make_push(ring_seconds=-1)])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, "expired", False, 0)
    assert fake_fcm.requests() == []


# --- delivery of results ------------------------------------------------------------------


def test_send_many_returns_before_anything_is_sent(fake_fcm):
    fake_fcm.latency_ms = 1000  # FCM cannot have answered by the time a blocking call would return
    results = Results()

    fcm.send_many([make_push(f"token-{i:010d}") for i in range(20)], results)

    assert results.results == []
    assert len(results.wait(20)) == 20


def test_results_come_in_completion_order_so_a_slow_token_does_not_hold_back_a_fast_one(fake_fcm, send):
    fake_fcm.delay(250, token="token-slow-0000")
    started = time.time()
    results = Results()

    fcm.send_many([make_push("token-slow-0000"), make_push("token-fast-0000")], results)
    results.wait(2)

    assert [r.push.token for r in results.results] == ["token-fast-0000", "token-slow-0000"]
    assert results.arrived_at[1] - started >= 0.25


def test_on_result_is_called_from_a_background_thread_and_may_fail(fake_fcm):
    calls = []

    def on_result(result):
        calls.append(threading.current_thread())
        raise RuntimeError("the caller's bug")

    fcm.send_many([make_push("token-one-00000"), make_push("token-two-00000")], on_result)
    deadline = time.time() + 5
    while len(calls) < 2 and time.time() < deadline:
        time.sleep(0.01)

    assert len(calls) == 2
    assert threading.current_thread() not in calls


def test_a_hundred_tokens_are_all_delivered(fake_fcm, send, settings):
    fake_fcm.latency_ms = 20
    # The product's timeout: the fake runs in this process, and on a loaded machine (CI runs two
    # passes on two cores) a request could outlast the fixture's 1 s and be sent again.
    settings.FCM_HTTP_TIMEOUT_SECONDS = 3.0
    tokens = [f"token-{i:012d}" for i in range(100)]

    results = send([make_push(token) for token in tokens])

    assert all(r.ok for r in results)
    assert sorted(r.push.token for r in results) == tokens
    # Every token reached FCM; a request sent again (its answer late: at least once, as FCM's
    # own retries) is one the sender counted as an attempt.
    delivered = [m.token for m in fake_fcm.messages()]
    assert sorted(set(delivered)) == tokens
    assert len(fake_fcm.requests()) == sum(r.attempts for r in results)
    # Concurrent, not one after another: sent in turn, each request would reach the fake only
    # after the answer to the one before, at least its 20 ms latency later.
    received = sorted(r.received_at for r in fake_fcm.requests())
    assert min(b - a for a, b in zip(received, received[1:], strict=False)) < 0.020


def test_shutdown_reports_pushes_still_in_flight(fake_fcm):
    fake_fcm.fail("timeout")
    results = Results()
    fcm.send_many([make_push(ring_seconds=10)], results)
    time.sleep(0.1)

    fcm.shutdown(timeout=0.2)

    [result] = results.wait(1, timeout=1)
    assert (result.ok, result.error) == (False, "unknown")


# --- configuration and logs ---------------------------------------------------------------


def test_fcm_is_off_without_credentials(settings):
    settings.FCM_CREDENTIALS_FILE = None

    assert fcm.enabled() is False
    with pytest.raises(RuntimeError):
        fcm.send_many([make_push()], Results())


def test_the_sender_follows_a_change_of_endpoint(fake_fcm, send, settings, tmp_path):
    [first] = send([make_push("token-first-000")])
    with FakeFCM() as other:
        settings.FCM_ENDPOINT = other.url
        settings.FCM_CREDENTIALS_FILE = str(other.write_credentials(tmp_path / "other.json"))

        [second] = send([make_push("token-second-00")])

        assert first.ok and second.ok
        assert [m.token for m in fake_fcm.messages()] == ["token-first-000"]
        assert [m.token for m in other.messages()] == ["token-second-00"]


def test_logs_name_the_call_and_never_a_whole_token(fake_fcm, send, caplog):
    token = "dEaDtOkEn:APA91b" + "x" * 140
    fake_fcm.fail("unregistered", token=token)

    with caplog.at_level("DEBUG", logger="notifications.fcm"):
        send([make_push(token, call_id="call-logged-7", device_id="device-7")])

    assert "call-logged-7" in caplog.text
    assert token[:8] in caplog.text
    assert token not in caplog.text and token[:20] not in caplog.text


# --- the fake itself ------------------------------------------------------------------------


def _http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_the_fake_is_scripted_and_inspected_over_http(fake_fcm, send):
    status, body = _http("POST", f"{fake_fcm.url}/_fake/rules", {"fail": "unregistered", "token": "token-http-0000"})
    assert status == 201 and body["rule"]["fail"] == "unregistered"

    results = send([make_push("token-http-0000"), make_push("token-fine-0000")])

    assert {r.push.token: r.error for r in results} == {"token-http-0000": "unregistered", "token-fine-0000": None}
    _, body = _http("GET", f"{fake_fcm.url}/_fake/messages")
    assert [m["token"] for m in body["messages"]] == ["token-fine-0000"]
    _, body = _http("GET", f"{fake_fcm.url}/_fake/requests")
    assert len(body["requests"]) == 2 and all("received_at" in r for r in body["requests"])
    _http("DELETE", f"{fake_fcm.url}/_fake")
    assert fake_fcm.requests() == [] and fake_fcm.rules() == []


# --- FCM failing as a whole: the circuit breaker ------------------------------------------------


def test_the_breaker_opens_on_several_tokens_failing_in_a_row_not_on_one_token_or_with_successes_between():
    breaker = fcm._Breaker()
    for _ in range(fcm.BREAKER_THRESHOLD + 2):  # one token failing again and again
        breaker.outcome("token-same", "unavailable", None, probe=False)
    assert breaker.closed
    for i in range(fcm.BREAKER_THRESHOLD - 1):
        breaker.outcome(f"token-{i}", "internal", None, probe=False)
    breaker.outcome("token-ok", None, None, probe=False)  # FCM accepted one in between
    breaker.outcome("token-dead", "unregistered", None, probe=False)  # or answered about a token
    for i in range(fcm.BREAKER_THRESHOLD - 1):
        breaker.outcome(f"token-again-{i}", "quota_exceeded", None, probe=False)
    breaker.outcome("token-hung", "timeout", None, probe=False)  # a hang says nothing either way
    assert breaker.closed

    breaker.outcome("token-last", "unavailable", None, probe=False)

    assert not breaker.closed and breaker.error == "unavailable"


def test_a_failed_probe_opens_the_breaker_again_for_longer_and_an_answer_closes_it():
    breaker = fcm._Breaker()
    for i in range(fcm.BREAKER_THRESHOLD):
        breaker.outcome(f"token-{i}", "unavailable", None, probe=False)
    first = breaker.open_until - time.time()

    breaker.outcome("token-probe", "timeout", None, probe=True)
    second = breaker.open_until - time.time()
    breaker.outcome("token-probe", "internal", None, probe=True)
    third = breaker.open_until - time.time()

    assert first <= fcm.BREAKER_OPEN_SECONDS < second < third <= fcm.BREAKER_MAX_OPEN_SECONDS
    breaker.outcome("token-probe", "invalid_token", None, probe=True)
    assert breaker.closed and breaker.error is None


def test_fcm_failing_for_everyone_is_waited_out_once_not_retried_push_by_push(fake_fcm, send, settings):
    settings.FCM_RETRY_BUDGET_SECONDS = 1.0
    fake_fcm.fail("unavailable")
    pushes = [make_push(f"token-down-{i:05d}") for i in range(20)]

    results = send(pushes)

    assert all((r.ok, r.error, r.drop_token) == (False, "unavailable", False) for r in results)
    # Each push's own backoff (0.1, 0.2, 0.4 s …) would have made 3-4 requests per push in
    # 1 s; the breaker lets through the first wave and then one probe at a time.
    assert len(fake_fcm.requests()) <= len(pushes) + 6


def test_pushes_arriving_while_the_breaker_is_open_are_held_not_sent(fake_fcm, send, settings, monkeypatch):
    monkeypatch.setattr(fcm, "BREAKER_OPEN_SECONDS", 5.0)
    settings.FCM_RETRY_BUDGET_SECONDS = 0.3
    fake_fcm.fail("unavailable")
    send([make_push(f"token-trip-{i:05d}") for i in range(fcm.BREAKER_THRESHOLD)])
    assert not fcm._sender().breaker.closed

    held = send([make_push(f"token-held-{i:05d}") for i in range(3)])

    assert all((r.ok, r.error, r.attempts, r.sent_at) == (False, "unavailable", 0, None) for r in held)
    assert not any(r.token.startswith("token-held") for r in fake_fcm.requests())


def test_when_fcm_recovers_one_probe_goes_first_and_the_held_pushes_follow_its_answer(fake_fcm, settings,
                                                                                      monkeypatch):
    monkeypatch.setattr(fcm, "BREAKER_OPEN_SECONDS", 0.3)
    settings.FCM_RETRY_BUDGET_SECONDS = 5.0
    fake_fcm.fail("unavailable")
    results = Results()
    fcm.send_many([make_push(f"token-back-{i:05d}") for i in range(8)], results)
    # Open, and every push's first attempt answered (failed): a first attempt still on its way when
    # the rules go would be accepted without being held, ahead of the probe (seen on busy cores).
    wait_until(lambda: not fcm._sender().breaker.closed
               and {r.token for r in fake_fcm.requests()} >= {f"token-back-{i:05d}" for i in range(8)})
    fake_fcm.latency_ms = 100  # before the rules go: every accepted push takes 100 ms to answer
    fake_fcm.clear_rules()

    assert all(r.ok for r in results.wait(8))

    # Every push failed until the rules went, so the accepted ones are the probe and the 7 it held.
    accepted = sorted((r for r in fake_fcm.requests() if r.status == 200), key=lambda r: r.received_at)
    probe, rest = accepted[0], accepted[1:]
    assert len(rest) == 7
    # Only once the probe was answered (100 ms; the fake's sleep may end a clock tick early).
    assert all(r.received_at >= probe.received_at + 0.095 for r in rest)


def test_quota_exceeded_for_everyone_holds_every_push_for_retry_after(fake_fcm, settings):
    pushes = [make_push(f"token-quota-{i:05d}") for i in range(fcm.BREAKER_THRESHOLD + 1)]
    fake_fcm.fail("quota_exceeded", retry_after=1, times=len(pushes))
    results = Results()

    fcm.send_many(pushes, results)

    assert all(r.ok and r.attempts == 2 for r in results.wait(len(pushes)))
    first_wave = max(r.received_at for r in fake_fcm.requests() if r.status == 429)
    assert all(r.received_at >= first_wave + 0.9 for r in fake_fcm.requests() if r.status == 200)


def test_a_burst_is_started_a_chunk_at_a_time_and_every_push_delivered(fake_fcm, send, monkeypatch):
    sender = fcm._sender()
    chunks = []
    start_now = sender._start_now
    monkeypatch.setattr(sender, "_start_now", lambda pushes, *args: (chunks.append(len(pushes)),
                                                                     start_now(pushes, *args)))
    tokens = [f"token-burst-{i:05d}" for i in range(2 * fcm.START_CHUNK + 3)]

    results = send([make_push(token) for token in tokens])

    assert chunks == [fcm.START_CHUNK, fcm.START_CHUNK, 3]
    assert sorted(r.push.token for r in results if r.ok) == tokens
