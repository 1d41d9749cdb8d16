"""Faults, end to end: FCM slow, failing and down; Redis restarted mid-call; the
database out of reach for a moment; a worker killed mid-call.

Same cast as test_ring_flow.py: real uvicorn servers, real firebase-admin against a
fake FCM of this module's own (so its scripted failures touch no other test), real
WebSocket apps that ack every frame and reconnect when their socket drops
(`support.Companion`), the carrier and provider simulator inside the server. The
faults are real too: the fake FCM stopped, a private redis-server killed and
restarted, a TCP proxy of our own in front of PostgreSQL cut, an exclusive lock held
on the SQLite file. Nothing in the server is patched.

For every fault the tests assert what a user would see (the ring report's answer, the
frames each device gets, the call's timeline and devices as the API shows them) and
that the call still ends in a terminal state, by the user's hand or by the server's
in-process sweeper on a shortened ring window.

"A secondary was reached" may mean a frame written to a live socket or, stricter, an
ack of that frame (or a push FCM accepted). With policy `immediate` both are accepted
here: `reject` in the ring report's answer, or `keep_ringing` / `awaiting_delivery`
followed by `call.reject` on the handset's socket once the ack is in.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from simulators.fcm import FakeFCM
from tests.e2e.support import (
    Companion,
    PrivateRedis,
    Servers,
    SqliteLock,
    TcpProxy,
    call,
    devices_by_id,
    error_code,
    eventually,
    hello,
    presence_of,
    redis_server_binary,
    reply,
    simulator_api_base,
    sqlite_path,
    ws_connect,
)
from tests.e2e.test_ring_flow import (
    Household,
    Ring,
    answer,
    assert_in_order,
    describe,
    find,
    first,
    household,
    ok,
    phone_number,
)

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "missed", "declined", "answered_on_handset", "failed"}
RING_SECONDS = 5  # the shortest ring window the settings allow: the sweeper ends unanswered calls soon

# The ring window is short so that the sweeper's end of a call comes within a test;
# FCM gives up on a hung request after 2 s and retries within 3 s, inside that window.
FAULT_SETTINGS = {
    "TWILIO_API_BASE": simulator_api_base,
    "SIMULATOR_ANSWER_DELAY_SECONDS": 0.2,
    "CALL_RING_SECONDS": RING_SECONDS,
    "CALL_FORWARD_WAIT_SECONDS": 3,
    "SWEEP_INTERVAL_SECONDS": 0.2,
    "FCM_HTTP_TIMEOUT_SECONDS": 2,
    "FCM_RETRY_BUDGET_SECONDS": 3,
}
# Where a test waits for presence to notice a dead socket. (Not for the database faults: a
# heartbeat held up longer than STALE - HEARTBEAT seconds lets live sockets look stale.)
FAST_PRESENCE = {"PRESENCE_HEARTBEAT_SECONDS": 1, "PRESENCE_STALE_SECONDS": 2}


def _postgres() -> bool:
    return urlsplit(os.environ.get("DATABASE_URL", "").strip()).scheme in {"postgres", "postgresql", "pgsql"}


needs_redis_server = pytest.mark.skipif(
    redis_server_binary() is None, reason="restarting Redis needs a private redis-server: none on PATH")
needs_redis_url = pytest.mark.skipif(
    not os.environ.get("REDIS_URL", "").strip(),
    reason="several workers need the Redis channel layer: set REDIS_URL")
only_postgres = pytest.mark.skipif(not _postgres(), reason="the TCP proxy cut needs PostgreSQL: set DATABASE_URL")
only_sqlite = pytest.mark.skipif(_postgres(), reason="the file lock is SQLite's; PostgreSQL gets the proxy cut")


@pytest.fixture(scope="module")
def own_fcm(tmp_path_factory):
    fake = FakeFCM().start()
    fake.credentials_file = fake.write_credentials(tmp_path_factory.mktemp("fcm-faults") / "service-account.json")
    try:
        yield fake
    finally:
        fake.stop()


def _fcm_settings(fake: FakeFCM) -> dict:
    return {"FCM_CREDENTIALS_FILE": str(fake.credentials_file), "FCM_ENDPOINT": fake.url}


@pytest.fixture(scope="module")
def fault_server(environment, own_fcm):
    owner = Servers(environment, "faults")
    try:
        yield owner.start(name="faults", **FAULT_SETTINGS, **_fcm_settings(own_fcm))
    finally:
        owner.close()


@pytest.fixture
def fcm(own_fcm):
    own_fcm.reset()
    yield own_fcm
    own_fcm.reset()


# What the user sees ---------------------------------------------------------------

def assert_told_to_reject(ring: Ring, handset_app: Companion, *, timeout: float = 5.0) -> None:
    """Policy immediate with a secondary that acks: the handset rejects at once, or on
    the `call.reject` that follows the first ack."""
    if ring.instruction == {"action": "reject"}:
        return
    assert ring.instruction == {"action": "keep_ringing", "reason": "awaiting_delivery"}, ring.instruction
    handset_app.wait_for("call.reject", ring.id, timeout=timeout)


def wait_terminal(home: Household, call_id: str, *, timeout: float = RING_SECONDS + 6) -> dict:
    def check():
        current = home.get_call(call_id)
        assert current["state"] in TERMINAL, f"call {call_id} is {current['state']}: {describe(current['timeline'])}"
        return current
    return eventually(check, timeout=timeout, interval=0.1)


def fcm_outcome(home: Household, call_id: str, device_id: str, *, timeout: float = 8.0) -> dict:
    """The call.ringing push's outcome for a device, from the call's timeline, once FCM
    answered or was given up on: {"sent": entry or None, "failed": entry or None}."""
    def check():
        timeline = home.get_call(call_id)["timeline"]
        sent = find(timeline, "notification_sent", device=device_id, transport="fcm", type="call.ringing")
        failed = find(timeline, "notification_failed", device=device_id, transport="fcm", type="call.ringing")
        assert sent or failed, f"no FCM outcome yet for {device_id[:8]}: {describe(timeline)}"
        return {"sent": timeline[sent[0]] if sent else None, "failed": timeline[failed[0]] if failed else None,
                "timeline": timeline}
    return eventually(check, timeout=timeout, interval=0.1)


def _ringing(received: list, call_id: str) -> list:
    """The fake's records of call.ringing pushes for one call."""
    return [r for r in received if r.message.get("data", {}).get("type") == "call.ringing"
            and r.message.get("data", {}).get("call_id") == call_id]


