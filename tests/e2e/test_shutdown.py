"""Stopping a server the way a person does (Ctrl-C on `make run`, i.e. SIGINT to `manage.py
serve`) after it has sent pushes: a clean shutdown, no traceback, whatever transport is on."""

import signal
import subprocess
import sys

import httpx
import pytest

from tests.e2e.support import ROOT, call, eventually, free_port, sign_up

pytestmark = pytest.mark.e2e


class Serve:
    """`manage.py serve` in its own process, as `make run` starts it."""

    def __init__(self, env: dict, log_path):
        self.env, self.log_path, self.port = env, log_path, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self) -> None:
        assert self.process.poll() is None, self.output()
        try:
            status = call(self, "GET", "/").status_code
        except httpx.ConnectError:
            status = None
        assert status == 200, "not listening yet"

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.mark.parametrize("fcm_on", [True, False], ids=["fcm-on", "websocket-only"])
def test_ctrl_c_after_pushes_shuts_down_cleanly(environment, servers, fake_fcm, tmp_path, fcm_on):
    settings = {"FCM_CREDENTIALS_FILE": str(fake_fcm.credentials_file), "FCM_ENDPOINT": fake_fcm.url} if fcm_on else {}
    server = Serve(environment.server_env(servers.database(), **settings),
                   tmp_path / "serve.log")
    try:
        eventually(server.ready, timeout=30)
        account = sign_up(server, "shutdown")
        token = f"fcm-shutdown-{server.port}"
        account.register("tablet", fcm_token=token)
        account.register("tablet")  # tells the first tablet, by FCM when it is on (account.changed)
        if fcm_on:
            eventually(lambda: _sent(fake_fcm, token), timeout=10)
    finally:
        code = server.interrupt()
    output = server.output()
    assert "Traceback" not in output and "shutdown failed" not in output.lower(), output
    assert "Application shutdown complete" in output, output
    assert code == 0, output


def _sent(fake_fcm, token: str) -> None:
    assert fake_fcm.messages(token), "no push yet"
