"""The soak: minutes of calls at a steady rate while faults are injected at random.

    .venv/bin/python -m bench soak --minutes 10            # bench/results/soak.{json,md}
    .venv/bin/python -m bench soak --minutes 10 --database postgres --redis private

One real server (uvicorn on callpull.asgi, its in-process sweeper and embedded
carrier/provider simulator, real firebase-admin against the fake FCM of
simulators.fcm). Several users, each with a handset (WebSocket), two tablets
(WebSocket, reached by the provider as soft-phone clients), a desktop reached by FCM
only, and for every other user a desktop whose token the fake reports unregistered.
Every app acks every frame and reconnects when its socket drops
(tests.e2e.support.Companion). Calls arrive open loop at `--rate` per second and
play out one of: answered on a tablet and completed, the caller giving up, declined
everywhere, answered on the handset, or nobody doing anything (the sweeper ends it).

Faults, at random intervals: FCM errors (503, 500, 429 with Retry-After) and
timeouts, FCM latency spikes, a device's socket dropped, the database unavailable for
a moment (an exclusive lock on the SQLite file, or a TCP proxy of ours in front of
PostgreSQL cut), and a restart of the private redis-server when one is used.

At the end it counts: calls placed and calls terminal (must be equal); for each
online device, rings expected and rings acked (the server's `notification_delivered`
on the call's timeline); tokens FCM reported unregistered still on their devices
(must be 0); 5xx answers other than 503 (must be 0) and 503s. Then it scrapes the
server's `/metrics` and checks the counts add up to its own (`_metrics_check`): rings
counted = calls the server holds, sockets open = the apps' sockets, FCM pushes accepted
= the fake's accepted messages (give or take pushes the fake took after the client gave up on
them), first receipts = calls rejected on a receipt. It prints progress while it runs and
writes JSON and markdown.

A "ring expected" is a (call, WebSocket secondary) pair whose socket was open from
before the ring report until two seconds after its answer, with no fault that drops
sockets in between: such a device must get the ring and its ack must land. Pairs
whose socket dropped meanwhile are counted apart (they get the ring on reconnecting
while the call still rings).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from simulators.fcm import FakeFCM
from tests.e2e.support import (
    SERVER_NUMBER,
    Companion,
    Environment,
    PrivateRedis,
    Server,
    Servers,
    SqliteLock,
    TcpProxy,
    call,
    redis_server_binary,
    sign_up,
    simulator_api_base,
    sqlite_path,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TERMINAL = {"completed", "missed", "declined", "answered_on_handset", "failed"}
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"

RING_SECONDS = 6
SETTINGS = {
    "TWILIO_API_BASE": simulator_api_base,
    "SIMULATOR_ANSWER_DELAY_SECONDS": 0.3,
    "CALL_RING_SECONDS": RING_SECONDS,
    "CALL_FORWARD_WAIT_SECONDS": 4,
    "DIAL_TIMEOUT_SECONDS": 8,
    "SWEEP_INTERVAL_SECONDS": 0.5,
    "FCM_HTTP_TIMEOUT_SECONDS": 2,
    "FCM_RETRY_BUDGET_SECONDS": 3,
    "LOG_LEVEL": "INFO",
    "METRICS_TOKEN": "soak-metrics-token-" + "0" * 16,
}
FAULT_KINDS = ("fcm_errors", "fcm_timeouts", "fcm_latency", "socket_drop", "database", "redis_restart")
SCENARIOS = (("tablet_answers", 45), ("caller_gives_up", 20), ("declined", 10), ("handset_answers", 10),
             ("nobody", 15))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# The people ------------------------------------------------------------------------

@dataclass
class User:
    username: str
    policy: str
    number: str
    handset: object
    tablets: list
    addresses: dict            # tablet id -> client identity
    desktop: object            # FCM only, a good token
    dead: object | None        # FCM only, a token the fake reports unregistered
    tokens: dict               # device id -> FCM token
    apps: dict = field(default_factory=dict)  # device id -> Companion


@dataclass
class CallRecord:
    user: str
    scenario: str
    caller: str
    report_id: str
    carrier_id: str = ""
    id: str = ""
    instruction: dict = field(default_factory=dict)
    sent_at: float = 0.0
    answered_at: float = 0.0
    report_tries: int = 0
    final_state: str = ""
    end_reason: str = ""
    error: str = ""


class Http:
    """Requests to the backend's API, counted by status; a 503 is retried as an app
    would (Retry-After), within `patience` seconds."""

    def __init__(self, server: Server):
        self.server = server
        self.statuses: Counter = Counter()
        self.server_errors: list[str] = []
        self._lock = threading.Lock()

    def request(self, method: str, path: str, *, token: str | None = None, patience: float = 15.0,
                **kwargs) -> httpx.Response | None:
        deadline = time.monotonic() + patience
        while True:
            try:
                response = call(self.server, method, path, token=token, **kwargs)
            except httpx.HTTPError as error:
                with self._lock:
                    self.statuses["transport_error"] += 1
                    self.server_errors.append(f"{method} {path}: {type(error).__name__}")
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.2)
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
                if response.status_code >= 500 and response.status_code != 503:
                    self.server_errors.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(min(1.0, float(response.headers.get("Retry-After") or 1)) * random.uniform(0.3, 1.0))

    def simulator(self, method: str, path: str, **kwargs) -> httpx.Response:
        return call(self.server, method, "/simulator" + path, **kwargs)


def _number(rng: random.Random, used: set) -> str:
    while True:
        number = "+1555" + "".join(rng.choices("0123456789", k=7))
        if number not in used and number != SERVER_NUMBER:
            used.add(number)
            return number


def make_user(http: Http, index: int, rng: random.Random, used: set, fake: FakeFCM) -> User:
    server = http.server
    account = sign_up(server, "soak")
    policy = "immediate" if index % 2 else "on_answer"
    handset = account.register("handset", name="Handset")
    number = _number(rng, used)
    line = http.request("POST", "/api/v1/lines", token=handset.token, json={"number": number}).json()
    for code in (line["mmi"]["register"],):
        assert http.simulator("POST", "/carrier/mmi", json={"line": number, "code": code}).status_code == 200
    status = http.simulator("POST", "/carrier/mmi", json={"line": number, "code": line["mmi"]["interrogate"]}).json()
    forwarding = http.request("POST", f"/api/v1/lines/{line['id']}/forwarding", token=handset.token,
                              json={"state": "active" if status["active"] else "inactive", "target": status["target"]})
    assert forwarding.json()["forwarding"]["state"] == "active", forwarding.text
    if policy != line["policy"]:
        http.request("PATCH", f"/api/v1/lines/{line['id']}", token=handset.token, json={"policy": policy})
    tablets, addresses, tokens = [], {}, {}
    for n in range(2):
        address = f"soak-{uuid.uuid4().hex[:12]}"
        tablet = account.register("tablet", name=f"Tablet {n + 1}", connect={"type": "client", "address": address})
        tablets.append(tablet)
        addresses[tablet.id] = address
    token = "fcm-" + uuid.uuid4().hex * 2
    desktop = account.register("desktop", name="Desktop", platform="other", fcm_token=token)
    tokens[desktop.id] = token
    dead = None
    if index % 2 == 0:
        dead_token = "dead-" + uuid.uuid4().hex * 2
        dead = account.register("desktop", name="Old desktop", platform="other", fcm_token=dead_token)
        tokens[dead.id] = dead_token
        fake.fail("unregistered", token=dead_token)
    return User(username=account.username, policy=policy, number=number, handset=handset, tablets=tablets,
                addresses=addresses, desktop=desktop, dead=dead, tokens=tokens)


# One call --------------------------------------------------------------------------

def play_call(http: Http, user: User, record: CallRecord, rng: random.Random, stop_at: float) -> None:
    """The carrier rings the handset, the handset app reports it, then `record.scenario`."""
    try:
        _play(http, user, record, rng)
    except Exception as error:  # one call's surprise must not end the soak; it is reported
        record.error = f"{type(error).__name__}: {error}"[:300]


def _play(http: Http, user: User, record: CallRecord, rng: random.Random) -> None:
    handset_app = user.apps[user.handset.id]
    carrier = http.simulator("POST", "/carrier/calls", json={"line": user.number, "caller": record.caller,
                                                             "caller_name": "Soak"})
    carrier.raise_for_status()
    record.carrier_id = carrier.json()["id"]
    record.sent_at = time.time()
    response = http.request("POST", "/api/v1/calls", token=user.handset.token, patience=RING_SECONDS,
                            json={"report_id": record.report_id, "line": user.number, "caller": record.caller,
                                  "caller_name": "Soak"})
    record.answered_at = time.time()
    if response is None or response.status_code not in (200, 201):
        record.error = f"report: {response.status_code if response is not None else 'no answer'}"
        if response is not None and response.status_code == 503:
            # The handset gave up reporting: the call rings on the handset alone and the caller gives up.
            http.simulator("POST", f"/carrier/calls/{record.carrier_id}/hangup")
        return
    body = response.json()
    record.id, record.instruction = body["call"]["id"], body["instruction"]
    call_id = record.id
    tablet = rng.choice(user.tablets)
    tablet_app = user.apps[tablet.id]

    def handset_rejects(within: float) -> bool:
        """The handset app rejects when told to: in the answer, or by call.reject."""
        if record.instruction.get("action") != "reject":
            try:
                handset_app.wait_for("call.reject", call_id, timeout=within)
            except AssertionError:
                return False
        forwarded = http.simulator("POST", f"/carrier/calls/{record.carrier_id}/reject")
        if forwarded.status_code != 200:
            return False
        http.request("POST", f"/api/v1/calls/{call_id}/handset-events", token=user.handset.token,
                     json={"event": "rejected"})
        return True

    def hang_up(after: float) -> None:
        time.sleep(after)
        http.simulator("POST", f"/carrier/calls/{record.carrier_id}/hangup")
        state = http.simulator("GET", f"/carrier/calls/{record.carrier_id}").json()
        if state.get("forwarded_to") is None:  # still on the handset: the app reports it
            http.request("POST", f"/api/v1/calls/{call_id}/handset-events", token=user.handset.token,
                         json={"event": "caller_hung_up"})

    scenario = record.scenario
    immediate = user.policy == "immediate"
    if immediate:
        rejected = handset_rejects(3.0)
    if scenario == "tablet_answers":
        try:
            tablet_app.wait_for("call.ringing", call_id, timeout=3)
        except AssertionError:
            pass  # the user answers from the call list anyway
        time.sleep(rng.uniform(0.2, 1.5))
        answered = http.request("POST", f"/api/v1/calls/{call_id}/answer", token=tablet.token)
        if answered is None or answered.status_code != 200:
            hang_up(rng.uniform(0.5, 2))
            return
        if not immediate:
            rejected = handset_rejects(5.0)
        if not rejected:
            hang_up(0.5)
            return
        _until(lambda: _state(http, user, call_id) in ({"connected"} | TERMINAL), 12)
        hang_up(rng.uniform(0.5, 2.0))
    elif scenario == "caller_gives_up":
        hang_up(rng.uniform(0.5, 3.0))
    elif scenario == "declined":
        time.sleep(rng.uniform(0.2, 1.5))
        declined = http.request("POST", f"/api/v1/calls/{call_id}/decline", token=tablet.token,
                                json={"scope": "everywhere"})
        if declined is not None and declined.status_code == 200 and not immediate:
            handset_rejects(5.0)  # the carrier forwards; the unmatched call gets the polite goodbye
        time.sleep(1.0)
        hang_up(0)
    elif scenario == "handset_answers":
        time.sleep(rng.uniform(0.3, 1.5))
        if immediate and rejected:
            hang_up(rng.uniform(0.5, 2.0))  # too late to take it on the handset: it was rejected
            return
        http.simulator("POST", f"/carrier/calls/{record.carrier_id}/answer")
        http.request("POST", f"/api/v1/calls/{call_id}/handset-events", token=user.handset.token,
                     json={"event": "answered"})
        time.sleep(rng.uniform(0.5, 2.0))
        http.simulator("POST", f"/carrier/calls/{record.carrier_id}/hangup")
    else:  # nobody: the sweeper must end it; then the caller gives up on the carrier side
        _until(lambda: _state(http, user, call_id) in TERMINAL, RING_SECONDS + 10)
        http.simulator("POST", f"/carrier/calls/{record.carrier_id}/hangup")


def _state(http: Http, user: User, call_id: str) -> str:
    response = http.request("GET", f"/api/v1/calls/{call_id}", token=user.handset.token, patience=5)
    return response.json()["state"] if response is not None and response.status_code == 200 else ""


def _until(check, timeout: float, interval: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


# Faults ----------------------------------------------------------------------------

@dataclass
class Fault:
    at: float
    kind: str
    detail: str
    drops_sockets: bool = False
    until: float = 0.0


class Faults:
    def __init__(self, *, fake: FakeFCM, users: list[User], database_kind: str, database_url: str,
                 proxy: TcpProxy | None, redis: PrivateRedis | None, rng: random.Random,
                 kinds: list[str] | None = None):
        self.fake, self.users, self.rng = fake, users, rng
        self.database_kind, self.database_url, self.proxy, self.redis = database_kind, database_url, proxy, redis
        self.log: list[Fault] = []
        available = [*FAULT_KINDS[:-1], *(["redis_restart"] if redis is not None else [])]
        self.kinds = [kind for kind in available if kinds is None or kind in kinds]

    def inject(self) -> Fault | None:
        if not self.kinds:
            return None
        kind = self.rng.choice(self.kinds)
        now = time.time()
        if kind == "fcm_errors":
            error = self.rng.choice(["unavailable", "internal", "quota_exceeded"])
            times = self.rng.randint(3, 15)
            self.fake.fail(error, times=times, retry_after=1 if error == "quota_exceeded" else None)
            fault = Fault(now, kind, f"{error} x{times}")
        elif kind == "fcm_timeouts":
            times = self.rng.randint(1, 4)
            self.fake.fail("timeout", times=times)
            fault = Fault(now, kind, f"timeout x{times}")
        elif kind == "fcm_latency":
            ms, times = self.rng.randint(300, 1500), self.rng.randint(5, 30)
            self.fake.delay(ms, times=times)
            fault = Fault(now, kind, f"+{ms} ms x{times}")
        elif kind == "socket_drop":
            user = self.rng.choice(self.users)
            app = self.rng.choice(list(user.apps.values()))
            app.drop()
            fault = Fault(now, kind, f"{user.username} {app.device.name}", drops_sockets=True)
        elif kind == "database":
            seconds = round(self.rng.uniform(0.5, 2.5), 2)
            if self.proxy is not None:
                self.proxy.cut(seconds)
                fault = Fault(now, "database", f"proxy cut {seconds}s")
            else:
                SqliteLock(sqlite_path(self.database_url), seconds=seconds).start()
                fault = Fault(now, "database", f"sqlite exclusive lock {seconds}s")
            fault.until = now + seconds
        else:
            self.redis.restart()
            fault = Fault(now, kind, "redis-server killed and restarted", drops_sockets=True)
        fault.until = max(fault.until, time.time())
        self.log.append(fault)
        return fault


# The run ---------------------------------------------------------------------------

def run(*, minutes: float, rate: float = 1.5, users: int = 6, database: str = "auto", redis: str = "auto",
        fault_every: tuple[float, float] = (6.0, 20.0), faults: list[str] | None = None, seed: int | None = None,
        results_dir: Path = RESULTS, name: str = "soak", progress_every: float = 10.0,
        tmp_dir: Path | None = None) -> dict:
    """Run the soak; returns the summary (also written to `results_dir`/`name`.{json,md})."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    database_kind = _database_kind(database)
    redis_kind = _redis_kind(redis)
    duration = minutes * 60
    stack = ExitStack()
    tmp = Path(tmp_dir or _tmpdir())
    environment = Environment(tmp)
    if database_kind == "postgres":
        environment.database_url = os.environ.get("DATABASE_URL", "").strip() or DEFAULT_POSTGRES
        environment.postgres = True
    else:
        environment.database_url, environment.postgres = "", False
    log(f"soak: {minutes:g} min at {rate:g} calls/s, {users} users, database={database_kind}, redis={redis_kind}, "
        f"seed={seed}, logs in {tmp}")
    started = time.time()
    try:
        fake = FakeFCM().start()
        stack.callback(fake.stop)
        credentials = fake.write_credentials(tmp / "service-account.json")
        owner = Servers(environment, "soak")
        stack.callback(owner.close)
        database_url = owner.database()
        proxy = None
        server_database = database_url
        if database_kind == "postgres":
            parts = urlsplit(database_url)
            proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
            stack.callback(proxy.close)
            server_database = proxy.url_for(database_url) + "?sslmode=disable"
        private_redis = None
        extra = {}
        if redis_kind == "private":
            private_redis = PrivateRedis(tmp).start()
            stack.callback(private_redis.kill)
            extra["REDIS_URL"] = private_redis.url
        server = owner.start(server_database, name="soak", **SETTINGS, **extra,
                             FCM_CREDENTIALS_FILE=str(credentials), FCM_ENDPOINT=fake.url)
        http = Http(server)
        used: set = set()
        people = [make_user(http, index, rng, used, fake) for index in range(users)]
        for user in people:
            for device in [user.handset, *user.tablets]:
                app = Companion(server, device, reconnect_delay=0.3)
                user.apps[device.id] = app
                stack.callback(app.close)
        log(f"server {server.base_url} up; {sum(len(u.apps) for u in people)} sockets open, "
            f"{sum(len(u.tokens) for u in people)} FCM devices ({sum(1 for u in people if u.dead)} with dead tokens)")
        injector = Faults(fake=fake, users=people, database_kind=database_kind, database_url=database_url,
                          proxy=proxy, redis=private_redis, rng=rng, kinds=faults)
        injector.every = fault_every
        log(f"faults: {', '.join(injector.kinds) or 'none'}, every {fault_every[0]:g}-{fault_every[1]:g} s")

        records: list[CallRecord] = []
        pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="call")
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        futures = []
        t0 = time.time()
        stop_at = t0 + duration
        next_fault = t0 + rng.uniform(*fault_every) / 2
        next_progress = t0 + progress_every
        scenarios, weights = zip(*SCENARIOS, strict=True)
        index = 0
        while True:
            now = time.time()
            if now >= stop_at:
                break
            due = t0 + index / rate
            if now >= due:
                user = people[index % len(people)] if index < len(people) else rng.choice(people)
                record = CallRecord(user=user.username, scenario=rng.choices(scenarios, weights)[0],
                                    caller=_number(rng, used), report_id=str(uuid.uuid4()))
                records.append(record)
                futures.append(pool.submit(play_call, http, user, record, random.Random(rng.random()), stop_at))
                index += 1
            if now >= next_fault:
                fault = injector.inject()
                if fault is not None:
                    log(f"fault: {fault.kind} ({fault.detail})")
                next_fault = now + rng.uniform(*fault_every)
            if now >= next_progress:
                _progress(t0, records, futures, http, injector)
                next_progress = now + progress_every
            wake = min(t0 + index / rate, next_fault, next_progress, stop_at)
            time.sleep(min(0.2, max(0.002, wake - time.time())))
        log(f"placing calls stopped after {time.time() - t0:.0f} s; waiting for the {len(futures)} calls to play out")
        for future in futures:
            future.result(timeout=120)
        fake.clear_rules()
        for user in people:  # the scripted dead tokens stay dead
            if user.dead is not None:
                fake.fail("unregistered", token=user.tokens[user.dead.id])
        summary = _summarize(http, people, records, injector, fake, started=started, t0=t0, seed=seed,
                             database_kind=database_kind, redis_kind=redis_kind, minutes=minutes, rate=rate)
        summary["server_log"] = str(server.log_path)
    finally:
        stack.close()
    _write(summary, results_dir, name)
    return summary