def complete_on(home: Household, ring: Ring, device, device_app: Companion, handset_app: Companion,
                *, policy: str) -> dict:
    """Take the call on `device` and let the caller hang up: the whole flow to completed."""
    if policy == "on_answer":
        assert ok(answer(home.server, device, ring.id))["answered_by"] == device.id
        handset_app.wait_for("call.reject", ring.id)
    assert home.carrier(ring.carrier_id, "reject")["state"] == "forwarded"
    ok(home.handset_event(ring.id, "rejected"))
    if policy == "immediate":
        home.wait_state(ring.id, "forwarded")
        assert ok(answer(home.server, device, ring.id))["answered_by"] == device.id
    home.wait_state(ring.id, "connected", timeout=8)
    device_app.wait_for("call.connected", ring.id)
    home.carrier(ring.carrier_id, "hangup")
    done = home.wait_state(ring.id, "completed")
    device_app.wait_for("call.ended", ring.id)
    return done


# FCM ------------------------------------------------------------------------------

def test_slow_fcm_holds_up_neither_the_ring_report_nor_the_tablet_and_the_call_completes(fault_server, fcm):
    home = household(fault_server, policy="immediate")
    tablet = home.tablet()
    desktop = home.desktop(fcm=True)
    fcm.delay(1200, token=home.fcm_tokens[desktop.id])  # FCM answers, slowly
    with Companion(fault_server, home.handset) as handset_app, Companion(fault_server, tablet) as tablet_app:
        ring = home.ring()
        assert_told_to_reject(ring, handset_app)
        assert tablet_app.wait_for("call.ringing", ring.id)["call"]["state"] == "ringing"
        # The push got through in the end, after the handset had its answer: the answer did not wait for it.
        outcome = fcm_outcome(home, ring.id, desktop.id)
        assert outcome["sent"] and not outcome["failed"], describe(outcome["timeline"])
        timeline = outcome["timeline"]
        assert_in_order(timeline, first(timeline, "reported"), first(timeline, "reject_instructed"),
                        timeline.index(outcome["sent"]))
        assert len(_ringing(fcm.messages(home.fcm_tokens[desktop.id]), ring.id)) == 1
        done = complete_on(home, ring, tablet, tablet_app, handset_app, policy="immediate")
    assert done["answered_by"] == tablet.id and done["end_reason"] == "completed"


