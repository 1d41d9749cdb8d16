"""Run the call sweeper: `manage.py sweep` (forever) or `manage.py sweep --once`.

With several ASGI workers, run one of these and set SWEEPER_IN_PROCESS=false on
the workers. Two sweepers are safe (transitions are guarded), only wasteful.
"""

import time

from django.conf import settings
from django.core.management.base import BaseCommand

from callpull.sweeper import sweep_once


class Command(BaseCommand):
    help = "End calls whose deadline passed and tell their devices."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="sweep once and exit")

    def handle(self, *args, once, **options):
        while True:
            ended = sweep_once()
            if ended or once:
                self.stdout.write(f"ended {ended} call(s)")
            if once:
                return
            time.sleep(settings.SWEEP_INTERVAL_SECONDS)
