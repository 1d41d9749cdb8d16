"""The twilio SDK reaches TWILIO_API_BASE through its documented extension point, a
custom HTTP client (callpull/telephony/provider.py, ApiBaseHttpClient), not by setting
an undocumented attribute of the client."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from callpull.telephony import provider
from callpull.telephony.provider import call_status as real_call_status  # tests/callpull fakes provider's

SID = "CA" + "1" * 32
ACCOUNT = "AC" + "2" * 32


class FakeApi(BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):
        FakeApi.seen.append((self.path, self.headers.get("Authorization", "")))
        body = json.dumps({"sid": SID, "account_sid": ACCOUNT, "status": "ringing"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeApi.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def api_base(settings):
    def point(base):
        settings.TWILIO_API_BASE = base
        settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = ACCOUNT, "token"
        provider._client.cache_clear()
    yield point
    provider._client.cache_clear()


def test_requests_go_to_the_configured_base_under_its_path(fake_api, api_base):
    api_base(fake_api + "/fake/")
    assert real_call_status(SID) == "ringing"
    [(path, authorization)] = FakeApi.seen
    assert path == f"/fake/2010-04-01/Accounts/{ACCOUNT}/Calls/{SID}.json"
    assert authorization.startswith("Basic ")


def test_the_default_base_is_the_sdks_own_client_unchanged(api_base):
    api_base(provider.TWILIO_API)
    assert type(provider._client().http_client) is provider.TwilioHttpClient


def test_only_the_sdks_api_host_is_moved():
    client = provider.ApiBaseHttpClient("http://127.0.0.1:9/base/")
    assert client.address("https://api.twilio.com/2010-04-01/Accounts.json") == \
        "http://127.0.0.1:9/base/2010-04-01/Accounts.json"
    for elsewhere in ("https://api.twilio.com.evil.example/x", "https://voice.twilio.com/v1/x"):
        assert client.address(elsewhere) == elsewhere