def test_fcm_errors_are_retried_within_the_ring_recorded_on_the_timeline_and_dead_tokens_dropped(
        fault_server, fcm):
    home = household(fault_server)  # on_answer
    tablet = home.tablet()
    desktops = {kind: home.desktop(fcm=True, name=f"Desktop {kind}") for kind in
                ("quota", "unavailable", "internal", "timeout", "unregistered")}
    token = {kind: home.fcm_tokens[device.id] for kind, device in desktops.items()}
    # The ring's pushes only: the registrations' account.changed pushes may still be on their way.
    ringing_only = {"event": "call.ringing"}
    fcm.fail("quota_exceeded", token=token["quota"], times=1, retry_after=1, **ringing_only)  # 429, Retry-After: 1
    fcm.fail("unavailable", token=token["unavailable"], times=2, **ringing_only)              # 503 twice, then fine
    fcm.fail("internal", token=token["internal"], **ringing_only)                             # 500 for ever
    fcm.fail("timeout", token=token["timeout"], **ringing_only)                               # hangs for ever
    fcm.fail("unregistered", token=token["unregistered"], **ringing_only)                     # 404 UNREGISTERED

    with Companion(fault_server, home.handset) as handset_app, Companion(fault_server, tablet) as tablet_app:
        ring = home.ring()
        assert ring.instruction == {"action": "keep_ringing", "reason": "policy_on_answer"}
        tablet_app.wait_for("call.ringing", ring.id)

        outcomes = {kind: fcm_outcome(home, ring.id, device.id) for kind, device in desktops.items()}
        # 429 then accepted, the retry waiting out Retry-After; 503, 503, accepted.
        assert outcomes["quota"]["sent"]["detail"]["attempts"] == 2, outcomes["quota"]["sent"]
        tries = [received.received_at for received in _ringing(fcm.requests(token["quota"]), ring.id)]
        assert len(tries) == 2 and tries[1] - tries[0] >= 1.0, tries
        assert outcomes["unavailable"]["sent"]["detail"]["attempts"] == 3, outcomes["unavailable"]["sent"]
        assert [r.status for r in _ringing(fcm.requests(token["unavailable"]), ring.id)] == [503, 503, 200]
        # Given up within the ring, and said so on the timeline.
        for kind in ("internal", "timeout", "unregistered"):
            failed = outcomes[kind]["failed"]
            assert failed and failed["detail"]["error"] == kind, (kind, describe(outcomes[kind]["timeline"]))
            assert not outcomes[kind]["sent"], (kind, outcomes[kind]["sent"])
        assert len(_ringing(fcm.requests(token["unregistered"]), ring.id)) == 1  # never retried

        # The dead token is gone from its device; the others keep theirs.
        def dropped():
            seen = devices_by_id(fault_server, home.handset.token)
            assert seen[desktops["unregistered"].id]["fcm_registered"] is False
            return seen
        seen = eventually(dropped)
        assert all(seen[device.id]["fcm_registered"] for kind, device in desktops.items() if kind != "unregistered")

        # Nobody answers: the sweeper ends the call when the ring window closes, and says so everywhere.
        ended = wait_terminal(home, ring.id)
        assert (ended["state"], ended["end_reason"]) == ("missed", "no_answer"), ended
        assert tablet_app.wait_for("call.ended", ring.id)["reason"] == "no_answer"
        assert handset_app.wait_for("call.ended", ring.id)["reason"] == "no_answer"
        assert not handset_app.of("call.reject", ring.id)

        # The next call does not try the dropped token.
        fcm.clear_rules()
        before = len(fcm.requests(token["unregistered"]))
        second = home.ring()
        tablet_app.wait_for("call.ringing", second.id)
        fcm_outcome(home, second.id, desktops["quota"].id)
        assert len(fcm.requests(token["unregistered"])) == before
        home.carrier(second.carrier_id, "hangup")
        assert ok(home.handset_event(second.id, "caller_hung_up"))["state"] == "missed"


