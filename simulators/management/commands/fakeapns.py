"""Run the local APNs server in the foreground: `python manage.py fakeapns`.

It writes a .p8 signing key it trusts; start the backend with the APNS_* settings it
prints. By default APNS_ENDPOINT is h2c (HTTP/2 with prior knowledge, no TLS); with
`--tls` it serves HTTP/2 over TLS (ALPN `h2`, as Apple's servers) with a certificate for
127.0.0.1 and localhost from a CA made at start, whose PEM goes to `--ca-out`
(APNS_CA_FILE, or SSL_CERT_FILE for a client that reads only the default trust store).

`--latency-ms` delays every answer (from when the request was read); `--connect-latency-ms`
holds back a new connection's first flight (the TLS ServerHello, or over h2c the server's
SETTINGS): the round trip of a TLS 1.3 handshake with a server that far away. TCP's own
handshake is not modelled (the kernel accepts at once), so a client that opens connections
pays one round trip here where it would pay at least two over a real network.
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
        parser.add_argument("--connect-latency-ms", type=float, default=0.0,
                            help="held before a new connection's first flight (TLS ServerHello, h2c SETTINGS): "
                                 "the handshake's round trip; TCP's is not modelled")
        parser.add_argument("--team-id", default=DEFAULT_TEAM)
        parser.add_argument("--key-id", default=DEFAULT_KEY_ID)
        parser.add_argument("--bundle-id", default=DEFAULT_BUNDLE)
        parser.add_argument("--tls", action="store_true", help="HTTP/2 over TLS (ALPN h2) instead of h2c")
        parser.add_argument("--ca-out", type=Path, help="with --tls: where to write the CA's PEM (APNS_CA_FILE)")

    def handle(self, *args, host, port, key_out, latency_ms, connect_latency_ms, team_id, key_id, bundle_id, tls,
               ca_out, **options):
        if latency_ms < 0:
            raise CommandError("--latency-ms cannot be negative")
        if connect_latency_ms < 0:
            raise CommandError("--connect-latency-ms cannot be negative")
        if ca_out and not tls:
            raise CommandError("--ca-out needs --tls")
        if tls and not ca_out:
            raise CommandError("--tls needs --ca-out (the PEM a client trusts)")
        fake = FakeAPNs(host, port, team_id=team_id, key_id=key_id, bundle_id=bundle_id, latency_ms=latency_ms,
                        tls=tls, ca_file=ca_out.resolve() if ca_out else None,
                        connect_latency_ms=connect_latency_ms)
        fake.write_key(key_out.resolve())
        try:
            fake.start()
        except OSError as error:
            raise CommandError(f"Cannot listen on {host}:{port}: {error}") from error
        mode = "TLS, ALPN h2" if tls else "h2c"
        self.stdout.write(f"fake APNs listening on {fake.url} ({mode}, latency {latency_ms:g} ms, "
                          f"connection set-up {connect_latency_ms:g} ms)")
        self.stdout.write("  " + " ".join(f"{name}={value}" for name, value in fake.settings().items()))
        curl = f"curl --http2 --cacert {fake.ca_file}" if tls else "curl --http2-prior-knowledge"
        self.stdout.write(f"  control: {curl} {fake.url}/_fake/requests")
        self.stdout.flush()
        fake.serve_forever()
