"""`manage.py purge_tasks --older-than 7d [--status FAILED] [--dry-run]`: delete old finished tasks."""

import datetime as dt
import re

from django.core.management.base import BaseCommand, CommandError

from functions import retention

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> dt.timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w` (a bare number is days)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise CommandError(f"--older-than {text!r} is not an age such as 7d, 12h, 30m or 90s.")
    return dt.timedelta(**{UNITS[match.group(2) or "d"]: float(match.group(1))})


class Command(BaseCommand):
    help = "Delete finished tasks (and their Redis records) created and finished longer ago than an age."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="an age: 7d, 12h, 30m, 90s")
        parser.add_argument("--status", choices=["COMPLETED", "FAILED"], help="only tasks that ended so")
        parser.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")

    def handle(self, *args, **options):
        age = parse_age(options["older_than"])
        count = retention.purge_tasks(older_than=age, status=options["status"], dry_run=options["dry_run"])
        what = f"{options['status'].lower()} " if options["status"] else "finished "
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(f"{verb} {count} {what}task(s) older than {options['older_than']}")
