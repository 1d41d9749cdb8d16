"""Run the local APNs server in the foreground: `python manage.py fakeapns`.

It writes a .p8 signing key it trusts; start the backend with the APNS_* settings it
prints (APNS_ENDPOINT is h2c: HTTP/2 with prior knowledge, no TLS).
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from simulators.apns import DEFAULT_BUNDLE, DEFAULT_KEY_ID, DEFAULT_TEAM, FakeAPNs


class Command(BaseCommand):
    help = "Serve a local APNs-compatible HTTP/2 server (POST /3/device/{token}, token-based authentication)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9098)
        parser.add_argument("--key-out", required=True, type=Path, help="where to write the .p8 key (APNS_KEY_FILE)")
        parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
        parser.add_argument("--team-id", default=DEFAULT_TEAM)
        parser.add_argument("--key-id", default=DEFAULT_KEY_ID)
        parser.add_argument("--bundle-id", default=DEFAULT_BUNDLE)

    def handle(self, *args, host, port, key_out, latency_ms, team_id, key_id, bundle_id, **options):
        if latency_ms < 0:
            raise CommandError("--latency-ms cannot be negative")
        fake = FakeAPNs(host, port, team_id=team_id, key_id=key_id, bundle_id=bundle_id, latency_ms=latency_ms)
        fake.write_key(key_out.resolve())
        try:
            fake.start()
        except OSError as error:
            raise CommandError(f"Cannot listen on {host}:{port}: {error}") from error
        self.stdout.write(f"fake APNs listening on {fake.url} (h2c, latency {latency_ms:g} ms)")
        self.stdout.write("  " + " ".join(f"{name}={value}" for name, value in fake.settings().items()))
        self.stdout.write(f"  control: curl --http2-prior-knowledge {fake.url}/_fake/requests")
        self.stdout.flush()
        fake.serve_forever()
