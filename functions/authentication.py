"""DRF token authentication that remembers recent tokens for a few seconds per process.

DRF looks the token and its user up in the database on every request: on SQLite that was
a third of the CPU of a `/status` answer. A key seen in the last FAAS_TOKEN_CACHE_SECONDS
(10 by default, 0 turns the cache off) is taken from memory instead. The price: a deleted
token, or a deactivated user, is still let in by a process that saw it within that window.
"""

from __future__ import annotations

import time

from django.conf import settings
from rest_framework.authentication import TokenAuthentication

MAX_ENTRIES = 10_000  # keys remembered per process before the memory is cleared


class CachedTokenAuthentication(TokenAuthentication):
    _seen: dict[str, tuple[object, object, float]] = {}  # key -> (user, token, monotonic time it expires)

    def authenticate_credentials(self, key):
        ttl = settings.FAAS_TOKEN_CACHE_SECONDS
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and seen[2] > now:
            return seen[0], seen[1]
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed for bad keys
        if ttl > 0:
            if len(self._seen) >= MAX_ENTRIES:
                self._seen.clear()
            self._seen[key] = (user, token, now + ttl)
        return user, token
