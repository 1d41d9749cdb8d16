"""The local APNs server over TLS (simulators.apns, `tls=True`, `manage.py fakeapns --tls`):
HTTP/2 by ALPN `h2` on TLS 1.2+, a certificate for 127.0.0.1 and localhost from a CA whose PEM
it writes, HTTP/2 also to a TLS client that offers no ALPN (aioapns), the same Apple-like
answers as over h2c, and the control paths the benchmarks use."""

import json
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import jwt
import pytest

from simulators.apns import FakeAPNs

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ab" * 32


@pytest.fixture(scope="module", params=[False, True], ids=["h2c", "tls"])
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("apns-tls" if request.param else "apns-h2c")
    fake = FakeAPNs(tls=request.param, ca_file=folder / "ca.pem" if request.param else None).start()
    fake.write_key(folder / "AuthKey.p8")
    yield fake
    fake.stop()


@pytest.fixture
def fake(server):
    server.reset()
    yield server
    server.reset()


def client(fake: FakeAPNs) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(fake.ca_file)) if fake.tls else False
    return httpx.Client(http1=False, http2=True, verify=verify, trust_env=False, timeout=10)


def bearer(fake: FakeAPNs) -> str:
    key = fake.key_file.read_text()
    return jwt.encode({"iss": fake.team_id, "iat": int(time.time())}, key, algorithm="ES256",
                      headers={"kid": fake.key_id})


def test_tls_mode_serves_http2_by_alpn_with_a_certificate_the_written_ca_verifies_for_ip_and_localhost(tmp_path):
    with FakeAPNs(tls=True, ca_file=tmp_path / "ca.pem") as fake:
        assert fake.url.startswith("https://127.0.0.1:") and fake.settings()["APNS_CA_FILE"] == str(tmp_path / "ca.pem")
        for host in ("127.0.0.1", "localhost"):
            context = ssl.create_default_context(cafile=str(fake.ca_file))
            context.set_alpn_protocols(["h2", "http/1.1"])
            with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    assert tls.selected_alpn_protocol() == "h2"
                    assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with client(fake) as http:
            response = http.get(fake.url + "/_fake")
        assert (response.http_version, response.json()["requests"]) == ("HTTP/2", 0)


def test_tls_mode_refuses_a_client_that_does_not_trust_its_ca_and_tls_before_1_2(tmp_path):
    with FakeAPNs(tls=True, ca_file=tmp_path / "ca.pem") as fake:
        with pytest.raises(httpx.ConnectError):
            with httpx.Client(http1=False, http2=True, verify=ssl.create_default_context(), trust_env=False) as http:
                http.get(fake.url + "/_fake")
        old = ssl.create_default_context(cafile=str(fake.ca_file))
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError):
                old.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_tls_client_that_offers_no_alpn_is_spoken_http2_as_aioapns_needs(tmp_path):
    with FakeAPNs(tls=True, ca_file=tmp_path / "ca.pem") as fake:
        context = ssl.create_default_context(cafile=str(fake.ca_file))  # no set_alpn_protocols, as aioapns
        with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.selected_alpn_protocol() is None
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "127.0.0.1"),
                                      (":path", "/_fake")], end_stream=True)
                tls.sendall(conn.data_to_send())
                status, body, ended = None, b"", False
                while not ended:
                    data = tls.recv(65536)
                    assert data, "the server closed the connection"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ResponseReceived):
                            status = dict(event.headers)[b":status"]
                        elif isinstance(event, h2.events.DataReceived):
                            body += event.data
                        elif isinstance(event, h2.events.StreamEnded):
                            ended = True
                    tls.sendall(conn.data_to_send())
        assert status == b"200" and json.loads(body)["requests"] == 0


BAD = [
    ({"apns-push-type": "alert"}, 400, "DeviceTokenNotForTopic"),
    ({"apns-push-type": "nope"}, 400, "InvalidPushType"),
    ({"apns-topic": "org.other.app.voip"}, 400, "TopicDisallowed"),
    ({"apns-priority": "7"}, 400, "BadPriority"),
    ({"apns-collapse-id": "x" * 65}, 400, "BadCollapseId"),
    ({"authorization": "bearer not-a-jwt"}, 403, "InvalidProviderToken"),
]