def test_fcm_down_the_websocket_still_rings_and_a_call_only_fcm_could_reach_stays_on_the_handset(
        servers, tmp_path):
    with FakeFCM() as fake:
        fake.credentials_file = fake.write_credentials(tmp_path / "service-account.json")
        server = servers.start(**FAULT_SETTINGS, **_fcm_settings(fake))
        mixed = household(server, policy="immediate")     # a tablet on a socket and an FCM desktop
        tablet = mixed.tablet()
        desktop = mixed.desktop(fcm=True)
        push_only = household(server, policy="immediate")  # an FCM desktop only
        lone = push_only.desktop(fcm=True)
    # The fake is stopped: connections to FCM are refused from here on.

    with Companion(server, mixed.handset) as handset_app, Companion(server, tablet) as tablet_app, \
            Companion(server, push_only.handset) as lone_handset_app:
        ring = mixed.ring()
        assert_told_to_reject(ring, handset_app)
        tablet_app.wait_for("call.ringing", ring.id)

        stranded = push_only.ring()
        # Nobody was reached: the handset is not told to reject; the call rings there as if we did not exist.
        assert stranded.instruction["action"] == "keep_ringing", stranded.instruction

        for home, device, call_id in ((mixed, desktop, ring.id), (push_only, lone, stranded.id)):
            outcome = fcm_outcome(home, call_id, device.id)
            assert outcome["failed"] and outcome["failed"]["detail"]["error"] == "unavailable", \
                describe(outcome["timeline"])
            assert not outcome["sent"]
        # Refused connections do not cost anyone a token.
        seen = devices_by_id(server, mixed.handset.token)
        assert seen[desktop.id]["fcm_registered"] is True

        done = complete_on(mixed, ring, tablet, tablet_app, handset_app, policy="immediate")
        assert done["answered_by"] == tablet.id

        ended = wait_terminal(push_only, stranded.id)
        assert (ended["state"], ended["end_reason"]) == ("missed", "no_answer"), ended
        assert lone_handset_app.wait_for("call.ended", stranded.id)["reason"] == "no_answer"
        assert not lone_handset_app.of("call.reject", stranded.id), "told to reject with nobody reached"
        assert not find(ended["timeline"], "reject_instructed"), describe(ended["timeline"])
        assert push_only.carrier(stranded.carrier_id)["state"] == "ringing"  # never rejected, never forwarded


# Redis restarted mid-call ------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_world(environment, own_fcm, tmp_path_factory):
    """A server on a private redis-server this module may kill and restart."""
    if redis_server_binary() is None:
        pytest.skip("restarting Redis needs a private redis-server: none on PATH")
    redis = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    owner = Servers(environment, "redis")
    try:
        yield redis, owner.start(name="redis-restart", REDIS_URL=redis.url, **FAULT_SETTINGS, **FAST_PRESENCE,
                                 **_fcm_settings(own_fcm))
    finally:
        owner.close()
        redis.kill()


