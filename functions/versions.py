"""Versioned, content-addressed functions: a name has versions 1, 2, 3...; registering the
same bytes under the same name again answers the existing version instead of a new row.

A function is still run by its id (the seed's contract); `name` runs the latest version and
`name@3` pins one. The version number is taken as the latest + 1 and guarded by a unique
(owner, name, version) constraint: of two racing registrations, the loser looks again and
either finds the winner's identical bytes or takes the next number.
"""

from __future__ import annotations

import hashlib
import re

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Max

from functions import services
from functions.models import Function
from workers import environment

PINNED = re.compile(r"^(?P<name>.+)@(?P<version>\d+)$")  # name@3
REGISTER_ATTEMPTS = 5


class BadName(ValueError):
    """A name that could not be told apart from a pinned reference."""


def register(*, owner, name: str, payload: bytes, retry: dict | None = None) -> tuple[Function, bool]:
    """The function for these bytes under this name: (existing version, False) or (new one, True).
    `retry` (a retry policy) is the new version's; given again with the same bytes, it
    replaces the existing version's policy."""
    if PINNED.match(name):
        raise BadName(f"A function name may not end in @<number> ({name!r}): that spelling picks a version.")
    digest = hashlib.sha256(payload).hexdigest()
    for _ in range(REGISTER_ATTEMPTS):
        try:
            with transaction.atomic():  # the look and the insert in one transaction (see _serialize)
                _serialize(owner, name)
                same = (_mine(owner).filter(name=name, digest=digest).only("id", "name", "version")
                        .order_by("version").first())
                if same is not None:
                    if retry is not None:
                        Function.objects.filter(id=same.id).update(retry_policy=retry)
                    return same, False
                latest = _mine(owner).filter(name=name).aggregate(latest=Max("version"))["latest"] or 0
                return services.function_register(owner=owner, name=name, payload=payload, version=latest + 1,
                                                  digest=digest, retry=retry), True
        except IntegrityError:  # a racing registration took that number: look again
            continue
    raise IntegrityError(f"Could not number a new version of {name!r}; retry.")


def _serialize(owner, name: str) -> None:
    """Make registrations of one name take turns, so the same bytes registered twice at once
    become one row, not versions 1 and 2 with equal digests (the unique version constraint
    alone only keeps the numbers apart). SQLite's transactions here begin IMMEDIATE and so
    already take turns; PostgreSQL takes a transaction-scoped advisory lock on the name."""
    if connection.vendor == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"{services.owner_key(owner)}|{name}".encode()).digest()[:8], "big",
                             signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def resolve(*, owner, reference: str) -> Function:
    """The caller's function named `name` (its latest version) or `name@N`; NotFound otherwise."""
    pinned = PINNED.match(reference)
    name, version = (pinned["name"], int(pinned["version"])) if pinned else (reference, None)
    rows = _mine(owner).filter(name=name).only("id", "owner_id", "name", "version")
    function = rows.filter(version=version).first() if version else rows.order_by("-version").first()
    if function is None:
        if version and rows.exists():
            latest = rows.aggregate(latest=Max("version"))["latest"]
            raise services.NotFound(f"Function {name!r} has no version {version}; its latest is {name}@{latest}.")
        raise services.NotFound(f"No function named {name!r}.")
    return function


def history(*, owner, name: str) -> list[dict]:
    """Every version of a name, newest first, with how many tasks each ran."""
    rows = (_mine(owner).filter(name=name).annotate(ran=Count("tasks")).order_by("-version")
            .values("id", "version", "digest", "payload_size", "created_at", "ran"))
    if not rows:
        raise services.NotFound(f"No function named {name!r}.")
    return [{"function_id": str(r["id"]), "name": name, "version": r["version"], "digest": r["digest"],
             "payload_size": r["payload_size"], "created_at": r["created_at"], "tasks": r["ran"]} for r in rows]


def _mine(owner):
    user = owner if owner is not None and owner.is_authenticated else None
    return Function.objects.filter(owner=user) if user else Function.objects.filter(owner__isnull=True)


def record_environment(function: Function, python: str, dill: str) -> None:
    """What a new version needs to run: the modules its pickle imports (read from its
    opcodes, never unpickled here) and the Python and dill the client pickled it with."""
    payload = Function.objects.filter(id=function.id).values_list("payload", flat=True).first()
    needs = list(environment.needed_modules(bytes(payload))) if payload is not None else []
    Function.objects.filter(id=function.id).update(needs=needs, python_version=python, dill_version=dill)
