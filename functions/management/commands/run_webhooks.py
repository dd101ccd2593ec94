"""`python manage.py run_webhooks`: send signed webhook deliveries (functions.webhooks)."""

import logging
import signal
import threading

from django.core.management.base import BaseCommand

from functions.webhooks import Sender

log = logging.getLogger("functions.webhooks")


class Command(BaseCommand):
    help = "Send the signed POSTs of finished tasks to their webhook URLs, retrying with back-off."

    def add_arguments(self, parser):
        parser.add_argument("--threads", type=int, default=8, help="deliveries in flight at once")

    def handle(self, *args, **options):
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        log.info("webhook sender ready (%d threads)", options["threads"])
        Sender(threads=options["threads"]).run(stop)