@needs_redis_server
def test_after_a_redis_restart_mid_call_the_tablet_reconnects_rings_again_and_the_call_completes(redis_world):
    redis, server = redis_world
    home = household(server)
    tablet = home.tablet()
    # One socket open when Redis goes: the worker's one channel-layer reader is its
    # consumer's, which ends with the Redis connection (see the next tests for sockets
    # that stay open).
    with Companion(server, tablet) as tablet_app:
        ring = home.ring()
        tablet_app.wait_for("call.ringing", ring.id)

        restarted_at = time.time()
        redis.restart()  # every key, group and queued message is gone

        # The app finds its socket dead and reconnects; connecting while the call rings
        # for it, it gets call.ringing again at once.
        tablet_app.wait_connected(timeout=10, after=1)
        again = tablet_app.wait_for("call.ringing", ring.id, after=restarted_at)
        assert again["call"]["state"] == "ringing"
        assert home.get_call(ring.id)["state"] == "ringing"

        # The handset app comes back too, and the call goes on to the end over the new sockets.
        with Companion(server, home.handset) as handset_app:
            complete_on(home, ring, tablet, tablet_app, handset_app, policy="on_answer")

            # And the next call rings as before.
            second = home.ring()
            tablet_app.wait_for("call.ringing", second.id)
            home.carrier(second.carrier_id, "hangup")
            assert ok(home.handset_event(second.id, "caller_hung_up"))["state"] == "missed"
            tablet_app.wait_for("call.ended", second.id)


@needs_redis_server
def test_a_socket_that_stays_open_while_redis_loses_its_data_still_gets_the_next_ring(redis_world):
    redis, server = redis_world
    home = household(server)
    tablet = home.tablet()
    with Companion(server, tablet) as tablet_app:
        redis.flush()  # the data goes, the connections stay: no consumer notices
        assert tablet_app.connected
        _online(server, home.handset.token, tablet.id, True)
        ring = home.ring()
        try:
            tablet_app.wait_for("call.ringing", ring.id, timeout=3)
        finally:
            home.carrier(ring.carrier_id, "hangup")
            ok(home.handset_event(ring.id, "caller_hung_up"))


@needs_redis_server
def test_after_a_redis_restart_a_device_that_does_not_come_back_is_shown_offline(redis_world):
    redis, server = redis_world
    account_home = household(server)
    tablet = account_home.tablet()
    app = Companion(server, tablet, reconnect_delay=60)  # gone for good once dropped (battery, network)
    eventually(lambda: _online(server, account_home.handset.token, tablet.id, True))
    redis.restart()
    eventually(lambda: _dropped(app))
    app.close()
    # Presence must say so within PRESENCE_STALE_SECONDS and a heartbeat or two.
    eventually(lambda: _online(server, account_home.handset.token, tablet.id, False), timeout=4.5)


def _dropped(app: Companion) -> None:
    assert app.connections and app.connections[0][1] is not None, f"{app.device.name}'s socket is still open"


def _online(server, token, device_id, expected: bool) -> None:
    seen = devices_by_id(server, token)[device_id]["online"]
    assert seen is expected, f"online={seen}, expected {expected}"


@needs_redis_server
def test_a_report_whose_frames_redis_lost_still_rings_the_secondaries_when_retried(environment, own_fcm,
                                                                                       tmp_path):
    redis = PrivateRedis(tmp_path).start()
    proxy = TcpProxy(("127.0.0.1", redis.port))
    owner = Servers(environment, "redis-send")
    try:
        server = owner.start(name="redis-send", REDIS_URL=proxy.url_for(redis.url), **FAULT_SETTINGS,
                             **_fcm_settings(own_fcm))
        home = household(server)
        tablet = home.tablet()
        with Companion(server, tablet) as tablet_app:
            # The connection that carries the ring's frames dies; every other one (the
            # tablet's own reader) stays up, so the tablet has no reason to reconnect.
            proxy.cut_on(b"call.ringing", -1)
            report_id, caller = str(uuid.uuid4()), phone_number()
            first_try = _report(home, report_id, caller)
            assert proxy.tripped.is_set()
            if first_try.status_code == 201:
                final = first_try  # the frames went out again on a fresh connection at once
            else:
                _assert_unavailable(first_try)  # or the report gave up and its retry rings
                final, _ = _report_until_answered(home, report_id, caller)
            assert final.status_code in (200, 201), final.text
            call_id = final.json()["call"]["id"]
            try:
                tablet_app.wait_for("call.ringing", call_id, timeout=3)
            finally:
                assert len(tablet_app.connections) == 1
                ok(home.handset_event(call_id, "caller_hung_up"))
    finally:
        owner.close()
        proxy.close()
        redis.kill()