def _progress(t0: float, records, futures, http: Http, faults: Faults) -> None:
    done = sum(1 for future in futures if future.done())
    log(f"{time.time() - t0:5.0f} s: {len(records)} calls placed, {done} played out, "
        f"{len(records) - done} in flight; 503s {http.statuses.get(503, 0)}, "
        f"other 5xx {sum(n for s, n in http.statuses.items() if isinstance(s, int) and s >= 500 and s != 503)}; "
        f"faults {len(faults.log)}")


def _summarize(http: Http, people: list[User], records: list[CallRecord], faults: Faults, fake: FakeFCM, *,
               started: float, t0: float, seed: int, database_kind: str, redis_kind: str, minutes: float,
               rate: float) -> dict:
    by_user = {user.username: user for user in people}
    reported = [r for r in records if r.id]

    # Every call ends: wait (bounded) for the sweeper and the webhooks.
    calls: dict = {}
    pending = list(reported)
    deadline = time.monotonic() + RING_SECONDS + 20
    while True:
        for record in pending:
            response = http.request("GET", f"/api/v1/calls/{record.id}", token=by_user[record.user].handset.token)
            calls[record.id] = response.json() if response is not None and response.status_code == 200 else None
        pending = [r for r in pending if calls[r.id] is None or calls[r.id]["state"] not in TERMINAL]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(1)
    for record in reported:
        body = calls.get(record.id)
        record.final_state = body["state"] if body else "unknown"
        record.end_reason = (body or {}).get("end_reason") or ""

    # Rings expected vs acked, per WebSocket secondary.
    disruptive = [f for f in faults.log if f.drops_sockets]
    database_faults = [f for f in faults.log if f.kind == "database"]
    per_device: dict[str, dict] = {}
    missing = []
    for record in reported:
        user = by_user[record.user]
        body = calls.get(record.id)
        if body is None or record.instruction.get("reason") in ("forwarding_not_active",):
            continue
        timeline = body["timeline"]
        for tablet in user.tablets:
            app = user.apps[tablet.id]
            stats = per_device.setdefault(tablet.id, {"user": user.username, "device": tablet.name, "expected": 0,
                                                      "received": 0, "acked": 0, "disrupted": 0,
                                                      "disrupted_received": 0})
            window = (record.sent_at, record.answered_at + 2.0)
            received = bool(app.of("call.ringing", record.id))
            acked = any(e["event"] == "notification_delivered" and e.get("device") == tablet.id
                        and (e.get("detail") or {}).get("type") == "call.ringing" for e in timeline)
            if _stable(app, window) and not any(window[0] - 1 <= f.at <= window[1] for f in disruptive):
                stats["expected"] += 1
                stats["received"] += received
                stats["acked"] += acked
                if received and not acked and _during(database_faults, _arrival(app, record.id)):
                    # The server could not record the ack: the database was out of reach when it came.
                    stats["ack_lost_to_database_fault"] = stats.get("ack_lost_to_database_fault", 0) + 1
                    continue
                if not (received and acked):
                    missing.append({"call": record.id, "device": tablet.id, "user": user.username,
                                    "received": received, "acked": acked, "instruction": record.instruction})
            else:
                stats["disrupted"] += 1
                stats["disrupted_received"] += received

    # Dead tokens: every token FCM reported unregistered must be gone from its device.
    dead_reported, dead_remaining, dead_untried = 0, [], 0
    for user in people:
        if user.dead is None:
            continue
        token = user.tokens[user.dead.id]
        if not any(r.error == "unregistered" for r in fake.requests(token)):
            dead_untried += 1
            continue
        dead_reported += 1
        response = http.request("GET", f"/api/v1/devices/{user.dead.id}", token=user.handset.token)
        if response is None or response.status_code != 200 or response.json().get("fcm_registered"):
            dead_remaining.append(user.dead.id)

    statuses = {str(k): v for k, v in sorted(http.statuses.items(), key=lambda kv: str(kv[0]))}
    other_5xx = sum(n for s, n in http.statuses.items() if isinstance(s, int) and s >= 500 and s != 503)
    terminal = sum(1 for r in reported if r.final_state in TERMINAL)
    expected = sum(d["expected"] for d in per_device.values())
    acked = sum(d["acked"] for d in per_device.values())
    acks_lost = sum(d.get("ack_lost_to_database_fault", 0) for d in per_device.values())
    received = sum(d["received"] for d in per_device.values())
    fcm_requests = fake.requests()
    summary = {
        "meta": {"command": _command(minutes, rate, len(people), database_kind, redis_kind, seed, faults),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                 "minutes": minutes, "rate_per_s": rate, "seed": seed, "database": database_kind,
                 "redis": redis_kind, "users": len(people), "sockets": sum(len(u.apps) for u in people),
                 "ring_seconds": RING_SECONDS, "wall_seconds": round(time.time() - started, 1),
                 "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()},
        "calls": {"placed": len(records), "reported": len(reported), "not_reported": len(records) - len(reported),
                  "terminal": terminal, "not_terminal": [r.id for r in reported if r.final_state not in TERMINAL],
                  "states": dict(Counter(r.final_state for r in reported)),
                  "end_reasons": dict(Counter(r.end_reason for r in reported)),
                  "scenarios": dict(Counter(r.scenario for r in records)),
                  "instructions": dict(Counter(_instruction(r.instruction) for r in reported)),
                  "client_errors": [asdict(r) for r in records if r.error][:50]},
        "rings": {"expected": expected, "received": received, "acked": acked,
                  "acks_lost_to_database_faults": acks_lost, "missing": missing[:50],
                  "disrupted": sum(d["disrupted"] for d in per_device.values()),
                  "disrupted_received": sum(d["disrupted_received"] for d in per_device.values()),
                  "per_device": per_device},
        "fcm": {"requests": len(fcm_requests), "accepted": sum(1 for r in fcm_requests if r.accepted),
                "errors": dict(Counter(r.error for r in fcm_requests if r.error)),
                "dead_tokens": sum(1 for u in people if u.dead), "dead_tokens_reported": dead_reported,
                "dead_tokens_never_tried": dead_untried, "dead_tokens_remaining": len(dead_remaining)},
        "http": {"statuses": statuses, "5xx_other_than_503": other_5xx, "503": http.statuses.get(503, 0),
                 "server_errors": http.server_errors[:50]},
        "faults": {"count": len(faults.log), "by_kind": dict(Counter(f.kind for f in faults.log)),
                   "log": [{"t": round(f.at - t0, 1), "kind": f.kind, "detail": f.detail} for f in faults.log]},
        "reconnects": sum(max(0, len(app.connections) - 1) for u in people for app in u.apps.values()),
    }
    summary["metrics"] = _metrics_check(http, people, reported, calls, fcm_requests,
                                        database_faults=bool(database_faults))
    summary["checks"] = {
        "every_call_terminal": terminal == len(reported) and len(reported) > 0,
        "every_expected_ring_acked": received == expected and acked + acks_lost == expected,
        "no_unregistered_token_remains": not dead_remaining,
        "no_5xx_but_503": other_5xx == 0,
        "metrics_add_up": summary["metrics"]["add_up"],
    }
    summary["ok"] = all(summary["checks"].values())
    return summary


def scrape_metrics(http: Http) -> dict:
    """The server's /metrics: (name, sorted labels) -> value."""
    response = call(http.server, "GET", "/metrics",
                    headers={"Authorization": f"Bearer {SETTINGS['METRICS_TOKEN']}"})
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _metrics_check(http: Http, people: list[User], reported: list[CallRecord], calls: dict, fcm_requests: list, *,
                   database_faults: bool) -> dict:
    """/metrics scraped at the end, against the soak's own totals (both printed).

    - rings: `callpull_rings_total` = the calls the server holds for the soak's users (every
      report that created one, including those whose answer a fault cut off);
    - sockets: `callpull_websockets_open` = the apps' sockets open now (every fault is over);
    - FCM: `callpull_pushes_total{transport="fcm",outcome="accepted"}` is at most the pushes the
      fake accepted (one per token and event), and at least that less the pushes that ended in
      a retryable error (the fake took one after the client stopped waiting for it); each
      token the fake reported unregistered is counted once as `unregistered` per push to it;
    - first receipts: `callpull_ring_first_receipt_seconds_count` = the calls whose timeline
      shows a reject on a receipt (in the report's answer, or `delivered` later); with
      database faults, at least that (a reject whose timeline line the fault cut off)."""
    samples = scrape_metrics(http)

    def metric(name: str, **labels) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    held = {r.id for r in reported}
    for user in people:  # the calls the server holds, reported or not (newest 200 per user)
        response = http.request("GET", "/api/v1/calls?limit=200", token=user.handset.token, patience=5)
        if response is not None and response.status_code == 200:
            held |= {c["id"] for c in response.json()}
    sockets = sum(1 for user in people for app in user.apps.values() if app.connected)
    accepted, unregistered = set(), set()
    for r in fcm_requests:
        if r.validate_only:
            continue
        key = (r.token, (r.message.get("data") or {}).get("id"))
        if r.accepted:
            accepted.add(key)
        elif r.error == "unregistered":
            unregistered.add(key)
    pushes = {}  # outcome -> FCM pushes
    for (name, labels), value in samples.items():
        if name == "callpull_pushes_total" and dict(labels).get("transport") == "fcm":
            pushes[dict(labels)["outcome"]] = value
    retryable = sum(v for outcome, v in pushes.items() if outcome in ("unavailable", "internal", "timeout",
                                                                       "quota_exceeded", "unknown"))
    on_receipt = 0
    for record in reported:
        timeline = (calls.get(record.id) or {}).get("timeline") or []
        if any(e["event"] == "reject_instructed" and ((e.get("detail") or {}).get("transport") == "http"
                                                      or (e.get("detail") or {}).get("reason") == "delivered")
               for e in timeline):
            on_receipt += 1
    scraped = {"rings": metric("callpull_rings_total"), "websockets_open": metric("callpull_websockets_open"),
               "fcm_pushes": pushes, "first_receipts": metric("callpull_ring_first_receipt_seconds_count"),
               "first_receipt_seconds_sum": round(metric("callpull_ring_first_receipt_seconds_sum"), 3),
               "webhooks": sum(v for (name, _), v in samples.items() if name == "callpull_webhook_seconds_count"),
               "provider_errors": sum(v for (name, _), v in samples.items()
                                      if name == "callpull_provider_errors_total")}
    soak = {"calls_held": len(held), "sockets_open": sockets, "fcm_accepted": len(accepted),
            "fcm_unregistered": len(unregistered), "rejects_on_receipt": on_receipt}
    got_accepted = pushes.get("accepted", 0)
    checks = {
        "rings": scraped["rings"] == soak["calls_held"],
        "websockets_open": scraped["websockets_open"] == sockets,
        "fcm_accepted": got_accepted <= len(accepted) <= got_accepted + retryable,
        "fcm_unregistered": pushes.get("unregistered", 0) == len(unregistered),
        "first_receipts": (scraped["first_receipts"] >= on_receipt if database_faults
                           else scraped["first_receipts"] == on_receipt),
    }
    log(f"/metrics: {json.dumps(scraped)}")
    log(f"soak's own totals: {json.dumps(soak)}; add up: {json.dumps(checks)}")
    return {"scraped": scraped, "soak": soak, "checks": checks, "add_up": all(checks.values())}


def _arrival(app: Companion, call_id: str) -> float | None:
    return next((at for at, frame in list(app.frames) if frame.get("type") == "call.ringing"
                 and frame.get("call", {}).get("id") == call_id), None)


def _during(faults: list[Fault], at: float | None, margin: float = 1.0) -> bool:
    return at is not None and any(f.at - margin <= at <= f.until + margin for f in faults)


def _stable(app: Companion, window: tuple[float, float]) -> bool:
    """One socket stayed open through the whole window."""
    start, end = window
    return any(opened <= start and (closed is None or closed >= end) for opened, closed in list(app.connections))


def _instruction(instruction: dict) -> str:
    return "/".join(filter(None, (instruction.get("action"), instruction.get("reason"))))


def _command(minutes, rate, users, database_kind, redis_kind, seed, faults: Faults) -> str:
    return (f".venv/bin/python -m bench soak --minutes {minutes:g} --rate {rate:g} --users {users} "
            f"--database {database_kind} --redis {redis_kind} --faults {','.join(faults.kinds) or 'none'} "
            f"--fault-every {faults.every[0]:g},{faults.every[1]:g} --seed {seed}")


def _database_kind(database: str) -> str:
    if database != "auto":
        return database
    scheme = urlsplit(os.environ.get("DATABASE_URL", "").strip()).scheme
    return "postgres" if scheme in {"postgres", "postgresql", "pgsql"} else "sqlite"


def _redis_kind(redis: str) -> str:
    if redis == "private" and redis_server_binary() is None:
        raise SystemExit("--redis private needs a redis-server binary on PATH")
    if redis != "auto":
        return redis
    return "private" if os.environ.get("REDIS_URL", "").strip() and redis_server_binary() else "none"


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="callpull-soak-")