@pytest.mark.parametrize(("change", "status", "reason"), BAD)
def test_apples_checks_answer_the_same_over_h2c_and_tls(fake, change, status, reason):
    headers = {"authorization": f"bearer {bearer(fake)}", "apns-push-type": "voip",
               "apns-topic": f"{fake.bundle_id}.voip", **change}
    with client(fake) as http:
        response = http.post(f"{fake.url}/3/device/{TOKEN}", headers=headers, content=b'{"aps": {}}')
    assert (response.status_code, response.json()["reason"]) == (status, reason)
    assert response.headers["apns-id"]


def test_without_apns_push_type_the_voip_topic_is_a_voip_push_and_the_bundle_an_alert(fake):
    """Apple requires the header on watchOS only (django-push-notifications' aioapns path never
    sends it); the type then follows the topic."""
    with client(fake) as http:
        for topic in (f"{fake.bundle_id}.voip", fake.bundle_id):
            response = http.post(f"{fake.url}/3/device/{TOKEN}", content=b'{"aps": {}}',
                                 headers={"authorization": f"bearer {bearer(fake)}", "apns-topic": topic})
            assert response.status_code == 200, response.text
    assert [r.headers["apns-topic"] for r in fake.accepted()] == [f"{fake.bundle_id}.voip", fake.bundle_id]


def test_control_counts_records_from_an_index_longer_than_a_frame_and_clears_rules_only(fake):
    fake.latency_ms = 1
    fake.delay(1)
    with client(fake) as http:
        for i in range(120):  # ~120 records × ~400 bytes: past a 16 KB frame and the 64 KB window
            http.post(f"{fake.url}/3/device/{i:064x}", content=b'{"aps": {}}',
                      headers={"authorization": f"bearer {bearer(fake)}", "apns-push-type": "voip",
                               "apns-topic": f"{fake.bundle_id}.voip", "apns-collapse-id": str(uuid.uuid4())})
        assert http.get(fake.url + "/_fake").json() == {"requests": 120, "accepted": 120, "rules": 1}
        everything = http.get(fake.url + "/_fake/requests")
        assert len(everything.content) > 65535 and len(everything.json()) == 120
        assert [r["token"] for r in http.get(fake.url + "/_fake/requests?from=118").json()] == \
            [f"{118:064x}", f"{119:064x}"]
        assert http.delete(fake.url + "/_fake/rules").status_code == 204
        assert http.get(fake.url + "/_fake").json() == {"requests": 120, "accepted": 120, "rules": 0}
    assert fake.latency_ms == 1


def test_fakeapns_command_with_tls_writes_the_ca_and_key_and_answers_over_https(tmp_path):
    from bench import common  # the benchmarks' launcher of the command

    fake, settings = common.start_fake_apns(tmp_path, common.server_env("sqlite:///:memory:", None),
                                            latency_ms=0, tls=True)
    try:
        assert settings["APNS_ENDPOINT"].startswith("https://127.0.0.1:")
        assert Path(settings["APNS_CA_FILE"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
        control = common.FakeAPNsControl(settings["APNS_ENDPOINT"], Path(settings["APNS_CA_FILE"]))
        try:
            assert control.counts() == {"requests": 0, "accepted": 0, "rules": 0}
        finally:
            control.close()
    finally:
        common.stop_process(fake)
    assert "TLS, ALPN h2" in (tmp_path / "fakeapns.log").read_text()


def test_fakeapns_command_refuses_tls_without_a_place_for_the_ca(tmp_path):
    done = subprocess.run([sys.executable, "manage.py", "fakeapns", "--port", "0", "--tls",
                           "--key-out", str(tmp_path / "k.p8")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "--tls needs --ca-out" in done.stderr


def test_our_sender_reaches_the_tls_server_trusting_apns_ca_file(settings, tmp_path):
    """notifications.apns over TLS (ALPN h2), the certificate verified with APNS_CA_FILE."""
    import threading

    from notifications import apns

    with FakeAPNs(tls=True, ca_file=tmp_path / "ca.pem") as fake:
        fake.write_key(tmp_path / "AuthKey.p8")
        for name, value in fake.settings().items():
            setattr(settings, name, value)
        settings.APNS_HTTP_TIMEOUT_SECONDS = 2.0
        results, done = [], threading.Event()

        def on_result(result):
            results.append(result)
            done.set()
        try:
            apns.send_many([apns.Push(device_id="d", token=TOKEN, payload={"aps": {}, "type": "call.ringing"},
                                      collapse_key="call-1", deadline=time.time() + 5, voip=True)], on_result)
            assert done.wait(10)
        finally:
            apns.shutdown()
        assert results[0].ok, results[0]
        [received] = fake.accepted(TOKEN)
        assert received.headers["apns-push-type"] == "voip"