# The database out of reach for a moment ------------------------------------------------

def _report(home: Household, report_id: str, caller: str):
    return call(home.server, "POST", "/api/v1/calls", token=home.handset.token,
                json={"report_id": report_id, "line": home.number, "caller": caller})


def _report_until_answered(home: Household, report_id: str, caller: str, *, timeout: float = 15.0) -> tuple:
    """The handset app's retry loop: the same report until it is answered (2xx)."""
    statuses = []
    deadline = time.monotonic() + timeout
    while True:
        response = _report(home, report_id, caller)
        statuses.append(response.status_code)
        if response.status_code < 500 or time.monotonic() > deadline:
            return response, statuses
        _assert_unavailable(response)
        time.sleep(min(0.2, float(response.headers.get("Retry-After", 1))))


def _assert_unavailable(response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert error_code(response) == "service_unavailable"
    assert response.headers.get("Retry-After"), dict(response.headers)


def _during(fault_seconds: float, requests: list) -> list:
    """Run the `requests` (callables) in threads while a fault lasts; their responses."""
    results = [None] * len(requests)

    def run(index, request):
        results[index] = request()
    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(fault_seconds + 30)
    return results


def _blip_and_recover(home: Household, tablet_app: Companion, start_fault, end_fault, *, fault_seconds: float):
    """Reports and reads while the database is out of reach; afterwards every report is
    retried until answered. Returns {report_id: (first response, final response)}."""
    callers = {str(uuid.uuid4()): phone_number() for _ in range(3)}
    start_fault()
    try:
        first_try = _during(fault_seconds, [
            *(lambda r=report_id, c=caller: _report(home, r, c) for report_id, caller in callers.items()),
            lambda: call(home.server, "GET", "/api/v1/calls", token=home.handset.token),
            lambda: call(home.server, "GET", "/api/v1/devices", token=home.handset.token),
        ])
    finally:
        end_fault()
    for response in first_try:
        assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text)
        if response.status_code >= 500:
            _assert_unavailable(response)
    outcome = {}
    for (report_id, caller), response in zip(callers.items(), first_try, strict=False):
        final, _ = _report_until_answered(home, report_id, caller)
        assert final.status_code in (200, 201), final.text
        outcome[report_id] = (response, final)
    # Exactly one call per report, and the secondaries rang for each.
    calls = ok(call(home.server, "GET", "/api/v1/calls", token=home.handset.token))
    ids = {final.json()["call"]["id"] for _, final in outcome.values()}
    assert len(ids) == len(callers) and {listed["id"] for listed in calls} == ids, (ids, calls)
    for call_id in ids:
        tablet_app.wait_for("call.ringing", call_id)
    return outcome, first_try


def _everything_works_again(home: Household, tablet, tablet_app: Companion, handset_app: Companion,
                            calls: list[str]) -> None:
    for call_id in calls:
        # The caller gives up, unless the ring window closed first and the sweeper ended the call.
        response = home.handset_event(call_id, "caller_hung_up")
        assert response.status_code in (200, 409), response.text
        assert home.get_call(call_id)["state"] == "missed"
    ring = home.ring()
    tablet_app.wait_for("call.ringing", ring.id)
    complete_on(home, ring, tablet, tablet_app, handset_app, policy="on_answer")