# Output ----------------------------------------------------------------------------

def _write(summary: dict, results_dir: Path, name: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (results_dir / f"{name}.md").write_text(markdown(summary))
    log(f"wrote {results_dir / (name + '.json')} and {name}.md")


def markdown(summary: dict) -> str:
    meta, calls, rings, fcm, http, faults = (summary[k] for k in ("meta", "calls", "rings", "fcm", "http", "faults"))
    mark = {True: "yes", False: "**NO**"}
    lines = [
        f"# Soak: {meta['minutes']:g} min, {meta['rate_per_s']:g} calls/s, {meta['database']}, "
        f"redis {meta['redis']}",
        "",
        f"`{meta['command']}` — started {meta['started']}, {meta['wall_seconds']} s wall, {meta['cpus']} CPUs, "
        f"load {meta['load_average']}; {meta['users']} users, {meta['sockets']} sockets; ring window "
        f"{meta['ring_seconds']} s.",
        "",
        "| check | result |",
        "| --- | --- |",
        *(f"| {name.replace('_', ' ')} | {mark[value]} |" for name, value in summary["checks"].items()),
        "",
        "| count | value |",
        "| --- | --- |",
        f"| calls placed | {calls['placed']} |",
        f"| calls reported (a call id came back) | {calls['reported']} |",
        f"| calls terminal | {calls['terminal']} |",
        f"| rings expected (stable sockets) | {rings['expected']} |",
        f"| rings received | {rings['received']} |",
        f"| rings acked (on the timeline) | {rings['acked']} |",
        f"| acks sent while the database was out of reach (not recorded) | {rings['acks_lost_to_database_faults']} |",
        f"| rings to sockets disrupted by a fault (received anyway) | {rings['disrupted']} "
        f"({rings['disrupted_received']}) |",
        f"| socket reconnects | {summary['reconnects']} |",
        f"| dead FCM tokens (reported unregistered / remaining) | {fcm['dead_tokens']} "
        f"({fcm['dead_tokens_reported']} / {fcm['dead_tokens_remaining']}) |",
        f"| FCM requests (accepted) | {fcm['requests']} ({fcm['accepted']}) |",
        f"| HTTP 5xx other than 503 | {http['5xx_other_than_503']} |",
        f"| HTTP 503 | {http['503']} |",
        f"| faults injected | {faults['count']} |",
        "",
        *_metrics_lines(summary.get("metrics")),
        f"Final states: {_pairs(calls['states'])}. End reasons: {_pairs(calls['end_reasons'])}.",
        f"Instructions: {_pairs(calls['instructions'])}. Scenarios: {_pairs(calls['scenarios'])}.",
        f"Faults: {_pairs(faults['by_kind'])}. FCM errors seen by the fake: {_pairs(fcm['errors'])}.",
        f"HTTP statuses: {_pairs(http['statuses'])}.",
        "",
        "Rings per WebSocket secondary (expected / received / acked; disrupted):",
        "",
        "| user | device | expected | received | acked | disrupted (received) |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| {d['user']} | {d['device']} | {d['expected']} | {d['received']} | {d['acked']} | "
          f"{d['disrupted']} ({d['disrupted_received']}) |" for d in rings["per_device"].values()),
    ]
    if rings["missing"]:
        lines += ["", "Expected rings not received or not acked (first 50):", "",
                  *(f"- call {m['call']} device {m['device'][:8]} received={m['received']} acked={m['acked']} "
                    f"instruction={_instruction(m['instruction'])}" for m in rings["missing"])]
    if calls["not_terminal"]:
        lines += ["", "Calls not terminal: " + ", ".join(calls["not_terminal"][:50])]
    if http["server_errors"]:
        lines += ["", "Server errors:", "", *(f"- {e}" for e in http["server_errors"][:20])]
    if calls["client_errors"]:
        lines += ["", "Calls the client could not play to the end (first 50):", "",
                  *(f"- {e['scenario']} call={e['id'] or '-'}: {e['error']}" for e in calls["client_errors"])]
    lines += ["", "Fault log (seconds from start):", "",
              *(f"- {f['t']} s {f['kind']}: {f['detail']}" for f in faults["log"])]
    return "\n".join(lines) + "\n"


