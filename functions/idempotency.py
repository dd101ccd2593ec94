"""Idempotency keys: a resent submit answers the task the first one queued, never a second task.

Redis decides the race: one atomic script claims every key of a request that is free
(SET if absent) with the task id the submit will use, and answers the existing value of
every key that is not. The winner queues the task and commits the key's database row in
the same transaction as the task row (functions.groupcommit), so a key costs no extra
commit; a racing request with the same key finds the value, waits until that task's row
has committed, and answers the same id. The value keeps a fingerprint of the call, so the
same key with a different body is refused (Stripe's rule) instead of silently answering a
task that ran something else.

The database's unique (owner, key) row is the durable record: when Redis has forgotten a
key (a restart without its data, noticed by its epoch key), the row still answers it, and
Redis is told again.
A claim whose submit failed is released, so a retry can queue the task; a claim left by
a server that died between the claim and the commit is taken over once it is stale.
"""

from __future__ import annotations

import datetime
import hashlib
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from functions import services
from functions.models import Function, IdempotencyKey, Task
from functions.taskstore import idempotency_keys as redis_keys

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
RECORD_WAIT_SECONDS = 10.0  # how long a racing request waits for the winner's task row
STALE_CLAIM_SECONDS = 60.0  # a claim this old without its task row was left by a dead request
SWEEP_EVERY_SECONDS = 300.0  # how often a server process deletes expired keys


class KeyReused(Exception):
    """The key was first used for a different call (409)."""


class KeyBusy(Exception):
    """The first request with this key has not finished queueing its task (409, retry)."""


@dataclass(frozen=True)
class Claim:
    key: str
    task_id: uuid.UUID
    new: bool  # this request claimed the key, so it queues the task
    value: str = ""  # what this request stored in Redis (to release only its own claim)
    claimed_at: float = 0.0  # unix time the key was claimed, by whoever claimed it


def requested_key(header: str | None, field: str | None) -> str | None:
    """The key a request names, from the `Idempotency-Key` header or the `idempotency_key`
    field; ValueError with a sentence when it is unusable or the two disagree."""
    header = (header or "").strip() or None
    field = (field or "").strip() or None
    if header and field and header != field:
        raise ValueError(f"The {HEADER} header and the idempotency_key field differ; send one key.")
    key = header or field
    if key is not None and (len(key) > MAX_KEY_LENGTH or not key.isprintable()):
        raise ValueError(f"An idempotency key is 1 to {MAX_KEY_LENGTH} printable characters.")
    return key


def fingerprint(function_id, payload: bytes, timeout: float | None, limits: tuple = (None, None)) -> str:
    """What makes two calls the same call: the function, the arguments' bytes, the deadline
    and the resource limits."""
    extra = "" if limits == (None, None) else f"{limits!r}|"  # keys made before limits existed still match
    digest = hashlib.sha256(f"{function_id}|{timeout!r}|{extra}".encode())
    digest.update(payload)
    return digest.hexdigest()


def submit_once(*, owner, function: Function, payloads: list[bytes], keys: list[str], timeout: float | None,
                received_at: float | None = None, companions_of=None, limits: tuple = (None, None),
                not_before: float | None = None, retry: dict | None = None) -> list[str]:
    """Task ids for `payloads`, one per key: queued now for keys never seen, the earlier
    task's id for keys already used with the same call. Raises KeyReused or KeyBusy."""
    if len(set(keys)) != len(keys):
        raise KeyReused("The same idempotency key appears twice in one request.")
    prints = [fingerprint(function.id, p, timeout, limits) for p in payloads]
    owner_key = services.owner_key(owner)
    ask_database = False
    for _ in range(3):  # a claim that vanished (its submit failed) or went stale is tried again
        claims = _claim(owner_key, keys, prints, ask_database)
        new = [i for i, c in enumerate(claims) if c.new]
        if new:
            rows = [IdempotencyKey(owner_key=owner_key, key=claims[i].key, fingerprint=prints[i],
                                   task_id=claims[i].task_id, created_at=timezone.now()) for i in new]
            with_rows = _with_rows(companions_of, rows)
            try:
                services.task_submit_batch(owner=owner, function=function, payloads=[payloads[i] for i in new],
                                           timeout=timeout, received_at=received_at, limits=limits,
                                           not_before=not_before, retry=retry,
                                           task_ids=[claims[i].task_id for i in new], companions_of=with_rows)
            except BaseException:
                _release(owner_key, [claims[i] for i in new])
                if _in_database(owner_key, [claims[i] for i in new]):
                    ask_database = True  # a row Redis did not know (expired, or lost with its data) refused ours
                    continue
                raise
        if _await_recorded(owner_key, [c for c in claims if not c.new]):
            return [str(c.task_id) for c in claims]
    raise KeyBusy("A request with this idempotency key is still being processed; retry shortly.")


def _with_rows(companions_of, rows: list) -> object:
    """The submit's companions plus the keys' rows: all committed with the task rows."""
    return lambda tasks: [*(companions_of(tasks) if companions_of else ()), *rows]