@only_sqlite
def test_a_sqlite_lock_for_a_moment_makes_writes_wait_never_fail_and_leaves_one_call_per_report(fault_server):
    home = household(fault_server)
    tablet = home.tablet()
    path = sqlite_path(fault_server.database_url)
    with Companion(fault_server, home.handset) as handset_app, Companion(fault_server, tablet) as tablet_app:
        lock = SqliteLock(path, seconds=2)
        outcome, first_try = _blip_and_recover(home, tablet_app, lock.start, lock.wait, fault_seconds=2)
        # Shorter than the busy timeout (20 s): reads go on (WAL), writes wait for the lock and then succeed.
        assert [response.status_code for response in first_try] == [201, 201, 201, 200, 200], \
            [(response.status_code, response.text[:80]) for response in first_try]
        _everything_works_again(home, tablet, tablet_app, handset_app,
                                [final.json()["call"]["id"] for _, final in outcome.values()])


@pytest.fixture
def proxied(servers, own_fcm):
    """A server whose PostgreSQL connections all go through a TCP proxy of ours."""
    database = servers.database()
    parts = urlsplit(database)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    try:
        server = servers.start(proxy.url_for(database) + "?sslmode=disable", name="proxied", **FAULT_SETTINGS,
                               **_fcm_settings(own_fcm))
        yield proxy, server
    finally:
        servers.close()
        proxy.close()


@only_postgres
def test_postgres_out_of_reach_for_a_moment_answers_503_never_500_and_leaves_one_call_per_report(proxied):
    proxy, server = proxied
    home = household(server)
    tablet = home.tablet()
    with Companion(server, home.handset) as handset_app, Companion(server, tablet) as tablet_app:
        def restore_after_a_moment():
            time.sleep(1.0)
            proxy.restore()
        outcome, first_try = _blip_and_recover(home, tablet_app, proxy.cut, restore_after_a_moment,
                                               fault_seconds=2)
        # Every request made while the database was unreachable was told to come back
        # (503), or waited for a pooled connection until it was back (at most
        # DATABASE_POOL_TIMEOUT_SECONDS) and was answered; never a 500.
        codes = [response.status_code for response in first_try]
        assert set(codes) <= {503, 201, 200}, \
            [(response.status_code, response.text[:80]) for response in first_try]
        # A report that got 503 left nothing behind: its retry made the call (201, not 200).
        assert all(final.status_code == 201 for first, final in outcome.values() if first.status_code == 503)
        # The sockets rode it out or came back.
        handset_app.wait_connected()
        tablet_app.wait_connected()
        _everything_works_again(home, tablet, tablet_app, handset_app,
                                [final.json()["call"]["id"] for _, final in outcome.values()])


@only_postgres
def test_a_report_cut_off_after_its_call_was_stored_still_rings_the_secondaries_when_retried(proxied):
    proxy, server = proxied
    home = household(server, policy="immediate")
    tablet = home.tablet()
    with Companion(server, home.handset) as handset_app, Companion(server, tablet) as tablet_app:
        # The database goes away right when the ring step writes its delivery records.
        proxy.cut_on(b'INSERT INTO "notifications_delivery"', 1.0)
        report_id, caller = str(uuid.uuid4()), phone_number()
        first_try = _report(home, report_id, caller)
        assert proxy.tripped.is_set()
        _assert_unavailable(first_try)
        final, _ = _report_until_answered(home, report_id, caller)
        assert final.status_code in (200, 201), final.text
        body = final.json()
        calls = ok(call(server, "GET", "/api/v1/calls", token=home.handset.token))
        assert [listed["id"] for listed in calls] == [body["call"]["id"]]
        ring = Ring(carrier_id="", caller=caller, report_id=report_id, call=body["call"],
                    instruction=body["instruction"], answered_at=time.time())
        # What the user must see: the tablet rings and the handset gets its instruction.
        tablet_app.wait_for("call.ringing", ring.id, timeout=3)
        assert_told_to_reject(ring, handset_app, timeout=3)


