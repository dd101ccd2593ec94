"""Which resource limits a submit gets: its own `memory_mb` / `cpu_seconds`, else its
function's defaults (set at registration). The worker enforces them (workers.limits)."""

from __future__ import annotations

import time

from functions.models import Function

CACHE_SECONDS = 30.0  # a function's defaults, remembered per server process (submits must not query them)
MAX_MEMORY_MB = 1024 * 1024  # 1 TiB: anything above is a typo
MAX_CPU_SECONDS = 7 * 24 * 3600

_defaults: dict = {}


def effective(function_id, memory_mb: int | None, cpu_s: int | None) -> tuple[int | None, int | None]:
    if memory_mb is not None and cpu_s is not None:
        return memory_mb, cpu_s
    default_memory, default_cpu = _function_defaults(function_id)
    return (memory_mb if memory_mb is not None else default_memory), (cpu_s if cpu_s is not None else default_cpu)


def set_function_defaults(function: Function, memory_mb: int | None, cpu_s: int | None) -> None:
    fields = {name: value for name, value in (("memory_limit_mb", memory_mb), ("cpu_limit_s", cpu_s))
              if value is not None}
    if fields:
        Function.objects.filter(id=function.id).update(**fields)
        _defaults.pop(function.id, None)


def _function_defaults(function_id) -> tuple[int | None, int | None]:
    cached = _defaults.get(function_id)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    row = Function.objects.filter(id=function_id).values_list("memory_limit_mb", "cpu_limit_s").first()
    value = row or (None, None)
    if len(_defaults) > 10_000:
        _defaults.clear()
    _defaults[function_id] = (value, time.monotonic() + CACHE_SECONDS)
    return value
