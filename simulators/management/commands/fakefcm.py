"""Run the local FCM server in the foreground: `python manage.py fakefcm`.

It writes a service-account file whose token_uri is the fake; start the backend with
FCM_CREDENTIALS_FILE pointing at that file and FCM_ENDPOINT at the printed URL.
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from simulators.fcm import DEFAULT_PROJECT, FakeFCM


class Command(BaseCommand):
    help = "Serve a local FCM-compatible HTTP server (OAuth2 token endpoint and messages:send)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9099)
        parser.add_argument("--credentials-out", required=True, type=Path,
                            help="where to write the service-account JSON for FCM_CREDENTIALS_FILE")
        parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
        parser.add_argument("--project", default=DEFAULT_PROJECT)

    def handle(self, *args, host, port, credentials_out, latency_ms, project, **options):
        if latency_ms < 0:
            raise CommandError("--latency-ms cannot be negative")
        try:
            fake = FakeFCM(host, port, latency_ms=latency_ms, project_id=project)
        except OSError as error:
            raise CommandError(f"Cannot listen on {host}:{port}: {error}") from error
        path = fake.write_credentials(credentials_out).resolve()
        self.stdout.write(f"fake FCM listening on {fake.url} (latency {latency_ms:g} ms, project {project})")
        self.stdout.write(f"credentials written to {path}")
        self.stdout.write(f"  FCM_ENDPOINT={fake.url} FCM_CREDENTIALS_FILE={path}")
        self.stdout.write(f"  control: {fake.url}/_fake/messages, /_fake/requests, /_fake/rules, /_fake/latency")
        self.stdout.flush()
        fake.serve_forever()