def _metrics_lines(metrics: dict | None) -> list[str]:
    if not metrics:
        return []
    scraped, soak, checks = metrics["scraped"], metrics["soak"], metrics["checks"]
    mark = {True: "yes", False: "**NO**"}
    return [
        "`/metrics` at the end against the soak's own totals:",
        "",
        "| count | /metrics | soak | adds up |",
        "| --- | --- | --- | --- |",
        f"| rings (calls the server holds) | {scraped['rings']:g} | {soak['calls_held']} | {mark[checks['rings']]} |",
        f"| WebSockets open | {scraped['websockets_open']:g} | {soak['sockets_open']} | "
        f"{mark[checks['websockets_open']]} |",
        f"| FCM pushes accepted | {scraped['fcm_pushes'].get('accepted', 0):g} | {soak['fcm_accepted']} | "
        f"{mark[checks['fcm_accepted']]} |",
        f"| FCM pushes unregistered | {scraped['fcm_pushes'].get('unregistered', 0):g} | {soak['fcm_unregistered']} | "
        f"{mark[checks['fcm_unregistered']]} |",
        f"| first receipts (rejects on a receipt) | {scraped['first_receipts']:g} | {soak['rejects_on_receipt']} | "
        f"{mark[checks['first_receipts']]} |",
        "",
        f"FCM push outcomes: {_pairs({k: f'{v:g}' for k, v in scraped['fcm_pushes'].items()})}; webhooks "
        f"{scraped['webhooks']:g}; provider errors {scraped['provider_errors']:g}.",
        "",
    ]


def _pairs(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return command(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1.5, help="calls per second (open loop)")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--database", choices=["auto", "sqlite", "postgres"], default="auto",
                        help="auto: PostgreSQL when DATABASE_URL is one, else SQLite")
    parser.add_argument("--redis", choices=["auto", "none", "private"], default="auto",
                        help="private: a redis-server of its own (restarted as a fault); auto: private when "
                             "REDIS_URL is set, else the in-memory channel layer")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        help="comma-separated kinds to inject (redis_restart only with --redis private); 'none'")
    parser.add_argument("--fault-every", default="6,20", help="seconds between faults: MIN,MAX (uniform)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--name", default="soak", help="results file name (bench/results/NAME.{json,md})")


def command(args) -> int:
    low, high = (float(x) for x in args.fault_every.split(","))
    summary = run(minutes=args.minutes, rate=args.rate, users=args.users, database=args.database, redis=args.redis,
                  fault_every=(low, high), faults=[k for k in args.faults.split(",") if k and k != "none"],
                  seed=args.seed, name=args.name)
    print(markdown(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
