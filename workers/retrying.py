"""Retry policies: which exceptions retry a task, how many times, and how long it waits
before each new attempt. Standard library only: the worker decides whether a raised
exception matches (the dispatcher never unpickles results), the dispatcher computes the
back-off and parks the task in the delayed set meanwhile."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

MAX_RETRIES = 100
MAX_BACKOFF = 24 * 3600.0


class PolicyError(ValueError):
    """A retry policy that cannot work; the message says why."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 0  # new attempts after the first
    backoff: float = 1.0  # seconds before the first retry; doubled for each next one
    backoff_max: float = 300.0  # ceiling of the wait
    jitter: bool = True  # wait a random 50-100 % of it, so retries of many tasks spread out
    retry_on: tuple[str, ...] = field(default=("Exception",))  # exception classes, by (qualified) name

    def __post_init__(self):
        if not 0 <= self.max_retries <= MAX_RETRIES:
            raise PolicyError(f"max_retries must be between 0 and {MAX_RETRIES}.")
        if not (0 <= self.backoff <= MAX_BACKOFF and 0 <= self.backoff_max <= MAX_BACKOFF):
            raise PolicyError(f"backoff and backoff_max must be between 0 and {MAX_BACKOFF:g} seconds.")
        if not self.retry_on or not all(isinstance(n, str) and n.strip() for n in self.retry_on):
            raise PolicyError("retry_on must list exception class names, such as 'ConnectionError'.")

    @classmethod
    def from_dict(cls, data: dict) -> RetryPolicy:
        known = {"max_retries", "backoff", "backoff_max", "jitter", "retry_on"}
        if not isinstance(data, dict) or set(data) - known:
            raise PolicyError(f"a retry policy is an object with some of {sorted(known)}.")
        values = dict(data)
        if "retry_on" in values:
            names = values["retry_on"]
            values["retry_on"] = (names,) if isinstance(names, str) else tuple(names or ())
        try:
            return cls(**values)
        except TypeError as exc:
            raise PolicyError(str(exc)) from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes | None) -> RetryPolicy | None:
        return cls.from_dict(json.loads(text)) if text else None

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt` + 1 (attempt 1 is the first run)."""
        wait = min(self.backoff_max, self.backoff * 2 ** max(0, attempt - 1))
        return wait * (0.5 + 0.5 * (rng or random).random()) if self.jitter else wait


def retry_record(policy: RetryPolicy | None, errors: list[str] | None = None) -> str:
    """What travels with a queued task (QueuedTask.retry): its policy and its earlier
    attempts' errors; "" when it has neither."""
    if policy is None and not errors:
        return ""
    return json.dumps({"policy": asdict(policy) if policy else None, "errors": errors or []}, separators=(",", ":"))


def parse_record(text: str) -> tuple[RetryPolicy | None, list[str]]:
    if not text:
        return None, []
    try:
        data = json.loads(text)
        return (RetryPolicy.from_dict(data["policy"]) if data.get("policy") else None), list(data.get("errors", []))
    except (ValueError, KeyError, TypeError):
        return None, []


def matches(exc: BaseException, names: tuple[str, ...]) -> bool:
    """Whether `exc` is an instance of a class named in `names`: `ValueError`,
    `builtins.ValueError` or `requests.exceptions.ConnectionError` (module and qualified name)."""
    for cls in type(exc).__mro__:
        qualified = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__qualname__ in names or qualified in names:
            return True
    return False