def _claim(owner_key: str, keys: list[str], prints: list[str], ask_database: bool = False) -> list[Claim]:
    """Claim the free keys in Redis; read the others' calls back, in the order of `keys`."""
    now = time.time()
    _sweep(now)
    ttl = int(settings.FAAS_IDEMPOTENCY_TTL)
    mine = {k: f"{p}|{uuid.uuid4()}|{now:.3f}" for k, p in zip(keys, prints)}
    epoch, found = redis_keys.claim(services.task_store().redis, owner_key, [(k, mine[k]) for k in keys], ttl, now)
    won = [k for k, value in zip(keys, found) if value is None]
    lost = ask_database or _redis_may_have_forgotten(epoch, now, ttl)
    known = _remembered(owner_key, won, now, ttl) if won and lost else {}
    if known:  # Redis forgot keys the database still holds: they answer their tasks again
        redis_keys.remember(services.task_store().redis, owner_key, list(known.items()), ttl)
    claims, reused = [], []
    for key, print_, value in zip(keys, prints, found):
        new = value is None and key not in known
        stored = mine[key] if new else (value or known[key])
        old_print, task_id, claimed_at = stored.split("|")
        if old_print != print_:
            reused.append(key)
        claims.append(Claim(key, uuid.UUID(task_id), new, mine[key] if new else "", float(claimed_at)))
    if reused:
        _release(owner_key, [c for c in claims if c.new])
        raise KeyReused(f"The idempotency key {reused[0]!r} was already used for a different call; "
                        "a key names one call (same function, arguments and timeout).")
    return claims


_epochs: dict[float, bool] = {}  # Redis epoch -> whether keys from before it are still in force


def _redis_may_have_forgotten(epoch: float, now: float, ttl: int) -> bool:
    """Whether keys committed before Redis's epoch are still within the TTL: only then can a
    key Redis does not know be one it lost. Asked once per epoch and process, so a submit
    normally costs no database read; after Redis lost its data, until a TTL has passed."""
    if now - epoch >= ttl:
        return False
    if epoch not in _epochs:
        start = datetime.datetime.fromtimestamp(now - ttl, tz=datetime.UTC)
        before = datetime.datetime.fromtimestamp(epoch + 1, tz=datetime.UTC)  # a second of slack for clocks
        _epochs.clear()
        _epochs[epoch] = IdempotencyKey.objects.filter(created_at__gte=start, created_at__lt=before).exists()
    return _epochs[epoch]


def _remembered(owner_key: str, keys: list[str], now: float, ttl: int) -> dict[str, str]:
    """Keys the database still holds within the TTL, as Redis values; expired rows are deleted
    (their keys may be used for a new call)."""
    rows = IdempotencyKey.objects.filter(owner_key=owner_key, key__in=keys).values_list(
        "key", "fingerprint", "task_id", "created_at")
    known, expired = {}, []
    for key, print_, task_id, created in rows:
        if created.timestamp() < now - ttl:
            expired.append(key)
        else:
            known[key] = f"{print_}|{task_id}|{created.timestamp():.3f}"
    if expired:
        IdempotencyKey.objects.filter(owner_key=owner_key, key__in=expired).delete()
    return known


def _release(owner_key: str, claims: list[Claim]) -> None:
    """Forget claims whose task was never queued, so the client's retry can queue it."""
    redis_keys.release(services.task_store().redis, owner_key, [(c.key, c.value) for c in claims if c.value])


def _in_database(owner_key: str, claims: list[Claim]) -> bool:
    """Whether rows of other requests hold some of these keys (so our insert was refused)."""
    return IdempotencyKey.objects.filter(owner_key=owner_key, key__in=[c.key for c in claims]).exclude(
        task_id__in=[c.task_id for c in claims]).exists()


def _await_recorded(owner_key: str, claims: list[Claim]) -> bool:
    """Wait until the tasks of other requests' claims are committed; False when a claim
    vanished or went stale (the caller claims again)."""
    deadline = time.monotonic() + RECORD_WAIT_SECONDS
    waiting = {c.task_id: c for c in claims}
    client = services.task_store().redis
    while waiting:
        for task_id in set(Task.objects.filter(id__in=list(waiting)).values_list("id", flat=True)):
            waiting.pop(task_id)
        if not waiting:
            return True
        values = client.mget([redis_keys.key_name(owner_key, c.key) for c in waiting.values()])
        stale = [(c.key, v.decode()) for c, v in zip(waiting.values(), values)
                 if v is not None and c.claimed_at < time.time() - STALE_CLAIM_SECONDS]
        if stale:  # its request died between the claim and the commit: take the key over
            redis_keys.release(client, owner_key, stale)
            return False
        if any(v is None or str(c.task_id) not in v.decode() for c, v in zip(waiting.values(), values)):
            return False  # released (its submit failed) or claimed anew: claim again
        if time.monotonic() > deadline:
            raise KeyBusy("A request with this idempotency key is still being processed; retry shortly.")
        time.sleep(0.01)  # the winner commits within milliseconds; this is a rare race path
    return True


_last_sweep = [0.0]


def _sweep(now: float) -> None:
    """Delete expired keys' rows now and then, so the table holds about one TTL's worth."""
    if time.monotonic() - _last_sweep[0] < SWEEP_EVERY_SECONDS:
        return
    _last_sweep[0] = time.monotonic()
    cutoff = datetime.datetime.fromtimestamp(now - settings.FAAS_IDEMPOTENCY_TTL, tz=datetime.UTC)
    IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
