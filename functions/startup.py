"""Start-up warnings for operators: settings that suit a laptop and endanger a deployment.

Each process that serves users or runs their code logs these once, at WARNING, as it
starts: the web entry points (faas_site/wsgi.py, asgi.py) and the dispatcher command.
"""

from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)

# Policies that never evict a key without a TTL (the stream, queued and running tasks have
# none) and that keep the dispatchers' short-lived liveness keys: those are refreshed every
# few seconds, so LRU and LFU leave them be, while volatile-ttl would evict them first
# (they expire soonest) and volatile-random may pick them, and a live dispatcher whose key
# is gone has its running tasks taken over as lost.
SAFE_EVICTION_POLICIES = frozenset({"noeviction", "volatile-lru", "volatile-lfu"})


def warn_if_anonymous(allow_anonymous: bool) -> None:
    if allow_anonymous:
        log.warning("FAAS_ALLOW_ANONYMOUS is on: anyone who can reach the API can register and run code "
                    "on the workers without logging in. Local development only.")


def eviction_risk(maxmemory: int, policy: str) -> str | None:
    """Why Redis's eviction policy endangers the queue, or None if it does not."""
    if not maxmemory or policy in SAFE_EVICTION_POLICIES:
        return None
    if policy.startswith("allkeys-"):
        what = "any key, queued and running tasks and the task stream included"
    else:
        what = "keys with a TTL, the dispatchers' liveness keys first, so a live dispatcher's tasks count as lost"
    return (f"Redis evicts with maxmemory-policy {policy} once it holds maxmemory ({maxmemory} bytes): it may drop "
            f"{what}. Use noeviction (or volatile-lru / volatile-lfu).")


def warn_if_redis_may_evict(store) -> None:
    """`store`: a taskstore.TaskStore (or its twin); Redis being down now is the dispatcher's
    business, not this check's."""
    try:
        maxmemory, policy = store.eviction_policy()
    except redis.RedisError as exc:
        log.info("could not read Redis's eviction policy (%s); not checked", exc)
        return
    if (risk := eviction_risk(maxmemory, policy)) is not None:
        log.warning(risk)


def check_web_process(settings) -> None:
    warn_if_anonymous(settings.FAAS_ALLOW_ANONYMOUS)


def check_dispatcher(settings, store) -> None:
    warn_if_anonymous(settings.FAAS_ALLOW_ANONYMOUS)
    warn_if_redis_may_evict(store)
