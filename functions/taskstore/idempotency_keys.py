"""Idempotency keys in Redis (issue 16): the fast arbiter of which of several requests with one
key queues the task. Kept in a module of its own so the store can fold it in; the database's
unique (owner, key) row, committed with the task, stays the durable record.

A key's value is "<fingerprint>|<task id>|<unix time claimed>"; it expires with the TTL.
The epoch says since when this Redis has held every key: keys committed before it may have
been lost with Redis's data, and only then must the database be asked.
"""

from __future__ import annotations

import redis

KEY = "faas:idem:{owner}:{key}"
EPOCH_KEY = "faas:idem-epoch"  # since when this Redis has held every key it was given (never expires)

# First the epoch (set to ARGV[2], now, if this Redis has none: it is new or lost its data).
# Then for each key: answer its value when it exists, else set ours and answer "" (a Lua
# nil would cut the reply list short). One call, atomic: two requests never both see "".
CLAIM = """
redis.call('SET', KEYS[1], ARGV[2], 'NX')
local out = {redis.call('GET', KEYS[1])}
for i = 2, #KEYS do
  local old = redis.call('GET', KEYS[i])
  if old then out[i] = old else redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]); out[i] = '' end
end
return out
"""

# Delete each key only while it still holds the value this request set.
RELEASE = """
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then redis.call('DEL', k) end
end
return 1
"""

_scripts: dict[int, tuple] = {}


def _script(client: redis.Redis, source: str):
    """redis-py's Script: EVALSHA, loading the source again after a SCRIPT FLUSH."""
    pair = _scripts.get(id(client))
    if pair is None or pair[0] is not client:
        pair = _scripts[id(client)] = (client, {CLAIM: client.register_script(CLAIM),
                                                RELEASE: client.register_script(RELEASE)})
    return pair[1][source]


def key_name(owner_key: str, key: str) -> str:
    return KEY.format(owner=owner_key or "-", key=key)


def claim(client: redis.Redis, owner_key: str, pairs: list[tuple[str, str]], ttl: int,
          now: float) -> tuple[float, list[str | None]]:
    """Set each (key, value) that is free: (the epoch, the existing value of each key that
    is not, else None)."""
    replies = _script(client, CLAIM)(keys=[EPOCH_KEY, *(key_name(owner_key, k) for k, _ in pairs)],
                                      args=[ttl, repr(now), *(v for _, v in pairs)])
    return float(replies[0]), [r.decode() if r else None for r in replies[1:]]


def release(client: redis.Redis, owner_key: str, pairs: list[tuple[str, str]]) -> None:
    if pairs:
        _script(client, RELEASE)(keys=[key_name(owner_key, k) for k, _ in pairs], args=[v for _, v in pairs])


def remember(client: redis.Redis, owner_key: str, pairs: list[tuple[str, str]], ttl: int) -> None:
    """Put back keys the database knows but Redis lost (a restart without its data)."""
    pipe = client.pipeline(transaction=False)
    for key, value in pairs:
        pipe.set(key_name(owner_key, key), value, ex=max(1, ttl))
    pipe.execute()