@only_postgres
def test_a_hang_up_reported_while_postgres_is_out_of_reach_still_ends_the_call(proxied):
    proxy, server = proxied
    home = household(server)
    tablet = home.tablet()
    with Companion(server, home.handset) as handset_app, Companion(server, tablet) as tablet_app:
        ring = home.ring()
        tablet_app.wait_for("call.ringing", ring.id)
        assert ok(answer(server, tablet, ring.id))["answered_by"] == tablet.id
        handset_app.wait_for("call.reject", ring.id)
        assert home.carrier(ring.carrier_id, "reject")["state"] == "forwarded"
        ok(home.handset_event(ring.id, "rejected"))
        home.wait_state(ring.id, "connected", timeout=8)

        proxy.cut()
        try:
            home.carrier(ring.carrier_id, "hangup")  # the provider posts its callbacks now
            time.sleep(0.5)
        finally:
            proxy.restore()
        # The caller is gone; the call must not stay connected.
        wait_terminal(home, ring.id, timeout=8)


@only_postgres
def test_an_ack_while_postgres_is_out_of_reach_does_not_cost_the_device_its_socket(proxied):
    proxy, server = proxied
    home = household(server)
    tablet = home.tablet()
    with ws_connect(server, tablet.token) as ws:
        hello(ws)
        proxy.cut()
        try:
            ws.send(json.dumps({"type": "ack", "id": str(uuid.uuid4())}))
            time.sleep(0.5)
        finally:
            proxy.restore()
        ws.send(json.dumps({"type": "ping"}))
        assert reply(ws)["type"] == "pong"


def _heard(app: Companion, match) -> None:
    assert any(match(frame) for _, frame in list(app.frames)), [f.get("type") for _, f in app.frames]


# A worker killed mid-call --------------------------------------------------------------

@needs_redis_url
def test_a_worker_killed_mid_call_its_devices_reconnect_to_the_survivor_and_the_call_completes(servers, own_fcm):
    database = servers.database()
    settings = {**FAULT_SETTINGS, **FAST_PRESENCE, **_fcm_settings(own_fcm)}
    doomed = servers.start(database, name="doomed", **settings)
    survivor = servers.start(database, name="survivor", **settings)
    home = household(survivor)  # the carrier and provider: the survivor's simulator
    tablet = home.tablet()
    laptop = home.account.register("desktop", name="Laptop", platform="other")  # never comes back
    watcher = home.account.register("web", name="Browser", platform="web")

    # The tablet and the handset app sit on the doomed worker; reconnecting, they try the other.
    with Companion([doomed, survivor], home.handset) as handset_app, \
            Companion([doomed, survivor], tablet) as tablet_app, \
            Companion(survivor, watcher) as watcher_app:
        laptop_app = Companion(doomed, laptop)
        assert (handset_app.server, tablet_app.server, laptop_app.server) == (doomed, doomed, doomed)
        ring = home.ring()
        tablet_app.wait_for("call.ringing", ring.id)  # across workers, through Redis

        killed_at = time.time()
        doomed.kill()  # SIGKILL: no shutdown, its connection rows stay behind
        laptop_app.close()  # its app tries the dead worker only, and gives up

        # The apps reconnect to the survivor; the tablet gets what still rings for it at once.
        handset_app.wait_connected(timeout=10, after=1)
        tablet_app.wait_connected(timeout=10, after=1)
        assert (handset_app.server, tablet_app.server) == (survivor, survivor)
        tablet_app.wait_for("call.ringing", ring.id, after=killed_at)

        # Presence is corrected: the laptop, gone with the worker, is offline once the
        # survivor prunes the dead worker's rows; the tablet is online through the survivor.
        eventually(lambda: _online(survivor, watcher.token, laptop.id, False), timeout=8)
        eventually(lambda: _heard(watcher_app, presence_of(laptop, False)))
        _online(survivor, watcher.token, tablet.id, True)
        _online(survivor, watcher.token, home.handset.id, True)

        done = complete_on(home, ring, tablet, tablet_app, handset_app, policy="on_answer")
        assert done["answered_by"] == tablet.id
